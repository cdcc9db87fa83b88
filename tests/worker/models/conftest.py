"""Tiny random models as local Hugging Face directories (shared with tests/client_sdk/models)."""

from tests.model_fixtures import tiny_bert, tiny_gpt2, tiny_llama, tiny_llama_untied, tiny_roberta  # noqa: F401
