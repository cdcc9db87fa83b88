"""Token classes from the tokenizer alone: content words, function words, punctuation.

One definition, used by the mechanism's data-independent importance map (``importance_source='public'``)
and by every report that splits an attack's success by token class (the on-device audit, the
evaluation). Nothing here looks at the user's data: a token's class is a property of its string.

``token_class_table(tokenizer, vocab_size) -> (V,) int64`` with ``CONTENT`` / ``FUNCTION`` /
``PUNCTUATION``; special tokens are ``SPECIAL``. Word pieces that continue a word (``##ing``) are content.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import torch

__all__ = ["CLASS_NAMES", "CONTENT", "FUNCTION", "FUNCTION_WORDS", "PUNCTUATION", "SPECIAL", "token_class_table"]

CONTENT, FUNCTION, PUNCTUATION, SPECIAL = 0, 1, 2, 3
CLASS_NAMES = ("content", "function", "punctuation", "special")

#: English closed-class words (articles, pronouns, prepositions, conjunctions, auxiliaries, particles)
FUNCTION_WORDS = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "against",
        "all",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "herself",
        "him",
        "himself",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "just",
        "me",
        "more",
        "most",
        "my",
        "myself",
        "no",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "ours",
        "ourselves",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "theirs",
        "them",
        "themselves",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "yourself",
        "yourselves",
        "s",
        "t",
        "d",
        "ll",
        "m",
        "o",
        "re",
        "ve",
        "y",
        "n't",
        "'s",
        "'re",
        "'ve",
        "'ll",
        "'d",
        "'m",
        "isn",
        "aren",
        "wasn",
        "weren",
        "don",
        "doesn",
        "didn",
        "won",
        "wouldn",
        "shouldn",
        "couldn",
        "can't",
        "cannot",
        "also",
        "yet",
        "upon",
        "whether",
        "though",
        "although",
    ]
)

_PREFIXES = ("Ġ", "▁", "Ċ")  # byte-level BPE / sentencepiece word-start markers


def _strip(piece: str) -> tuple[str, bool]:
    """The piece's text without word-start markers, and whether it continues a word (``##``)."""
    if piece.startswith("##"):
        return piece[2:], True
    for marker in _PREFIXES:
        piece = piece.replace(marker, "")
    return piece.strip(), False


def _is_punctuation(text: str) -> bool:
    return bool(text) and all(unicodedata.category(ch)[0] in "PS" for ch in text)


def token_class_table(tokenizer: Any, vocab_size: int | None = None) -> torch.Tensor:
    """(V,) int64: the class of every token id of ``tokenizer`` (ids beyond its vocabulary are content)."""
    size = int(vocab_size or len(tokenizer))
    table = torch.full((size,), CONTENT, dtype=torch.long)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    pieces = tokenizer.convert_ids_to_tokens(list(range(min(size, len(tokenizer)))))
    for index, piece in enumerate(pieces):
        if index in special:
            table[index] = SPECIAL
            continue
        text, continues = _strip(str(piece))
        if not text:
            table[index] = PUNCTUATION  # whitespace-only pieces carry no word
        elif _is_punctuation(text):
            table[index] = PUNCTUATION
        elif not continues and text.lower() in FUNCTION_WORDS:
            table[index] = FUNCTION
    return table
