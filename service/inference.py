"""The inference channel between gateway replicas and inference workers, in Redis (torch-free).

A fine-tuned model is served by *sessions*: a session lives on one inference worker (which holds
its KV cache), so its requests go to that worker's list. Keys (``W`` = worker id, ``S`` = session id):

    pt:infer:open        list    session-open requests; any inference worker takes the next one
    pt:infer:worker:W    list    forward / close requests of W's sessions
    pt:infer:session:S   string  "W ORG" (worker, owner), with a TTL of the idle timeout (renewed by each request)

Messages are ``request id + op byte + body`` (the reply travels as in ``service.relay``): op ``o``
open (JSON: session, job_id, model), ``f`` forward (a wire payload whose ``job_id`` is the session
id), ``c`` close (JSON: session). A session whose key has expired, or whose worker does not answer,
is gone: the gateway answers 409 ``session_expired`` and the SDK opens a new one and replays the
perturbed states it already sent (no new view of the text).
"""

from __future__ import annotations

import json
from typing import Any

OPEN_KEY = "pt:infer:open"
OP_OPEN, OP_FORWARD, OP_CLOSE = b"o", b"f", b"c"
SESSION_EXPIRED = "session_expired"


def worker_key(worker_id: str) -> str:
    return f"pt:infer:worker:{worker_id}"


def session_key(session_id: str) -> str:
    return f"pt:infer:session:{session_id}"


def open_message(session_id: str, job_id: str, model: str, organization_id: str) -> bytes:
    data = {"session": session_id, "job_id": job_id, "model": model, "organization_id": organization_id}
    return OP_OPEN + json.dumps(data).encode()


def session_value(worker_id: str, organization_id: str) -> str:
    """What ``session_key`` holds: the worker, then the owning organization."""
    return f"{worker_id} {organization_id}"


def close_message(session_id: str) -> bytes:
    return OP_CLOSE + json.dumps({"session": session_id}).encode()


def parse_control(body: bytes) -> dict[str, Any]:
    return json.loads(body.decode())
