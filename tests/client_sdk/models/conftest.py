"""Tiny random models as local Hugging Face directories (shared with tests/worker/models)."""

from tests.model_fixtures import tiny_bert, tiny_gpt2, tiny_llama, tiny_llama_untied, tiny_roberta  # noqa: F401
