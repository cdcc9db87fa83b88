"""The interactive split-training step protocol, shared by SDK, gateway and worker (torch-free).

U-shaped for both tasks (architecture.md, "Two training modes"): the device holds the bottom and a
private, trained end of the model (a classification head, or a generation tail), so no logits, loss
or label cross the wire. One round trip per step:

    device -> cloud   kind="step", step=t      hidden (b, t, d), attention_mask (b, t),
                                                grad_output of step t-1 (absent at the first step
                                                and right after a resume), extra: metrics (optional)
    cloud  -> device  kind="step_reply", step=t output of the server's part for step t:
                                                the pooled representation (b, d) for classification,
                                                the middle's last hidden state (b, t, d) for generation
                                                (logits (b, c) only in upload mode, whose head is the
                                                server's); extra: checkpoint = its latest checkpoint step
    device -> cloud   kind="step", step=T+1    grad_output of step T only (a "flush": the worker
                                                applies it and answers with an empty reply)
    device -> cloud   kind="infer", step=0     hidden + attention_mask: output only, no state change
                                                (the device's validation during training)
    device -> cloud   kind="step", step=0,      no tensors, extra final="1" and last_step=T+1 (the number of
                                                the flush): save the final adapter and finish

``grad_output`` is dL/d(output), computed by the device through its own end. The optional ``metrics``
extra is a JSON object of aggregates the user lets the device report for the job's events (a running
mean of the training loss, validation loss and accuracy); ``FineTuneJob.create(report_metrics=False)``
sends none.

Steps are numbered from 1. Step t may only follow step t-1; a retried step t gets the reply that
was already computed, never a second optimizer step. After a worker restart the job resumes from
its last checkpoint c, and the device is told (409, code ``step_out_of_order``, ``expected_step``
= c + 1) to resend from there without a gradient; it restores its own end as saved at step c. The
same answer (never a 400) meets a step whose gradient the worker cannot use: a gradient for a forward
it never ran (it resumed from a checkpoint after that forward) is answered with ``expected_step`` =
that step, to be resent without ``grad_output``.

Completion names the last applied step: ``last_step`` (:data:`LAST_STEP`) is the number of the
device's last step request, the flush that carried the gradient of step T = total_steps (so T + 1);
it says "every gradient of steps 1..last_step-1 has been answered". The worker completes only when it
has applied exactly ``last_step - 1`` gradients and holds no forward awaiting its gradient; otherwise
it answers 409 ``step_out_of_order`` with ``expected_step`` = its applied steps + 1 (the step to resend
from, as after a restart: a forward still awaiting its gradient is that step, whose reply is replayed),
and the device trains from there, flushes and completes again. A completion without ``last_step`` is
refused (400, ``param`` = ``last_step``), so no client can end a job without its last updates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from client_sdk.wire import (
    FLOAT_DTYPES,
    SchemaError,
    ShapeRejected,
    TensorInfo,
    TensorSpec,
    WireHeader,
    check_specs,
    load_json,
)

HIDDEN = "hidden"
ATTENTION_MASK = "attention_mask"
GRAD_OUTPUT = "grad_output"
OUTPUT = "output"

FINAL = "final"  # extra key: "1" on the completion payload
LAST_STEP = "last_step"  # completion extra key: the device's last step request, the flush (total_steps + 1)
METRICS = "metrics"  # extra key: JSON object of device-side aggregates (train_loss, valid_loss, ...)
CHECKPOINT = "checkpoint"  # reply extra key: the worker's latest checkpoint step
RESET = "reset"  # inference request extra key: "1" drops the session's KV cache first
EXPECTED_STEP = "expected_step"
#: what the ``metrics`` extra may carry (floats); anything else is refused
METRIC_KEYS = ("train_loss", "valid_loss", "valid_accuracy", "valid_mean_token_accuracy")

MASK_DTYPES = frozenset({"U8", "BOOL", "I32", "I64"})
WIRE_FLOAT_DTYPES = frozenset(FLOAT_DTYPES - {"F64"})

TASKS = ("classification", "generation")
REQUEST_KINDS = ("step", "infer")  # what a device may send on the step channel


@dataclass(frozen=True)
class StepShape:
    """What a job accepts per step: fixed by the job's model, split and task."""

    hidden_size: int
    task: str
    num_labels: int | None
    max_batch_size: int
    max_tokens: int
    server_head: bool = False  # upload mode: the server holds the classification head and returns logits

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.server_head and (self.task != "classification" or self.num_labels is None or self.num_labels < 2):
            raise ValueError("a server-side head is for classification with num_labels >= 2")

    def _output_dims(self) -> tuple[int | None, ...]:
        if self.task == "generation":
            return (None, None, self.hidden_size)
        return (None, self.num_labels if self.server_head else self.hidden_size)

    def output_shape(self, batch: int, tokens: int) -> tuple[int, ...]:
        """Shape of the server's output (and so of its gradient) for a batch."""
        return tuple(batch if i == 0 else tokens if d is None else d for i, d in enumerate(self._output_dims()))

    def activation_specs(self) -> list[TensorSpec]:
        """Specs of a step's activations; batch and token counts are checked by :meth:`check_sizes`."""
        return [
            TensorSpec(HIDDEN, WIRE_FLOAT_DTYPES, (None, None, self.hidden_size)),
            TensorSpec(ATTENTION_MASK, MASK_DTYPES, (None, None)),
        ]

    def grad_spec(self) -> TensorSpec:
        """Spec of ``grad_output``: dL/d(output), shaped like the server's output."""
        return TensorSpec(GRAD_OUTPUT, WIRE_FLOAT_DTYPES, self._output_dims())

    def check_sizes(self, hidden_shape: tuple[int, ...], mask_shape: tuple[int, ...]) -> None:
        """Raise ``ShapeRejected`` (``param`` = the tensor) if batch/token counts are out of bounds or
        inconsistent between ``hidden`` and ``attention_mask``."""
        b, t, _ = hidden_shape
        if not 1 <= b <= self.max_batch_size:
            raise ShapeRejected(f"batch size {b} is outside 1..{self.max_batch_size}", param=HIDDEN)
        if not 1 <= t <= self.max_tokens:
            raise ShapeRejected(f"sequence length {t} is outside 1..{self.max_tokens}", param=HIDDEN)
        if tuple(mask_shape) != (b, t):
            raise ShapeRejected(
                f"attention_mask has shape {list(mask_shape)}; expected {[b, t]} to match hidden", param=ATTENTION_MASK
            )

    def check_grad_size(self, grad_shape: tuple[int, ...]) -> None:
        """Raise ``ShapeRejected`` if ``grad_output``'s batch (and, for generation, token) count is out of bounds."""
        batch, tokens = grad_shape[0], (grad_shape[1] if self.task == "generation" else 1)
        if not (1 <= batch <= self.max_batch_size and 1 <= tokens <= self.max_tokens):
            bounds = f"batch must be 1..{self.max_batch_size}"
            if self.task == "generation":
                bounds += f" and tokens 1..{self.max_tokens}"
            raise ShapeRejected(f"grad_output has shape {list(grad_shape)}; {bounds}", param=GRAD_OUTPUT)


@dataclass(frozen=True)
class StepRequest:
    """What a checked request asks for: ``"step"`` (activations, maybe with the previous gradient),
    ``"flush"`` (the last gradient only), ``"infer"`` (activations, no state change) or ``"final"``."""

    kind: str
    step: int
    has_gradient: bool
    last_step: int | None = None  # a completion's ``last_step`` (see the module doc)


def completion_extra(last_step: int) -> dict[str, str]:
    """The extra of a completion payload whose last step request was ``last_step`` (the flush: the
    job's total_steps + 1): ``final="1"`` and ``last_step``."""
    if isinstance(last_step, bool) or not isinstance(last_step, int) or last_step < 1:
        raise ValueError(f"last_step must be an int >= 1, got {last_step!r}")
    return {FINAL: "1", LAST_STEP: str(last_step)}


def _last_step(extra: Mapping[str, str]) -> int:
    text = extra.get(LAST_STEP)
    if text is None:
        raise SchemaError(
            "the completion payload must carry extra last_step (the number of the last step request, the flush)",
            param=LAST_STEP,
        )
    if not (isinstance(text, str) and text.isascii() and text.isdigit() and len(text) <= 12 and int(text) >= 1):
        raise SchemaError(f"extra last_step must be a decimal integer >= 1, got {text!r}", param=LAST_STEP)
    return int(text)


def check_request(
    header: WireHeader, infos: Mapping[str, TensorInfo], shape: StepShape, job_id: str, *, require_final: bool = False
) -> StepRequest:
    """Check a request's header and declared tensors against the job (torch-free: the gateway runs it on
    the header alone, the worker again on what it decoded). Raises ``SchemaError`` for a header that is
    not a request of this job, ``ShapeRejected`` / ``DtypeRejected`` for tensors that do not fit."""
    if header.kind not in REQUEST_KINDS:
        raise SchemaError(f"payload kind is {header.kind!r}; expected one of {list(REQUEST_KINDS)}", param="kind")
    if header.job_id != job_id:
        raise SchemaError(f"payload is for job {header.job_id!r}, not {job_id!r}", param="job_id")
    if METRICS in header.extra:
        parse_metrics(header.extra[METRICS])
    final = header.kind == "step" and header.extra.get(FINAL) == "1"
    if require_final and not final:
        raise SchemaError("the completion payload must carry extra final='1'", param=FINAL)
    if final:
        if infos:
            raise ShapeRejected(
                "the completion payload carries no tensors; send the last gradient first as a step with grad_output only",
                param=sorted(infos)[0],
            )
        return StepRequest("final", header.step, False, _last_step(header.extra))
    if header.kind == "step" and header.step < 1:
        raise SchemaError("steps are numbered from 1", param="step")
    has_grad = header.kind == "step" and GRAD_OUTPUT in infos
    flush = has_grad and HIDDEN not in infos and ATTENTION_MASK not in infos
    specs = [] if flush else shape.activation_specs()
    check_specs(infos, [*specs, shape.grad_spec()] if has_grad else specs)
    if not flush:
        shape.check_sizes(infos[HIDDEN].shape, infos[ATTENTION_MASK].shape)
    if has_grad:
        shape.check_grad_size(infos[GRAD_OUTPUT].shape)
    return StepRequest("flush" if flush else header.kind, header.step, has_grad)


def parse_metrics(text: str) -> dict[str, float]:
    """The ``metrics`` extra as ``{name: value}``; ``SchemaError`` (param ``metrics``) unless it is a JSON
    object of finite numbers under :data:`METRIC_KEYS`."""
    import math

    data = load_json(text, what="extra metrics", error=SchemaError, param=METRICS, max_depth=1)
    if not isinstance(data, dict) or len(data) > len(METRIC_KEYS):
        raise SchemaError("extra metrics must be a JSON object", param=METRICS)
    out: dict[str, float] = {}
    for key, value in data.items():
        if key not in METRIC_KEYS:
            raise SchemaError(f"unknown metric {key!r}; expected some of {list(METRIC_KEYS)}", param=METRICS)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise SchemaError(f"metric {key!r} must be a finite number", param=METRICS)
        out[key] = float(value)
    return out
