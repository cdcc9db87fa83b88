"""Shared test helpers: tiny random models as local Hugging Face directories, toy datasets."""

from __future__ import annotations

import random
from pathlib import Path

import torch

WORDS = [f"w{i}" for i in range(59)]


def make_tiny_bert(path: Path, hidden: int = 32, layers: int = 4, heads: int = 4) -> Path:
    """Save a random BERT encoder (d=hidden) with a WordPiece tokenizer over ``WORDS`` to ``path``."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)})
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def toy_dataset(n: int = 96, seed: int = 0) -> list[tuple[str, str]]:
    """Two classes told apart by their words (w0..w9 vs w10..w19) plus shared filler words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        own = WORDS[10:20] if label == "pos" else WORDS[:10]
        words = rng.sample(own, 3) + rng.sample(WORDS[20:], 3)
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def make_tiny_llama(path: Path, hidden: int = 32, layers: int = 4) -> Path:
    """Save a random Llama causal LM (d=hidden, tied embeddings) with a word-level tokenizer over
    ``WORDS`` and a small chat template to ``path``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
    vocab = {token: i for i, token in enumerate([*specials, *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def toy_pairs(n: int = 48, seed: int = 0) -> list[tuple[str, str]]:
    """(prompt, completion) pairs with a learnable rule: the completion repeats the prompt's first word."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.sample(WORDS[:20], 3)
        rows.append((" ".join(words), words[0]))
    return rows
