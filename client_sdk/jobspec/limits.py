"""What one server accepts for one model, and what a job accepts per step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from client_sdk.protocol import TASKS, StepShape

from .errors import JobSpecError
from .method import P, PrivtuneMethod

__all__ = ["ServerLimits", "check_limits", "step_shape"]


@dataclass(frozen=True)
class ServerLimits:
    """What one server accepts for one model: published by the gateway on the model object."""

    max_batch_size: int
    max_tokens: int
    num_layers: int
    max_positions: int
    tasks: tuple[str, ...] = TASKS  # what the model can be fine-tuned for (an encoder: classification)

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_batch_size": self.max_batch_size,
            "max_tokens": self.max_tokens,
            "num_layers": self.num_layers,
            "max_positions": self.max_positions,
            "tasks": list(self.tasks),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServerLimits:
        sizes = {k: int(data[k]) for k in ("max_batch_size", "max_tokens", "num_layers", "max_positions")}
        return cls(**sizes, tasks=tuple(data.get("tasks") or TASKS))


def check_limits(spec: PrivtuneMethod, limits: ServerLimits) -> None:
    """Raise :class:`JobSpecError` (``param`` = the field) if ``spec`` exceeds ``limits``."""
    if spec.task not in limits.tasks:
        raise JobSpecError(
            f"task={spec.task!r} is not available for this model; it supports {list(limits.tasks)}.", f"{P}.task"
        )
    if spec.batch_size > limits.max_batch_size:
        raise JobSpecError(f"batch_size must be <= {limits.max_batch_size}, got {spec.batch_size}.", f"{P}.batch_size")
    top = min(limits.max_tokens, limits.max_positions)
    if spec.max_tokens > top:
        raise JobSpecError(f"max_tokens must be <= {top}, got {spec.max_tokens}.", f"{P}.max_tokens")
    if not 1 <= spec.split_layer < limits.num_layers:
        raise JobSpecError(
            f"split_layer must satisfy 1 <= split_layer <= {limits.num_layers - 1} ({limits.num_layers} layers), "
            f"got {spec.split_layer}.",
            f"{P}.split_layer",
            code="invalid_split_layer",
        )
    tail = spec.device_tail
    if spec.split_layer + tail >= limits.num_layers:
        raise JobSpecError(
            f"split_layer + tail_layers must leave the server at least one of the {limits.num_layers} blocks, "
            f"got {spec.split_layer} + {tail}.",
            f"{P}.tail_layers",
            code="invalid_split_layer",
        )


def step_shape(spec: PrivtuneMethod, hidden_size: int, *, server_head: bool = False) -> StepShape:
    """What a job accepts per step (gateway, worker and evaluation build it here, nowhere else): the
    model's hidden size, the task and labels, at most ``batch_size`` rows of at most ``max_tokens``.
    ``server_head``: the server holds the classification head (upload mode, labels shared), so it
    returns logits; otherwise the head is the device's and the server returns a representation."""
    return StepShape(
        hidden_size=int(hidden_size),
        task=spec.task,
        num_labels=spec.num_labels,
        max_batch_size=spec.batch_size,
        max_tokens=spec.max_tokens,
        server_head=server_head,
    )
