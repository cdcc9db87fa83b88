"""The cloud half of split training: the top model with LoRA, its optimizer, and atomic checkpoints.

The trainer never sees text, token ids or labels: it receives perturbed hidden states, returns the
top model's output, and later receives dL/d(output) from the device.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from client_sdk.jobspec import PrivtuneMethod

ADAPTER_FILE = "adapter.safetensors"
STATE_FILE = "trainer_state.pt"
META_FILE = "meta.json"


@dataclass(frozen=True)
class TrainSpec:
    """What the worker needs to rebuild a job's top model and optimizer: the base model, the job's
    ``method.privtune`` contract (``client_sdk.jobspec.PrivtuneMethod``), the seed, and whether the
    classification head is the server's (upload mode, labels shared) or the device's."""

    model: str
    method: PrivtuneMethod
    seed: int = 0
    server_head: bool = False

    @classmethod
    def from_job(cls, job: dict[str, Any]) -> TrainSpec:
        """The spec of a stored job row (``method.type == "supervised"``: upload mode, server-side head)."""
        upload = (job.get("method") or {}).get("type") == "supervised"
        return cls(job["model"], PrivtuneMethod.from_job(job).resolved(), int(job.get("seed") or 0), upload)

    @property
    def total_steps(self) -> int:
        return int(self.method.total_steps or 1)

    def with_total_steps(self, total_steps: int) -> TrainSpec:
        """The same spec training for ``total_steps`` (upload mode counts them from the file)."""
        return replace(self, method=self.method.model_copy(update={"total_steps": total_steps}))

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "seed": self.seed,
            "server_head": self.server_head,
            "method": self.method.model_dump(mode="json"),
        }


def adapted_top(spec: TrainSpec, model_cache_dir: str | None = None, top: torch.nn.Module | None = None) -> Any:
    """The job's server part (``worker.models.TopModel``, built from the base model unless ``top`` is
    given) with the job's LoRA adapters injected; only the adapters (and a server-side head) train.
    Training and inference build it here, so adapter names match the checkpoints."""
    from peft import LoraConfig, inject_adapter_in_model

    from worker.models import build_top

    method = spec.method
    if top is None:
        top = build_top(
            spec.model,
            method.split_layer,
            method.task,
            num_labels=method.num_labels,
            cache_dir=model_cache_dir,
            noise_aware=bool(method.noise_aware),
            server_head=spec.server_head,
            tail_layers=method.device_tail,
        )
    targets = list(method.lora.target_modules or top.default_lora_targets)
    lora = LoraConfig(
        r=method.lora.r, lora_alpha=method.lora.alpha, lora_dropout=method.lora.dropout, target_modules=targets
    )
    top = inject_adapter_in_model(lora, top)
    for name, param in top.named_parameters():
        param.requires_grad = "lora_" in name or name.startswith("classifier.")
    return top


def pick_device(preferred: str | None = None) -> torch.device:
    """``preferred`` if given (e.g. "cuda:1"), else CUDA when available, else CPU."""
    if preferred:
        return torch.device(preferred)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TopTrainer:
    """Top model + LoRA + AdamW + linear schedule, driven one forward / one gradient at a time."""

    def __init__(
        self,
        spec: TrainSpec,
        device: torch.device | str = "cpu",
        model_cache_dir: str | None = None,
        top: torch.nn.Module | None = None,
    ):
        self.spec = spec
        self.device = torch.device(device)
        method = spec.method
        torch.manual_seed(spec.seed)
        self.model = adapted_top(spec, model_cache_dir, top).to(self.device).train()
        self.trainable = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        optimizer = method.optimizer
        self.optimizer = torch.optim.AdamW(
            self.trainable.values(), lr=optimizer.learning_rate, weight_decay=optimizer.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.steps_applied = 0
        self._pending: torch.Tensor | None = None

    def _lr_factor(self, step: int) -> float:
        return self.spec.method.optimizer.lr_factor(step, self.spec.total_steps)

    # ---- one step ---------------------------------------------------------------------------
    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Run the top model on ``hidden`` (b, t, d); keep the graph for the gradient that follows."""
        hidden = hidden.to(self.device, torch.float32)
        output = self.model(hidden, attention_mask.to(self.device))  # (b, c) or (b, t, d)
        self._pending = output
        return output.detach()

    @torch.no_grad()
    def infer(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Output of the current model without touching the pending graph or the optimizer."""
        was_training = self.model.training
        self.model.eval()
        try:
            return self.model(hidden.to(self.device, torch.float32), attention_mask.to(self.device))
        finally:
            self.model.train(was_training)

    @property
    def has_pending(self) -> bool:
        return self._pending is not None

    def pending_shape(self) -> tuple[int, ...] | None:
        return None if self._pending is None else tuple(self._pending.shape)

    def apply_gradient(self, grad_output: torch.Tensor) -> float:
        """Back-propagate dL/d(output) of the pending forward and take one optimizer step.

        Returns the gradient norm before clipping.
        """
        if self._pending is None:
            raise RuntimeError("no pending forward to apply a gradient to")
        pending, self._pending = self._pending, None
        pending.backward(grad_output.to(self.device, pending.dtype))
        norm = torch.nn.utils.clip_grad_norm_(self.trainable.values(), self.spec.method.optimizer.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps_applied += 1
        return float(norm)

    def drop_pending(self) -> None:
        self._pending = None

    # ---- checkpoints -----------------------------------------------------------------------
    def write_files(self, directory: str | os.PathLike, metrics: dict[str, Any] | None = None) -> list[str]:
        """Write adapter, optimizer, scheduler and step into the existing ``directory``; returns the file
        names. Not durable by itself: ``worker.checkpoints.write_checkpoint`` fsyncs, checksums and
        switches the directory into place."""
        directory = Path(directory)
        _save_safetensors(
            {n: p.detach().cpu().contiguous() for n, p in self.trainable.items()}, directory / ADAPTER_FILE
        )
        torch.save(
            {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "steps_applied": self.steps_applied,
            },
            directory / STATE_FILE,
        )
        meta = {"step": self.steps_applied, "spec": self.spec.to_dict(), "metrics": metrics or {}}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2))
        return [ADAPTER_FILE, STATE_FILE, META_FILE]

    def save(self, directory: str | os.PathLike, metrics: dict[str, Any] | None = None) -> Path:
        """Write adapter, optimizer, scheduler and step to ``directory`` atomically (temp dir + rename)."""
        final = Path(directory)
        tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        self.write_files(tmp, metrics)
        _fsync_dir(tmp)
        if final.exists():  # a re-run of the same step after a crash: replace the old copy
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        return final

    def load(self, directory: str | os.PathLike) -> int:
        """Restore a checkpoint written by :meth:`save`; returns its step."""
        directory = Path(directory)
        weights = load_file(directory / ADAPTER_FILE, device=str(self.device))
        missing = set(self.trainable) - set(weights)
        if missing:
            raise ValueError(f"checkpoint {directory} lacks adapter weights {sorted(missing)[:3]}...")
        with torch.no_grad():
            for name, param in self.trainable.items():
                param.copy_(weights[name])
        state = torch.load(directory / STATE_FILE, map_location=self.device, weights_only=True)  # server-written
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.steps_applied = int(state["steps_applied"])
        self._pending = None
        return self.steps_applied

    def close(self) -> None:
        """Free the model and optimizer memory (GPU included)."""
        self._pending = None
        del self.model, self.optimizer, self.scheduler, self.trainable
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _save_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """``safetensors.torch.save_file``, whose I/O failures (a full disk: "No space left on device (os error
    28)") arrive as ``SafetensorError``, re-raised as the ``OSError`` they are, so the runner treats a full
    disk as the infrastructure fault it is (``worker.infra.is_disk_fault``) instead of failing the job."""
    from safetensors import SafetensorError

    try:
        save_file(tensors, path)
    except SafetensorError as exc:
        match = re.search(r"os error (\d+)", str(exc))
        if match is None:
            raise
        errno = int(match.group(1))
        raise OSError(errno, os.strerror(errno), str(path)) from exc
