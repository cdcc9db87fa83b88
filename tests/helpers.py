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
