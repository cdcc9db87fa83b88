"""The server's part of a split model (provider side): blocks l+1..L-k, run on the device's
(perturbed) representations; ``build_top`` cuts it from the full model. The device keeps the ends:
for classification the head (the server returns a pooled representation), for generation the last
k = ``tail_layers`` blocks, the final norm and the LM head (the server returns a hidden state).
Upload mode (labels shared) keeps a server-side classification head."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from client_sdk.models.bottom import family_module
from client_sdk.models.catalog import (
    SUPPORTED_MODEL_TYPES,
    UnsupportedArchitectureError,
    describe_model,
    validate_split_layer,
)
from client_sdk.protocol import TASKS

from .full_model import load_full_model

#: The top's tasks: the job tasks (client_sdk.protocol.TASKS) plus "features" (the last hidden state,
#: for the evaluation's attacks).
TOP_TASKS = (*TASKS, "features")
DEFAULT_LORA_TARGETS: dict[str, tuple[str, ...]] = {"bert": ("query", "value"), "llama": ("q_proj", "v_proj")}


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` ``(b, t, d)`` over the real tokens of ``attention_mask`` ``(b, t)``: ``(b, d)``."""
    weights = attention_mask.to(device=hidden.device, dtype=hidden.dtype)[..., None]  # (b, t, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # (b, d)


def precision_log_weights(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Log inverse-variance weights ``(b, t)`` (<= 0) of noisy token states ``(b, t, d)``.

    With independent noise z_j added to a representation of roughly constant norm, ||h~_j||^2 ~
    ||h_j||^2 + ||z_j||^2, so 1 / ||h~_j||^2 estimates token j's precision up to a constant. The
    weight is relative to the sequence's smallest real norm (its cleanest token gets log-weight 0);
    padded positions get 0 (the padding mask handles them).
    """
    norms = hidden.float().norm(dim=-1).clamp_min(1e-6)  # (b, t)
    real = attention_mask.to(device=hidden.device, dtype=torch.bool)
    ref = norms.masked_fill(~real, float("inf")).amin(dim=1, keepdim=True)  # (b, 1)
    ref = torch.where(torch.isfinite(ref), ref, torch.ones_like(ref))
    return torch.where(real, 2.0 * torch.log(ref / norms), torch.zeros_like(norms))


def check_task(task: str, family: str, num_labels: int | None, server_head: bool = True) -> None:
    """Raise ``ValueError`` unless ``task`` (and, for a server-side head, ``num_labels``) is valid for a
    model of ``family``."""
    if task not in TOP_TASKS:
        raise ValueError(f"task must be one of {TOP_TASKS}, got {task!r}")
    if task == "generation" and family != "llama":
        raise UnsupportedArchitectureError(
            f"task='generation' needs a causal LM (family 'llama'); family {family!r} is an encoder"
        )
    bad_labels = isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 2
    if task == "classification" and server_head and bad_labels:
        raise ValueError(f"num_labels must be an integer >= 2 for task='classification', got {num_labels!r}")


class TopModel(nn.Module):
    """Blocks l+1..L plus a task head, fed with the (perturbed) split-layer states and the attention mask.

    Tasks:
      * ``"classification"``: blocks, (Llama: final norm), masked mean-pool -> the representation
        ``(b, d)`` the device's head classifies; with a server-side ``classifier`` (upload mode) -> ``(b, C)``.
      * ``"generation"`` (causal LMs): blocks l+1..L-k only -> hidden state ``(b, t, d)``, the input of the
        device's tail (its k blocks, final norm, LM head).
      * ``"features"``: blocks (Llama: + final norm) -> ``(b, t, d)``, the full model's last hidden state.

    ``noise_aware`` (classification and features; for inputs with per-token noise of varying scale,
    e.g. importance-scaled d_chi noise): with w_j = :func:`precision_log_weights` of the received
    states (the inverse-variance weight of token j, estimated from its norm), each state is scaled by
    sqrt(w_j) (to the sequence's reference norm, so a noisy token's huge keys and values cannot swamp
    the attention), every attention logit towards key j gets + log w_j, and the pool is weighted by
    w_j. Tokens that arrive buried in noise then hardly contaminate the others. It adds no parameters:
    the same weights load either way.

    Submodules keep the Hugging Face names, so peft LoRA can target ``default_lora_targets`` and keep
    the ``classifier`` trainable via ``modules_to_save=["classifier"]``. Blocks live at
    ``blocks.layers.i``, where i counts from 0 within the top (block l+1+i of the full model).
    """

    def __init__(
        self,
        config,
        split_layer: int,
        task: str,
        layers: nn.ModuleList,
        norm: nn.Module | None = None,
        classifier: nn.Linear | None = None,
        noise_aware: bool = False,
        tail_layers: int = 0,
    ) -> None:
        super().__init__()
        family_module(config.model_type)  # rejects unsupported architectures
        num_labels = classifier.out_features if classifier is not None else None
        check_task(task, SUPPORTED_MODEL_TYPES[config.model_type], num_labels, server_head=classifier is not None)
        if tail_layers and task != "generation":
            raise ValueError("tail_layers applies to task='generation' only")
        expected = config.num_hidden_layers - split_layer - tail_layers
        if expected < 1 or len(layers) != expected:
            raise ValueError(f"TopModel needs {expected} blocks (at least 1), got {len(layers)}")
        self.tail_layers = tail_layers
        self.config = config
        self.family: str = SUPPORTED_MODEL_TYPES[config.model_type]
        self.task = task
        self.split_layer = split_layer
        self.hidden_size: int = config.hidden_size
        self.num_labels = num_labels
        self.is_causal: bool = self._family.IS_CAUSAL
        self.default_lora_targets: list[str] = list(DEFAULT_LORA_TARGETS[self.family])
        self.blocks = self._family.Blocks(config, layers)
        self.norm = norm if self.is_causal and task != "generation" else None
        self.classifier = classifier
        if noise_aware and task == "generation":
            raise ValueError("noise_aware applies to task='classification' or 'features', not 'generation'")
        self.noise_aware = bool(noise_aware)

    @property
    def _family(self) -> ModuleType:
        return family_module(self.config.model_type)

    @classmethod
    def from_full_model(
        cls,
        model: nn.Module,
        split_layer: int,
        task: str,
        num_labels: int | None = None,
        generator: torch.Generator | None = None,
        noise_aware: bool = False,
        server_head: bool = False,
        tail_layers: int = 0,
    ) -> TopModel:
        """Take blocks l+1..L-k (and the final norm if needed) from a loaded full model.

        The modules are shared with ``model``, not copied. ``server_head`` (classification, upload mode)
        adds a fresh classifier of ``num_labels`` classes, drawn from N(0, initializer_range^2) with
        ``generator``, bias zero.
        """
        family = family_module(model.config.model_type)
        check_task(task, SUPPORTED_MODEL_TYPES[model.config.model_type], num_labels, server_head=server_head)
        parts = family.parts_of(model)
        layers = list(parts["layers"])
        layers = nn.ModuleList(layers[split_layer : len(layers) - tail_layers])
        classifier = None
        if task == "classification" and server_head:
            classifier = nn.Linear(model.config.hidden_size, num_labels)
            std = float(getattr(model.config, "initializer_range", 0.02))
            with torch.no_grad():
                weight = torch.randn(classifier.weight.shape, generator=generator) * std
                classifier.weight.copy_(weight)
                classifier.bias.zero_()
        return cls(model.config, split_layer, task, layers, parts["norm"], classifier, noise_aware, tail_layers)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, cache: Any = None) -> torch.Tensor:
        """Run the top on split-layer states ``(b, t, d)`` with the right-padded mask ``(b, t)``.

        ``cache`` (generation): a ``client_sdk.models.attention.KVCache`` of the positions already run
        (incremental decoding); ``attention_mask`` then covers them too, ``(b, P + t)``.

        Returns the pooled representation ``(b, d)`` (logits ``(b, C)`` with a server-side head) for
        classification, else hidden states ``(b, t, d)`` (see class doc).
        """
        log_w = None
        if self.noise_aware:
            log_w = precision_log_weights(hidden, attention_mask)  # (b, t)
            hidden = hidden * (0.5 * log_w).exp().to(hidden.dtype)[..., None]  # every token at the reference norm
        if self.task == "generation":
            kwargs = {} if cache is None else {"cache": cache}
            return self.blocks(hidden, attention_mask, **kwargs)[0]  # (b, t, d)
        hidden, _ = self.blocks(hidden, attention_mask, key_bias=log_w)  # (b, t, d)
        if self.norm is not None:
            hidden = self.norm(hidden)  # (b, t, d)
        if self.task == "features":
            return hidden
        weights = attention_mask if log_w is None else attention_mask.to(hidden.dtype) * log_w.exp().to(hidden.dtype)
        pooled = masked_mean(hidden, weights)  # (b, d)
        return pooled if self.classifier is None else self.classifier(pooled)  # (b, d) or (b, C)

    def describe(self) -> dict:
        """Return a JSON-able summary: family, task, split layer, sizes and LoRA targets."""
        return {
            "family": self.family,
            "task": self.task,
            "split_layer": self.split_layer,
            "num_layers": self.config.num_hidden_layers,
            "top_layers": len(self.blocks.layers),
            "hidden_size": self.hidden_size,
            "num_labels": self.num_labels,
            "lora_targets": list(self.default_lora_targets),
            "noise_aware": self.noise_aware,
            "tail_layers": self.tail_layers,
        }


def build_top(
    name_or_path: str | Path,
    split_layer: int,
    task: str,
    num_labels: int | None = None,
    cache_dir: str | Path | None = None,
    seed: int = 0,
    noise_aware: bool = False,
    server_head: bool = False,
    tail_layers: int = 0,
) -> TopModel:
    """Build the server's part (blocks l+1..L-k, see :class:`TopModel`) for ``task``, in eval mode.

    Only those blocks (and the final norm, where the task needs it) are kept; a server-side classifier
    (``server_head``) is initialised from ``torch.Generator().manual_seed(seed)``, so the same arguments
    give the same top. ``noise_aware``: see :class:`TopModel`.
    """
    info = describe_model(name_or_path)
    validate_split_layer(info, split_layer)
    check_task(task, info.family, num_labels, server_head=server_head)
    model, _, _ = load_full_model(name_or_path, cache_dir)
    generator = torch.Generator().manual_seed(seed)
    top = TopModel.from_full_model(
        model, split_layer, task, num_labels, generator, noise_aware, server_head=server_head, tail_layers=tail_layers
    )
    return top.eval()
