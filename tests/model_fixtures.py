"""Tiny random models saved as local Hugging Face directories, for the model tests of the SDK and the worker (fast)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

WORDS = [f"w{i}" for i in range(59)]
HIDDEN, LAYERS, HEADS = 32, 4, 4


def _word_level_tokenizer(specials: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate([*specials, *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tokenizer, len(vocab)


def _save(model, tokenizer, path: Path) -> Path:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 4-layer BERT encoder (d=32) with a WordPiece tokenizer over a 64-token vocabulary."""
    from tests.helpers import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), hidden=HIDDEN, layers=LAYERS, heads=HEADS)


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory) -> Path:
    """A 4-layer RoBERTa encoder (positions counted from padding_idx + 1)."""
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaModel

    backend, size = _word_level_tokenizer(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        cls_token="<s>",
        sep_token="</s>",
    )
    config = RobertaConfig(
        vocab_size=size,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=64,
        max_position_embeddings=66,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    torch.manual_seed(1)
    return _save(RobertaModel(config), tokenizer, tmp_path_factory.mktemp("tiny-roberta"))


def _tiny_llama(tmp_path_factory, name: str, tied: bool) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    backend, size = _word_level_tokenizer(["<unk>", "<s>", "</s>", "<pad>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    config = LlamaConfig(
        vocab_size=size,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(2)
    return _save(LlamaForCausalLM(config), tokenizer, tmp_path_factory.mktemp(name))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A 4-layer Llama causal LM (d=32, GQA 4/2 heads) with tied embeddings."""
    return _tiny_llama(tmp_path_factory, "tiny-llama", tied=True)


@pytest.fixture(scope="session")
def tiny_llama_untied(tmp_path_factory) -> Path:
    """The same architecture with an untied LM head."""
    return _tiny_llama(tmp_path_factory, "tiny-llama-untied", tied=False)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    """A model directory of an unsupported architecture (GPT-2)."""
    from transformers import GPT2Config

    path = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2Config(n_embd=HIDDEN, n_layer=2, n_head=HEADS, vocab_size=64).save_pretrained(path)
    return path


def padded_batch(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenise with right padding: ``(input_ids, attention_mask)``, both ``(b, t)``."""
    tokenizer.padding_side = "right"
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


TEXTS = ["w1 w2 w3 w4 w5 w6 w7", "w8 w9", "w10 w11 w12 w13", "w14"]
