"""Load a bottom-model artifact on the device: the bottom (embeddings + blocks 1..l, plus the final
norm and LM head of a causal LM) from its directory alone, verified against its manifest.

The provider cuts and exports the artifact (``worker.models.export``); the device never sees the
top of the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from .artifact import TAIL_WEIGHTS, WEIGHTS, ArtifactError, verify_artifact
from .bottom import BottomModel, family_module, truncated_config
from .catalog import SUPPORTED_MODEL_TYPES

__all__ = ["frozen", "load_bottom", "load_tail", "load_tokenizer", "prototype_context"]


def load_tokenizer(model_dir: str | Path) -> Any:
    """Load the tokenizer stored in a local model directory (no network)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)


def prototype_context(tokenizer: Any, config: Any) -> tuple[list[int], list[int]]:
    """Return the special-token ids placed before / after a lone token when computing its prototype.

    BERT family: ``[CLS] v [SEP]`` (``<s> v </s>`` for RoBERTa); Llama: ``[BOS] v`` (BOS from the config).
    """
    if family_module(config.model_type).IS_CAUSAL:
        bos = getattr(config, "bos_token_id", None)
        bos = bos if bos is not None else getattr(tokenizer, "bos_token_id", None)
        return ([int(bos)] if bos is not None else []), []
    first = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    last = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    return [int(i) for i in (first,) if i is not None], [int(i) for i in (last,) if i is not None]


def frozen(bottom: BottomModel) -> BottomModel:
    """``bottom`` with gradients off and in eval mode (the device's bottom never trains)."""
    bottom.requires_grad_(False)
    return bottom.eval()


def load_bottom(artifact_dir: str | Path) -> tuple[BottomModel, Any, dict[str, Any]]:
    """Load a bottom artifact from its directory alone: ``(bottom, tokenizer, manifest)``.

    Every file is checked against the manifest's sha256 first (``ArtifactError`` names the file that
    differs). The bottom comes back frozen and in eval mode.
    """
    from transformers import AutoConfig

    directory = Path(artifact_dir)
    manifest = verify_artifact(directory)
    config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    split_layer = int(manifest["split_layer"])
    if SUPPORTED_MODEL_TYPES.get(config.model_type) != manifest["family"]:
        raise ArtifactError(
            f"artifact config model_type {config.model_type!r} does not match family {manifest['family']!r}"
        )
    if config.num_hidden_layers != split_layer:
        raise ArtifactError(
            f"artifact config has {config.num_hidden_layers} blocks, manifest says split_layer={split_layer}"
        )
    for key, value in (("hidden_size", config.hidden_size), ("vocab_size", config.vocab_size)):
        if manifest[key] != value:
            raise ArtifactError(f"artifact manifest {key}={manifest[key]!r} does not match its config ({value!r})")
    tokenizer = load_tokenizer(directory)
    prefix, suffix = prototype_context(tokenizer, config)  # the manifest's values win where present
    prefix, suffix = manifest.get("prototype_prefix", prefix), manifest.get("prototype_suffix", suffix)
    bottom = BottomModel.from_config(config, split_layer, prefix, suffix)
    try:
        bottom.load_state_dict(load_file(str(directory / WEIGHTS)), strict=True)
    except RuntimeError as exc:
        raise ArtifactError(f"artifact weights do not fit the bottom model: {exc}") from None
    return frozen(bottom), tokenizer, manifest


def load_tail(
    artifact_dir: str | Path,
    bottom: BottomModel,
    manifest: dict[str, Any],
    *,
    lora_r: int = 8,
    lora_alpha: float = 16.0,
    generator: Any = None,
) -> Any:
    """The device's generation tail (``client_sdk.models.ends.DeviceTail``) from an artifact exported
    with ``tail_layers`` = k: its k base blocks (frozen), the bottom's final norm and LM head, and
    fresh LoRA adapters of rank ``lora_r`` (0: none) drawn from ``generator``."""
    from torch import nn

    from .ends import DeviceTail

    k, num_layers = int(manifest.get("tail_layers", 0)), int(manifest["num_layers"])
    layers = nn.ModuleList()
    if k:
        family = family_module(bottom.config.model_type)
        layers = family.new_layers(truncated_config(bottom.config, num_layers), num_layers - k, num_layers)
        try:
            layers.load_state_dict(load_file(str(Path(artifact_dir) / TAIL_WEIGHTS)), strict=True)
        except (RuntimeError, FileNotFoundError) as exc:
            raise ArtifactError(f"artifact tail weights do not fit {k} blocks: {exc}") from None
    return DeviceTail(bottom, layers.eval(), num_layers, lora_r=lora_r, lora_alpha=lora_alpha, generator=generator)
