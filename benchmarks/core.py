"""Core benchmark: bottom forward vs. perturbation per mechanism, and neighbour precompute.

    python -m benchmarks.core [--data-dir ../shared/data] [--repeats 7] [--json out.json]

``minilm-l6`` split after layer 3, a batch of 32 real movie-review snippets padded/truncated to 64
tokens, on this machine's CPU. Each figure is the median of ``--repeats`` timed runs after one
warm-up; every mechanism is timed in the same process against the same bottom forward, so the
ratios are comparable even on a noisy machine. Neighbour precompute is timed for both vocabularies
(minilm-l6: 30,522 tokens; smollm2-135m: 49,152), then the load from the on-disk cache.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def movie_texts(data_dir: Path, split: str = "train") -> tuple[list[str], list[int]]:
    """Texts and 0/1 labels of the VADER ``movie`` domain (the SST stand-in)."""
    texts, labels = [], []
    with gzip.open(data_dir / "sentiment_vader.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if row["domain"] == "movie" and row["split"] == split:
                texts.append(row["text"])
                labels.append(1 if row["label"] == "positive" else 0)
    return texts, labels


def bench_mechanisms(data_dir: Path, repeats: int, cache_dir: Path) -> dict:
    from client_sdk.privacy import MECHANISMS
    from client_sdk.privacy.mechanisms import PerturbContext
    from client_sdk.privatizer import Privatizer
    from worker.models import build_bottom

    bottom, tokenizer = build_bottom("minilm-l6", 3)
    texts, labels = movie_texts(data_dir)
    batch = texts[:32]
    enc = tokenizer(batch, padding="max_length", truncation=True, max_length=64, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]  # (32, 64)
    with torch.no_grad():
        forward = _median_seconds(lambda: bottom(ids, mask), repeats)
        hidden = bottom(ids, mask).hidden  # (32, 64, 384)
    rows = {}
    for name in MECHANISMS:
        priv = Privatizer(bottom, tokenizer, name, max_length=64)
        priv.fit(texts[:2000], labels[:2000], cache_dir=cache_dir, model_id="minilm-l6")
        table = priv.state.importance_table if priv.state is not None else None
        importance = table[ids] if (priv.mechanism.uses_importance and table is not None) else None
        context = PerturbContext(state=priv.state, input_ids=ids, importance=importance)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            seconds = _median_seconds(lambda p=priv, c=context, g=gen: p.mechanism.perturb(hidden, mask, c, g), repeats)
        rows[name] = {"seconds": seconds, "ratio_to_bottom_forward": seconds / forward}
    return {"bottom_forward_s": forward, "real_tokens": int(mask.sum()), "mechanisms": rows}


def bench_neighbours(cache_dir: Path) -> dict:
    from client_sdk.privacy.neighbours import NeighbourIndex
    from worker.models import build_bottom

    out = {}
    for model in ("minilm-l6", "smollm2-135m"):
        bottom, _ = build_bottom(model, 3)
        matrix = bottom.input_embeddings().detach().float()  # (|V|, d): method.md's default source
        kwargs = dict(k=10, hops=3, max_hop_set=64, model_id=f"bench-{model}", split_layer=3)
        start = time.perf_counter()
        index = NeighbourIndex.build(matrix, **kwargs)
        built = time.perf_counter() - start
        index.save(cache_dir)
        start = time.perf_counter()
        NeighbourIndex.load_or_build(matrix, cache_dir, **kwargs)
        loaded = time.perf_counter() - start
        out[model] = {
            "vocab": int(matrix.shape[0]),
            "dim": int(matrix.shape[1]),
            "precompute_s": built,
            "cache_load_s": loaded,
        }
        del bottom, matrix, index
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = {
            "date": date.today().isoformat(),
            "machine": f"{platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} torch threads, torch {torch.__version__}",
            "mechanisms": bench_mechanisms(args.data_dir, args.repeats, Path(tmp)),
            "neighbours": bench_neighbours(Path(tmp)),
        }
    m = result["mechanisms"]
    print(f"# core benchmark, {result['date']}, {result['machine']}")
    print(f"bottom forward (minilm-l6, l=3, 32x64 tokens): {m['bottom_forward_s'] * 1e3:.1f} ms")
    print("| mechanism | perturbation (ms) | perturbation / bottom forward |")
    print("| --- | ---: | ---: |")
    for name, row in m["mechanisms"].items():
        print(f"| `{name}` | {row['seconds'] * 1e3:.1f} | {row['ratio_to_bottom_forward']:.3f} |")
    print("| vocabulary | size x dim | kNN + 3-hop precompute (s) | load from cache (s) |")
    print("| --- | --- | ---: | ---: |")
    for model, row in result["neighbours"].items():
        print(f"| {model} | {row['vocab']} x {row['dim']} | {row['precompute_s']:.1f} | {row['cache_load_s']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
