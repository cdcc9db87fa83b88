"""One inference worker's sessions, free of Redis and the database (``worker.inference.loop`` feeds it).

A fine-tuned model is the base model's middle plus the job's adapter. The server keeps one adapted
middle per *shape* (base model, cut, task, LoRA layout: ``TrainSpec`` minus the weights) and swaps
the adapter tensors of whichever fine-tuned model a request is for into it, so one worker serves many
fine-tuned models of one base. Adapters are kept in memory up to ``max_adapters`` (least recently
used evicted), sessions up to ``max_sessions``, and a session unused for ``idle_timeout_s`` expires.

A generation session keeps the middle's KV cache: each forward appends the new positions (one per
generated token after the prompt) and returns their hidden states; ``extra reset="1"`` starts over.
A classification forward is a batch of texts, answered with their pooled representations.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from client_sdk import protocol, wire
from client_sdk.models.attention import KVCache
from client_sdk.models.catalog import describe_model
from client_sdk.wire import ShapeRejected, TensorSpec
from service.errors import StepRejected
from worker.trainer import ADAPTER_FILE, TrainSpec, adapted_top


@dataclass(frozen=True)
class ServedModel:
    """What serving a fine-tuned model needs: its job's spec and the directory of its final adapter."""

    job_id: str
    spec: TrainSpec
    adapter_dir: Path


@dataclass
class _Session:
    model: ServedModel
    cache: KVCache | None = None
    last_used: float = field(default_factory=time.monotonic)


def _shape_key(spec: TrainSpec) -> str:
    method = spec.method.model_dump(mode="json", include={"task", "split_layer", "tail_layers", "lora", "noise_aware"})
    return f"{spec.model}|{spec.server_head}|{sorted(method.items())}"


class InferenceServer:
    """Sessions of fine-tuned models on one worker (see the module doc)."""

    def __init__(
        self,
        device: torch.device | str = "cpu",
        model_cache_dir: str | None = None,
        max_adapters: int = 8,
        max_sessions: int = 64,
        idle_timeout_s: float = 300.0,
        max_context: int = 2048,
        limits: wire.WireLimits = wire.DEFAULT_LIMITS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.device, self.model_cache_dir = torch.device(device), model_cache_dir
        self.max_adapters, self.max_sessions, self.idle_timeout_s = max_adapters, max_sessions, idle_timeout_s
        self.max_context, self.limits, self.clock = max_context, limits, clock
        self.middles: dict[str, torch.nn.Module] = {}  # shape key -> adapted middle
        self.loaded: dict[str, str] = {}  # shape key -> job id whose adapter is in it now
        self.adapters: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()  # job id -> tensors (LRU)
        self.sessions: dict[str, _Session] = {}
        self.swaps = 0  # adapter swaps done (for tests and metrics)

    # ---- sessions ---------------------------------------------------------------------------------
    def open(self, session_id: str, model: ServedModel) -> None:
        """Start a session of ``model`` (its adapter is loaded now, so a broken one fails here)."""
        self.expire()
        if len(self.sessions) >= self.max_sessions:
            oldest = min(self.sessions, key=lambda s: self.sessions[s].last_used)
            del self.sessions[oldest]
        self._activate(model)
        self.sessions[session_id] = _Session(model, last_used=self.clock())

    def close(self, session_id: str) -> None:
        self.sessions.pop(session_id, None)

    def expire(self) -> list[str]:
        """Drop the sessions idle for longer than ``idle_timeout_s``; returns their ids."""
        now = self.clock()
        gone = [s for s, sess in self.sessions.items() if now - sess.last_used > self.idle_timeout_s]
        for session_id in gone:
            del self.sessions[session_id]
        return gone

    # ---- adapters ---------------------------------------------------------------------------------
    def _adapter(self, model: ServedModel) -> dict[str, torch.Tensor]:
        tensors = self.adapters.pop(model.job_id, None)
        if tensors is None:
            tensors = load_file(str(model.adapter_dir / ADAPTER_FILE), device=str(self.device))
        self.adapters[model.job_id] = tensors  # most recently used last
        while len(self.adapters) > self.max_adapters:
            evicted, _ = self.adapters.popitem(last=False)
            self.loaded = {key: job for key, job in self.loaded.items() if job != evicted}
        return tensors

    def _activate(self, model: ServedModel) -> torch.nn.Module:
        """The adapted middle for ``model``, with ``model``'s adapter swapped in if another one is."""
        key = _shape_key(model.spec)
        middle = self.middles.get(key)
        if middle is None:
            built = adapted_top(model.spec, self.model_cache_dir).to(self.device).eval()
            middle = self.middles[key] = built
        tensors = self._adapter(model)
        if self.loaded.get(key) != model.job_id:
            params = dict(middle.named_parameters())
            missing = [n for n, p in params.items() if p.requires_grad and n not in tensors]
            if missing:
                raise ValueError(f"adapter of {model.job_id} lacks {missing[:3]}")
            with torch.no_grad():
                for name, tensor in tensors.items():
                    params[name].copy_(tensor)
            self.loaded[key] = model.job_id
            self.swaps += 1
        return middle

    # ---- requests ---------------------------------------------------------------------------------
    def forward(self, session_id: str, payload: bytes) -> bytes:
        """Serve one forward request; raises :class:`StepRejected` (bad input: 4xx; an unknown or expired
        session: 409 ``session_expired``) and changes nothing then."""
        self.expire()
        session = self.sessions.get(session_id)
        if session is None:
            raise StepRejected(409, "session_expired", f"inference session {session_id} has expired", param="session")
        spec = session.model.spec
        generation = spec.method.task == "generation"
        try:
            header, infos = wire.inspect(payload, self.limits)
            if header.kind != "infer" or header.job_id != session_id:
                raise wire.SchemaError("expected kind 'infer' for this session", param="kind")
            self._check(infos, header, session, generation)
            _, tensors = wire.decode(payload, self.limits)
        except wire.WireError as exc:
            raise StepRejected.from_wire(exc) from None
        session.last_used = self.clock()
        middle = self._activate(session.model)
        hidden = tensors[protocol.HIDDEN].to(self.device, torch.float32)
        mask = tensors[protocol.ATTENTION_MASK].to(self.device)
        with torch.no_grad():
            if generation:
                if header.extra.get(protocol.RESET) == "1" or session.cache is None:
                    session.cache = KVCache()
                output = middle(hidden, mask, cache=session.cache)  # (1, t, d): the new positions
            else:
                output = middle(hidden, mask)  # (b, d) pooled (logits with a server-side head)
        dtype = "float16" if generation else "float32"
        return wire.encode({protocol.OUTPUT: output}, wire.WireHeader(session_id, 0, "infer_reply"), float_dtype=dtype)

    def _check(self, infos: dict, header: wire.WireHeader, session: _Session, generation: bool) -> None:
        method, d = session.model.spec.method, describe_model(session.model.spec.model).hidden_size
        specs = [
            TensorSpec(protocol.HIDDEN, protocol.WIRE_FLOAT_DTYPES, (None, None, d)),
            TensorSpec(protocol.ATTENTION_MASK, protocol.MASK_DTYPES, (None, None)),
        ]
        wire.check_specs(infos, specs)
        b, t, _ = infos[protocol.HIDDEN].shape
        mask = infos[protocol.ATTENTION_MASK].shape
        if generation:
            past = 0 if header.extra.get(protocol.RESET) == "1" or session.cache is None else session.cache.length
            if b != 1:
                raise ShapeRejected(f"a generation session takes one sequence, got {b}", param=protocol.HIDDEN)
            if past + t > self.max_context:
                raise ShapeRejected(
                    f"the session would hold {past + t} positions; the limit is {self.max_context}",
                    param=protocol.HIDDEN,
                )
            if tuple(mask) != (1, past + t):
                raise ShapeRejected(
                    f"attention_mask must cover the {past} cached and {t} new positions: expected {[1, past + t]}",
                    param=protocol.ATTENTION_MASK,
                )
        else:
            shape = protocol.StepShape(
                infos[protocol.HIDDEN].shape[-1], method.task, method.num_labels, method.batch_size, method.max_tokens
            )
            shape.check_sizes(infos[protocol.HIDDEN].shape, mask)
