"""The evaluation's datasets: real public text read by path, split into the victim's and the attacker's parts.

Four named datasets, built from the gzipped JSON lines in the shared data directory (never copied
into the repository; see ``../shared/data/README.md``):

    vader-movie   VADER ``movie`` domain (Rotten Tomatoes snippets behind SST): the SST-2 stand-in.
                  Binary sentiment. The domain is constant here, so there is no private attribute and
                  the attribute attacks (A3/A4/A5) are not run on it.
    vader-mixed   VADER movie + tweet + amazon, binary sentiment; private attribute = ``domain``
                  (3 values), balanced over the domains so that attribute chance is about 1/3.
    multiemo      BIG-bench multiemo, 4-class sentiment; private attribute = ``domain``
                  (hotels / medicine / products / reviews), balanced as far as the small domains allow.
    multiemo-medicine  multiemo's ``medicine`` domain only (patient reviews of doctors and treatments,
                  2,598 train / 674 test rows), 4-class sentiment, no attribute. The victim's private and
                  test texts are medical; the attacker's public texts are the *other* domains' train rows
                  (hotels / products / reviews: 3,974), i.e. an attacker with generic public text, not the
                  victim's kind. An ``n_test`` above 674 takes the whole medicine test split.

How the rows are divided (``load_eval_data``), with one seeded shuffle per split:

    private   n_train rows of the ``train`` split: the victim's fine-tuning data. The attacks target
              perturbed representations of these texts, as the server observed them in training.
    public    n_public rows of the ``train`` split, disjoint from ``private`` (taken from the other
              end of the shuffled order): the attacker's public / shadow text, with its attribute;
              for a dataset with ``public_domains`` (multiemo-medicine), rows of those domains instead.
    test      n_test rows of the fixed ``test`` split (balanced like the others): utility (accuracy) only.

The data directory comes from the caller (``--data-dir``), else ``PRIVTUNE_EVAL_DATA``, else
``../shared/data`` beside the repository root (the test and benchmark default only).
"""

from __future__ import annotations

import gzip
import json
import os
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from client_sdk.data import Example

DATA_ENV = "PRIVTUNE_EVAL_DATA"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"


class EvalDataError(ValueError):
    """The evaluation data cannot be found or does not hold what a dataset needs."""


@dataclass(frozen=True)
class DatasetSpec:
    """A named evaluation dataset: source file, domain filter, private attribute, balancing."""

    name: str
    file: str
    domains: tuple[str, ...] | None  # keep only these domains (None: all)
    attribute: str | None  # the row field that is the private attribute (None: no attribute attacks)
    balance_attribute: bool  # sample the same number of rows per attribute value where possible
    description: str
    public_domains: tuple[str, ...] | None = None  # the attacker's public rows from these domains (None: as private)


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "vader-movie", "sentiment_vader.jsonl.gz", ("movie",), None, False,
            "VADER movie snippets (SST stand-in), binary sentiment",
        ),
        DatasetSpec(
            "vader-mixed", "sentiment_vader.jsonl.gz", ("movie", "tweet", "amazon"), "domain", True,
            "VADER movie+tweet+amazon, binary sentiment; attribute = domain (balanced)",
        ),
        DatasetSpec(
            "multiemo", "sentiment_multiemo.jsonl.gz", None, "domain", True,
            "multiemo, 4-class sentiment; attribute = domain incl. medicine (balanced where possible)",
        ),
        DatasetSpec(
            "multiemo-medicine", "sentiment_multiemo.jsonl.gz", ("medicine",), None, False,
            "multiemo medicine domain, 4-class sentiment; public texts from the other domains",
            public_domains=("hotels", "products", "reviews"),
        ),
    )
}  # fmt: skip


@dataclass(frozen=True)
class Record:
    """One row: the text, its task label and its private attribute (None when the dataset has none)."""

    text: str
    label: str
    attribute: str | None

    def example(self) -> Example:
        """The (text, label) pair the SDK trains on; the attribute never enters training."""
        return Example(self.text, self.label)


@dataclass(frozen=True)
class EvalData:
    """The victim's private training rows, the attacker's disjoint public rows, and the test rows."""

    spec: DatasetSpec
    private: tuple[Record, ...]
    public: tuple[Record, ...]
    test: tuple[Record, ...]

    @property
    def has_attribute(self) -> bool:
        """Whether attribute attacks make sense: an attribute field with at least two values."""
        return self.spec.attribute is not None and len({r.attribute for r in self.private}) > 1

    def summary(self) -> dict:
        """Counts per part and per attribute value (JSON-able, for the result row)."""

        def counts(rows: tuple[Record, ...]) -> dict[str, int]:
            out: dict[str, int] = defaultdict(int)
            for r in rows:
                out[str(r.attribute)] += 1
            return dict(sorted(out.items()))

        return {
            "dataset": self.spec.name,
            "private": len(self.private),
            "public": len(self.public),
            "test": len(self.test),
            "private_attributes": counts(self.private) if self.spec.attribute else None,
            "public_attributes": counts(self.public) if self.spec.attribute else None,
        }


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory: ``data_dir``, else ``$PRIVTUNE_EVAL_DATA``, else ``../shared/data`` beside the repo."""
    chosen = data_dir or os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR
    path = Path(chosen).expanduser().resolve()
    if not path.is_dir():
        raise EvalDataError(f"evaluation data directory {path} does not exist (set --data-dir or {DATA_ENV})")
    return path


def read_rows(data_dir: Path, spec: DatasetSpec, domains: tuple[str, ...] | None = None) -> list[dict]:
    """All rows of ``spec``'s file that pass its domain filter (``domains``: this one instead), in file order."""
    path = data_dir / spec.file
    if not path.exists():
        raise EvalDataError(f"{path} not found: dataset {spec.name!r} needs {spec.file}")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    keep = spec.domains if domains is None else domains
    if keep is not None:
        rows = [r for r in rows if r.get("domain") in keep]
    return rows


def _record(row: dict, spec: DatasetSpec) -> Record:
    attribute = None if spec.attribute is None else str(row[spec.attribute])
    return Record(row["text"], str(row["label"]), attribute)


def _round_robin(groups: list[list[Record]], n: int, caps: list[int]) -> list[Record]:
    """Up to ``n`` records taken in turn from each group (at most ``caps[i]`` from group i), in order."""
    out, position = [], [0] * len(groups)
    while len(out) < n and any(position[i] < caps[i] for i in range(len(groups))):
        for i, group in enumerate(groups):
            if position[i] < caps[i] and len(out) < n:
                out.append(group[position[i]])
                position[i] += 1
    return out


def split_private_public(
    records: list[Record], n_private: int, n_public: int, balance: bool
) -> tuple[list[Record], list[Record]]:
    """Disjoint private and public parts of the shuffled ``records``.

    Without ``balance``: private = the first ``n_private``, public = the last ``n_public``. With it,
    each attribute value's rows are divided in the ratio n_private : n_public (private from the
    front, public from the back), and each part is filled round-robin over the values, so a small
    value is present in both parts and a value that runs out leaves its share to the others.
    """
    if not balance:
        return records[:n_private], list(reversed(records))[:n_public]
    by_value: dict[str | None, list[Record]] = defaultdict(list)
    for r in records:
        by_value[r.attribute].append(r)
    groups = [by_value[k] for k in sorted(by_value, key=str)]
    share = n_private / max(n_private + n_public, 1)
    caps_private = [int(len(g) * share) for g in groups]
    private = _round_robin(groups, n_private, caps_private)
    backs = [list(reversed(g[c:])) for g, c in zip(groups, caps_private, strict=True)]
    public = _round_robin(backs, n_public, [len(b) for b in backs])
    return private, public


def load_eval_data(
    name: str,
    n_train: int,
    n_public: int,
    n_test: int,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
) -> EvalData:
    """Load dataset ``name`` and divide it into private / public / test parts (see the module doc).

    Promises: the private and public parts are disjoint (no shared text), both come from the
    ``train`` split, the test part from the ``test`` split; the same arguments give the same rows.
    Raises ``EvalDataError`` if the file is missing or the train split cannot supply both parts.
    """
    if name not in DATASETS:
        raise EvalDataError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    spec = DATASETS[name]
    root = resolve_data_dir(data_dir)
    rows = read_rows(root, spec)
    train = [_record(r, spec) for r in rows if r["split"] == "train"]
    test = [_record(r, spec) for r in rows if r["split"] == "test"]
    # de-duplicate texts so "disjoint" means no shared text, not only no shared row
    seen: set[str] = set()
    train = [r for r in train if not (r.text in seen or seen.add(r.text))]
    rng = random.Random(f"{name}:{seed}")
    rng.shuffle(train)
    rng.shuffle(test)
    if spec.public_domains is not None:  # the attacker's text comes from other domains
        others = [_record(r, spec) for r in read_rows(root, spec, spec.public_domains) if r["split"] == "train"]
        others = [r for r in others if not (r.text in seen or seen.add(r.text))]
        rng.shuffle(others)
        if n_train > len(train) or n_public > len(others):
            raise EvalDataError(
                f"{name}: n_train = {n_train} of {len(train)} private rows, n_public = {n_public} of {len(others)}"
            )
        private, public = train[:n_train], others[:n_public]
    else:
        if n_train + n_public > len(train):
            raise EvalDataError(f"{name}: n_train + n_public = {n_train + n_public} > {len(train)} training rows")
        private, public = split_private_public(train, n_train, n_public, spec.balance_attribute)
    if len(private) < n_train or len(public) < n_public:
        raise EvalDataError(f"{name}: could only take {len(private)} private / {len(public)} public rows")
    test, _ = split_private_public(test, n_test, 0, spec.balance_attribute)
    return EvalData(spec, tuple(private), tuple(public), tuple(test))
