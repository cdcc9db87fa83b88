"""An inference worker process: takes session opens from the shared list and its own sessions'
requests from its list (``service.inference``), and serves them with an :class:`InferenceServer`.

Scale out by starting more of them (``privtune inference-worker``; ``privtune up`` starts one): a
session stays on the worker that opened it, new sessions go to whichever worker is free first.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

from client_sdk import wire
from service import inference as channel
from service.db import repo
from service.errors import StepRejected
from service.relay import StepMessage, WorkerChannel
from worker.trainer import TrainSpec, pick_device

from .server import InferenceServer, ServedModel

log = logging.getLogger(__name__)


class InferenceWorker:
    """Serves inference sessions until ``stop`` is set."""

    def __init__(self, settings: Any, sessionmaker: Any, redis_client: Any, worker_id: str, device: str | None = None):
        self.settings, self.sessionmaker, self.redis, self.worker_id = settings, sessionmaker, redis_client, worker_id
        self.server = InferenceServer(
            pick_device(device),
            model_cache_dir=settings.model_cache_dir,
            max_adapters=settings.inference_max_adapters,
            max_sessions=settings.inference_max_sessions,
            idle_timeout_s=settings.inference_idle_timeout_s,
            max_context=settings.inference_max_context,
            limits=wire.WireLimits(max_payload_bytes=settings.max_step_bytes),
        )
        keys = [channel.worker_key(worker_id), channel.OPEN_KEY]  # its sessions first, then new ones
        self.channel = WorkerChannel(redis_client, "", keys=keys)
        self.owners: dict[str, str] = {}  # session -> organization

    def serve_forever(self, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        log.info("inference worker %s serving", self.worker_id)
        while not stop.is_set():
            message = self.channel.receive(timeout_s=1.0)
            if message is not None:
                self.handle(message)
            for session_id in self.server.expire():
                self.redis.delete(channel.session_key(session_id))
                self.owners.pop(session_id, None)

    def handle(self, message: StepMessage) -> None:
        op, body = message.payload[:1], message.payload[1:]
        try:
            if op == channel.OP_OPEN:
                reply = self._open(channel.parse_control(body))
            elif op == channel.OP_FORWARD:
                session_id = wire.inspect(body, self.server.limits)[0].job_id
                reply = self.server.forward(session_id, body)
                self.redis.expire(channel.session_key(session_id), self._ttl())
            elif op == channel.OP_CLOSE:
                session_id = channel.parse_control(body)["session"]
                self.server.close(session_id)
                self.owners.pop(session_id, None)
                return  # closes are not awaited
            else:
                raise StepRejected(400, "invalid_request", f"unknown inference operation {op!r}")
        except wire.WireError as exc:
            self.channel.reject(message.request_id, StepRejected.from_wire(exc))
        except StepRejected as rejection:
            self.channel.reject(message.request_id, rejection)
        except Exception as exc:  # a broken adapter or model: the request fails, the worker stays up
            log.exception("inference request failed")
            rejection = StepRejected(500, "inference_error", f"{type(exc).__name__}: {exc}")
            self.channel.reject(message.request_id, rejection)
        else:
            self.channel.reply(message.request_id, reply)

    def _ttl(self) -> int:
        return max(1, int(self.settings.inference_idle_timeout_s))

    def _open(self, control: dict[str, Any]) -> bytes:
        session_id, job_id = control["session"], control["job_id"]
        with self.sessionmaker.begin() as session:
            job = repo.get_job(session, job_id)
        if job is None or job.get("status") != "succeeded":
            raise StepRejected(404, "model_not_found", f"the job of {control['model']} has not succeeded", param="model")
        adapter_dir = Path(self.settings.artifact_dir) / "jobs" / job_id / "final"
        self.server.open(session_id, ServedModel(job_id, TrainSpec.from_job(job), adapter_dir))
        value = channel.session_value(self.worker_id, control["organization_id"])
        self.redis.set(channel.session_key(session_id), value, ex=self._ttl())
        self.owners[session_id] = control["organization_id"]
        return json.dumps({"session": session_id, "worker": self.worker_id}).encode()
