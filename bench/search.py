"""`python -m bench.search`: build time and search latency of the feature-label catalog.

Synthetic labels (seeded): 3-8 words drawn from a Zipf-like vocabulary, a few holding planted
phrases; queries of 1-3 words, common, rare, mixed and phrases. Prints a Markdown table, then
the same figures as JSON on the last line.

python -m bench.search                       # 1,000,000 labels, 1000 queries
python -m bench.search --labels 200000 --queries 300
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import resource
import time

import numpy as np
import numpy.typing as npt

from steering.discovery.catalog import Catalog

# The head of the vocabulary, most frequent first: words feature labels really use a lot.
COMMON = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "a",
    "related",
    "references",
    "words",
    "text",
    "about",
    "mentions",
    "tokens",
    "code",
    "phrases",
    "for",
    "with",
    "language",
    "concepts",
    "terms",
    "context",
    "names",
    "numbers",
    "or",
    "on",
    "specific",
]
PLANTED = ("sea and ships", "ocean waves", "legal documents", "python code", "french cuisine")
SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]  # 70 syllables, no "s" end
SAES = 4  # labels are spread over a few SAEs, as a server with several SAEs holds them


def vocabulary(size: int) -> list[str]:
    """COMMON, then distinct pseudo-words ("kalo", "bimeru", ...) down to rank `size`."""
    out = list(COMMON)
    n = 0
    while len(out) < size:
        digits, k = [], n + len(SYLLABLES)  # at least two syllables, so all are distinct
        while k:
            k, d = divmod(k, len(SYLLABLES))
            digits.append(SYLLABLES[d])
        out.append("".join(digits))
        n += 1
    return out


def zipf_probabilities(size: int, exponent: float = 1.05) -> npt.NDArray[np.float64]:
    """Rank r (from 0) drawn in proportion to 1 / (r + 2) ** exponent."""
    weights: npt.NDArray[np.float64] = 1.0 / np.arange(2, size + 2, dtype=np.float64) ** exponent
    weights /= weights.sum()
    return weights


def synthetic_labels(n: int, vocab: list[str], seed: int) -> dict[str, dict[int, str]]:
    """`n` labels over SAES SAEs; about 1 in 200 holds a planted phrase."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 9, size=n)
    tokens = rng.choice(len(vocab), size=int(lengths.sum()), p=zipf_probabilities(len(vocab)))
    ends = np.cumsum(lengths)
    planted = rng.random(n) < 0.005
    phrase_of = rng.integers(0, len(PLANTED), size=n)
    labels: dict[str, dict[int, str]] = {f"sae{s}": {} for s in range(SAES)}
    for i in range(n):
        label = [vocab[t] for t in tokens[ends[i] - lengths[i] : ends[i]]]
        if planted[i]:
            label.insert(int(rng.integers(0, len(label) + 1)), PLANTED[phrase_of[i]])
        labels[f"sae{i % SAES}"][i // SAES] = " ".join(label).capitalize()
    return labels


def queries(count: int, vocab: list[str], seed: int) -> list[tuple[str, str, str]]:
    """(kind, query, SAE) for each kind in turn; SAE "" means all."""
    rng = np.random.default_rng(seed + 1)
    head, tail = vocab[: len(COMMON)], vocab[len(vocab) // 10 :]
    makers = {
        "common word": lambda: str(rng.choice(head)),
        "rare word": lambda: str(rng.choice(tail)),
        "mixed 2-3": lambda: " ".join(
            [str(rng.choice(head))] + [str(w) for w in rng.choice(tail, int(rng.integers(1, 3)))]
        ),
        "planted phrase": lambda: str(rng.choice(PLANTED)),
        "common pair": lambda: " ".join(str(w) for w in rng.choice(head[:8], 2, replace=False)),
        # Seldom a phrase, no rare word to start from: every holder of the words is scored.
        "common triple": lambda: " ".join(str(w) for w in rng.choice(head, 3, replace=False)),
        "one SAE, mixed": lambda: f"{rng.choice(head)} {rng.choice(tail)}",
    }
    kinds = list(makers)
    out = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        out.append((kind, makers[kind](), "sae1" if kind.startswith("one SAE") else ""))
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.search", description=__doc__)
    p.add_argument("--labels", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--vocabulary", type=int, default=30_000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    vocab = vocabulary(args.vocabulary)
    labels = synthetic_labels(args.labels, vocab, args.seed)
    gc.collect()
    rss_before = resident_mib()
    t0 = time.perf_counter()
    catalog = Catalog(labels)
    build_s = time.perf_counter() - t0
    gc.collect()
    index_mib = resident_mib() - rss_before
    by_kind: dict[str, list[float]] = {}
    for kind, query, sae in queries(args.queries, vocab, args.seed):
        t0 = time.perf_counter()
        catalog.search(query, sae=sae)
        by_kind.setdefault(kind, []).append((time.perf_counter() - t0) * 1000)
    report(args, build_s, index_mib, by_kind)


def resident_mib() -> float:
    """This process's resident memory now (Linux), or NaN elsewhere."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return math.nan


def report(
    args: argparse.Namespace, build_s: float, index_mib: float, by_kind: dict[str, list[float]]
) -> None:
    every = [ms for times in by_kind.values() for ms in times]
    rows = {**by_kind, "all": every}
    print(f"{args.labels:,} labels in {SAES} SAEs, {len(every)} queries (limit 10); ", end="")
    print(f"build {build_s:.2f} s; index +{index_mib:.0f} MiB resident (the labels aside)\n")
    print("| queries | n | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    for kind, times in rows.items():
        p50, p99 = percentile(times, 50), percentile(times, 99)
        print(f"| {kind} | {len(times)} | {p50:.2f} | {p99:.2f} | {max(times):.2f} |")
    summary = {
        "labels": args.labels,
        "queries": len(every),
        "build_s": round(build_s, 3),
        "index_mib": round(index_mib),
        "p50_ms": round(percentile(every, 50), 3),
        "p99_ms": round(percentile(every, 99), 3),
        "max_ms": round(max(every), 3),
        "by_kind": {
            k: {"p50_ms": round(percentile(v, 50), 3), "p99_ms": round(percentile(v, 99), 3)}
            for k, v in by_kind.items()
        },
    }
    print()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
