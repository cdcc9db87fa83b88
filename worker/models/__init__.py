"""The provider's model code: the full models (``registry``: offline loading, GGUF -> cached fp32
safetensors), the server's top (``top``: blocks l+1..L + head, LoRA targets) and the bottom export
(``export``). None of it ships in the device's wheel."""

from .export import BottomArtifact, build_bottom, export_bottom
from .full_model import ModelSpec, load_full_model, model_cache_dir, resolve_model
from .top import DEFAULT_LORA_TARGETS, TopModel, build_top

__all__ = [
    "DEFAULT_LORA_TARGETS",
    "BottomArtifact",
    "ModelSpec",
    "TopModel",
    "build_bottom",
    "build_top",
    "export_bottom",
    "load_full_model",
    "model_cache_dir",
    "resolve_model",
]
