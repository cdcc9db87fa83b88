"""Serving fine-tuned models: inference sessions over the base middle with swapped adapters."""

from .server import InferenceServer, ServedModel

__all__ = ["InferenceServer", "ServedModel"]
