"""OpenAI's ``hyperparameters`` object (legacy; each value ``"auto"`` or a number), mirrored into the
job contract and back."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from .errors import FieldError
from .method import DEFAULT_LEARNING_RATE, PrivtuneMethod, StrictModel

__all__ = ["LegacyHyperparameters"]


class LegacyHyperparameters(StrictModel):
    """OpenAI's ``hyperparameters`` (legacy; each ``"auto"`` or a number), mirrored into ``method.privtune``."""

    batch_size: Literal["auto"] | int = Field("auto", description="'auto' or 1..1048576")
    learning_rate_multiplier: Literal["auto"] | float = Field("auto", description="'auto' or 1e-6..1000")
    n_epochs: Literal["auto"] | int = Field("auto", description="'auto' or 1..50")

    @model_validator(mode="after")
    def _bounds(self) -> LegacyHyperparameters:
        for name, low, high in (
            ("batch_size", 1, 1 << 20),
            ("learning_rate_multiplier", 1e-6, 1000.0),
            ("n_epochs", 1, 50),
        ):
            value = getattr(self, name)
            if value != "auto" and not low <= value <= high:
                raise FieldError(name, f"{name} must be 'auto' or between {low:g} and {high:g}, got {value!r}")
        return self

    def merged_into(self, spec: PrivtuneMethod) -> PrivtuneMethod:
        """``spec`` with these values where it did not set its own explicitly."""
        update: dict[str, Any] = {}
        if self.batch_size != "auto" and "batch_size" not in spec.model_fields_set:
            update["batch_size"] = self.batch_size
        if self.n_epochs != "auto" and "n_epochs" not in spec.model_fields_set:
            update["n_epochs"] = self.n_epochs
        if self.learning_rate_multiplier != "auto" and "learning_rate" not in spec.optimizer.model_fields_set:
            rate = DEFAULT_LEARNING_RATE * self.learning_rate_multiplier
            update["optimizer"] = spec.optimizer.model_copy(update={"learning_rate": rate})
        return PrivtuneMethod.model_validate({**spec.model_dump(exclude_unset=True), **_dumped(update)})

    @staticmethod
    def of(spec: PrivtuneMethod) -> dict[str, Any]:
        """The OpenAI ``hyperparameters`` object that mirrors ``spec``."""
        return {
            "batch_size": spec.batch_size,
            "learning_rate_multiplier": spec.optimizer.learning_rate / DEFAULT_LEARNING_RATE,
            "n_epochs": spec.n_epochs,
        }


def _dumped(update: dict[str, Any]) -> dict[str, Any]:
    return {k: v.model_dump(exclude_unset=True) if isinstance(v, BaseModel) else v for k, v in update.items()}
