"""Header-only checks of a step-channel payload against its job (torch-free; runs before the relay).

What the device may send (``client_sdk/protocol.py``):

- ``kind="step"``, step >= 1: ``hidden`` + ``attention_mask`` [+ ``grad_output`` of the previous
  step], or ``grad_output`` alone (a "flush" of the last gradient);
- ``kind="infer"``: ``hidden`` + ``attention_mask`` only (output, no state change);
- ``kind="step"`` with extra ``final="1"``: no tensors (save the adapter and finish).

A payload that fails here never reaches the worker and leaves the job untouched.
"""

from __future__ import annotations

from typing import Any

from api import catalog
from api.error_mapping import wire_param
from api.errors import BadRequest, Unprocessable
from client_sdk import protocol, wire

_CODES = {wire.DtypeRejected: "dtype_rejected", wire.ShapeRejected: "shape_rejected"}
KINDS = ("step", "infer")


def step_shape(job: dict[str, Any]) -> protocol.StepShape:
    """What the job accepts per step: hidden size of its model, task, labels, batch and token bounds."""
    cfg = (job.get("method") or {}).get("privtune") or {}
    return protocol.StepShape(
        hidden_size=catalog.describe(job["model"]).hidden_size,
        task=cfg.get("task", "classification"),
        num_labels=cfg.get("num_labels"),
        max_batch_size=int(cfg.get("batch_size", 32)),
        max_tokens=int(cfg.get("max_tokens", 64)),
    )


def _grad_spec(shape: protocol.StepShape) -> wire.TensorSpec:
    dims = (None, shape.num_labels) if shape.task == "classification" else (None, None, shape.hidden_size)
    return wire.TensorSpec(protocol.GRAD_OUTPUT, protocol.WIRE_FLOAT_DTYPES, dims)


def _unprocessable(exc: wire.WireError) -> Unprocessable:
    code = next((c for cls, c in _CODES.items() if isinstance(exc, cls)), "invalid_payload")
    return Unprocessable(str(exc), param=wire_param(exc), code=code)


def _check_header(header: wire.WireHeader, job: dict[str, Any], require_final: bool) -> bool:
    if header.kind not in KINDS:
        raise BadRequest(
            f"payload kind is {header.kind!r}; expected one of {list(KINDS)}", param="kind", code="invalid_header"
        )
    if header.job_id != job["id"]:
        raise BadRequest(
            f"payload is for job {header.job_id!r}, not {job['id']!r}", param="job_id", code="invalid_header"
        )
    final = header.kind == "step" and header.extra.get(protocol.FINAL) == "1"
    if require_final and not final:
        raise BadRequest(
            "the completion payload must carry extra final='1'", param=protocol.FINAL, code="invalid_header"
        )
    if header.kind == "step" and not final and header.step < 1:
        raise BadRequest("steps are numbered from 1", param="step", code="invalid_header")
    return final


def _specs(infos: dict[str, wire.TensorInfo], shape: protocol.StepShape, kind: str, final: bool) -> list:
    if final:
        if infos:
            raise Unprocessable(
                "the completion payload carries no tensors; send the last gradient first as a step with grad_output only",
                param=sorted(infos)[0],
                code="shape_rejected",
            )
        return []
    has_activations = protocol.HIDDEN in infos or protocol.ATTENTION_MASK in infos
    flush = kind == "step" and not has_activations and protocol.GRAD_OUTPUT in infos  # grad_output only
    specs = [] if flush else shape.activation_specs()
    if kind == "step" and protocol.GRAD_OUTPUT in infos:
        specs.append(_grad_spec(shape))
    return specs


def check_step(body: bytes, job: dict[str, Any], max_bytes: int, *, require_final: bool = False) -> wire.WireHeader:
    """Validate a step-channel payload for ``job`` and return its header.

    Raises ``WireError`` (-> 400) for a malformed payload (declared sizes beyond the limits included),
    ``BadRequest`` for a header that does not belong to this job, ``Unprocessable`` (422, ``param`` =
    tensor) for tensors that do not fit the job's model, task, batch size or token bound.
    """
    try:
        header, infos = wire.inspect(body, wire.WireLimits(max_payload_bytes=max_bytes))
    except wire.SizeLimitExceeded as exc:  # the body itself fits (checked before reading): declarations lie
        raise BadRequest(str(exc), param=wire_param(exc), code="size_limit_exceeded") from None
    final = _check_header(header, job, require_final)
    shape = step_shape(job)
    try:
        wire.check_specs(infos, _specs(infos, shape, header.kind, final))
    except (wire.ShapeRejected, wire.DtypeRejected) as exc:
        raise _unprocessable(exc) from None
    if protocol.HIDDEN in infos:
        reason = shape.check_sizes(infos[protocol.HIDDEN].shape, infos[protocol.ATTENTION_MASK].shape)
        if reason:
            param = protocol.ATTENTION_MASK if "attention_mask" in reason else protocol.HIDDEN
            raise Unprocessable(reason, param=param, code="shape_rejected")
    grad = infos.get(protocol.GRAD_OUTPUT)
    if grad is not None:
        batch, tokens = grad.shape[0], (grad.shape[1] if shape.task == "generation" else 1)
        if not (1 <= batch <= shape.max_batch_size and 1 <= tokens <= shape.max_tokens):
            raise Unprocessable(
                f"grad_output has shape {list(grad.shape)}; batch must be 1..{shape.max_batch_size}"
                + (f" and tokens 1..{shape.max_tokens}" if shape.task == "generation" else ""),
                param=protocol.GRAD_OUTPUT,
                code="shape_rejected",
            )
    return header
