"""Small real datasets from ``chatterbot-corpus`` (BSD, installs from the package registry): utterances
labelled by category for classification, and (statement, response) pairs for generation."""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

DEMO_CATEGORIES = ("ai", "coding", "emotion", "trivia")


def _english_root() -> Path:
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the demo needs the chatterbot-corpus package: pip install --no-deps chatterbot-corpus")
    return Path(spec.submodule_search_locations[0]) / "data" / "english"


def chatterbot_dataset(categories=DEMO_CATEGORIES, max_per_class: int = 250, seed: int = 0) -> list[tuple[str, str]]:
    """(utterance, category) pairs from chatterbot-corpus, balanced to at most ``max_per_class``."""
    import yaml

    root = _english_root()
    rows: list[tuple[str, str]] = []
    rng = random.Random(seed)
    for category in categories:
        doc = yaml.safe_load((root / f"{category}.yml").read_text(encoding="utf-8"))
        texts = sorted({str(t).strip() for conv in doc["conversations"] for t in conv if str(t).strip()})
        rng.shuffle(texts)
        rows += [(t, category) for t in texts[:max_per_class]]
    rng.shuffle(rows)
    return rows


def chatterbot_categories() -> tuple[str, ...]:
    """The English categories (file names of ``data/english/*.yml``), sorted."""
    return tuple(sorted(path.stem for path in _english_root().glob("*.yml")))


def _clean(turn: object) -> str:
    return " ".join(str(turn).split())


def chatterbot_pairs(categories: Iterable[str] | None = None, seed: int = 0) -> list[tuple[str, str]]:
    """(statement, response) pairs: each two consecutive turns of every conversation of the English
    chatterbot-corpus files of ``categories`` (default: all 21), whitespace-normalised, deduplicated
    (a pair in two categories counts once) and shuffled with ``seed`` (the same list for the same seed).

    A conversation that is not a list of turns (trivia.yml has one malformed entry, a lone string) is
    skipped. chatterbot-corpus 1.3.3 gives 1,176 distinct pairs in all (1,015 distinct statements; some
    have several responses), per category (distinct within it; greetings and conversations share one):
    ai 105, botprofile 19, coding 98, computers 35, conversations 106, emotion 205, food 17, gossip 19,
    greetings 25, health 8, history 8, humor 31, literature 45, money 30, movies 23, politics 15,
    psychology 64, science 28, sports 26, tech_support 10 (its 1,050 entries repeat ten pairs), trivia 260."""
    import yaml

    root = _english_root()
    available = chatterbot_categories()
    chosen = available if categories is None else tuple(categories)
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        raise ValueError(f"unknown chatterbot categories {unknown}; available: {', '.join(available)}")
    seen: set[tuple[str, str]] = set()
    pairs: list[tuple[str, str]] = []
    for category in sorted(set(chosen)):
        doc = yaml.safe_load((root / f"{category}.yml").read_text(encoding="utf-8"))
        for conversation in doc.get("conversations") or []:
            if not isinstance(conversation, list):
                continue
            turns = [_clean(turn) for turn in conversation if turn is not None]
            for statement, response in zip(turns[:-1], turns[1:], strict=True):
                if statement and response and (statement, response) not in seen:
                    seen.add((statement, response))
                    pairs.append((statement, response))
    random.Random(seed).shuffle(pairs)
    return pairs


def split_pairs(
    pairs: Sequence[tuple[str, str]], n_test: int, seed: int = 0
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(train, test)``: a held-out set of ``n_test`` pairs with distinct statements, fixed by the set of
    pairs and ``seed`` (not by their order). No test statement appears in training: the other pairs of
    a held-out statement (chatterbot has several answers to some) are left out of both. Train keeps the
    order of ``pairs``."""
    statements = sorted({statement for statement, _ in pairs})
    if not 0 < n_test < len(statements):
        raise ValueError(f"n_test must be in [1, {len(statements) - 1}] for {len(statements)} distinct statements")
    random.Random(seed).shuffle(statements)
    held_out = statements[:n_test]
    first: dict[str, tuple[str, str]] = {}
    for pair in sorted(pairs):
        first.setdefault(pair[0], pair)
    held = set(held_out)
    return [p for p in pairs if p[0] not in held], [first[s] for s in held_out]
