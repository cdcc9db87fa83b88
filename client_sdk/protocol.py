"""The interactive split-training step protocol, shared by SDK, gateway and worker (torch-free).

One round trip per step (architecture.md, "Two training modes"):

    device -> cloud   kind="step", step=t      hidden (b, t, d), attention_mask (b, t),
                                                grad_output of step t-1 (absent at the first step
                                                and right after a resume), extra: loss of step t-1
    cloud  -> device  kind="step_reply", step=t output of the top model for step t:
                                                logits (b, c) for classification,
                                                last hidden state (b, t, d) for generation
    device -> cloud   kind="step", step=T+1    grad_output of step T only (a "flush": the worker
                                                applies it and answers with an empty reply)
    device -> cloud   kind="infer", step=0     hidden + attention_mask: output only, no state change
                                                (the device's local validation, private inference)
    device -> cloud   kind="step", extra final="1", no tensors: save the final adapter and finish

Steps are numbered from 1. Step t may only follow step t-1; a retried step t gets the reply that
was already computed, never a second optimizer step. After a worker restart the job resumes from
its last checkpoint c, and the device is told (409, code ``step_out_of_order``, ``expected_step``
= c + 1) to resend from there without a gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

from client_sdk.wire import FLOAT_DTYPES, TensorSpec

HIDDEN = "hidden"
ATTENTION_MASK = "attention_mask"
GRAD_OUTPUT = "grad_output"
OUTPUT = "output"

FINAL = "final"  # extra key: "1" on the completion payload
LOSS = "loss"  # extra key: device-reported loss of the previous step
EXPECTED_STEP = "expected_step"

MASK_DTYPES = frozenset({"U8", "BOOL", "I32", "I64"})
WIRE_FLOAT_DTYPES = frozenset(FLOAT_DTYPES - {"F64"})

TASKS = ("classification", "generation")


@dataclass(frozen=True)
class StepShape:
    """What a job accepts per step: fixed by the job's model, split and task."""

    hidden_size: int
    task: str
    num_labels: int | None
    max_batch_size: int
    max_tokens: int

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.task == "classification" and (self.num_labels is None or self.num_labels < 2):
            raise ValueError("classification needs num_labels >= 2")

    def output_shape(self, batch: int, tokens: int) -> tuple[int, ...]:
        """Shape of the top model's output (and so of its gradient) for a batch."""
        if self.task == "classification":
            return (batch, self.num_labels)
        return (batch, tokens, self.hidden_size)

    def activation_specs(self) -> list[TensorSpec]:
        """Specs of a step's activations; batch and token counts are checked by :meth:`check_sizes`."""
        return [
            TensorSpec(HIDDEN, WIRE_FLOAT_DTYPES, (None, None, self.hidden_size)),
            TensorSpec(ATTENTION_MASK, MASK_DTYPES, (None, None)),
        ]

    def check_sizes(self, hidden_shape: tuple[int, ...], mask_shape: tuple[int, ...]) -> str | None:
        """Return a reason if batch/token counts are out of bounds or inconsistent, else None."""
        b, t, _ = hidden_shape
        if not 1 <= b <= self.max_batch_size:
            return f"batch size {b} is outside 1..{self.max_batch_size}"
        if not 1 <= t <= self.max_tokens:
            return f"sequence length {t} is outside 1..{self.max_tokens}"
        if tuple(mask_shape) != (b, t):
            return f"attention_mask has shape {list(mask_shape)}; expected {[b, t]} to match hidden"
        return None
