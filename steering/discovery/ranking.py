"""Word scores of the label search: labels ranked by the idf weight of the query terms they hold,
computed over postings with numpy (subset bitmasks for short queries, float sums for long ones).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

Ints = npt.NDArray[np.integer[Any]]  # label ids, positions, term subsets: int32 or int64
Floats = npt.NDArray[np.float64]
EMPTY: Ints = np.zeros(0, np.int64)


class Postings(NamedTuple):
    """One term's occurrences in the searched labels, ordered by (label, position)."""

    labels: npt.NDArray[np.int32]
    positions: Ints
    df: int  # how many of the searched labels hold the term


# Word scores go by the subset of query terms a label holds, one bit per term, for queries of
# up to this many distinct known words (2**16 subsets); longer ones sum floats instead.
_MASK_TERMS = 16


def word_ranked(
    postings: dict[int, Postings], n: int, exclude: Ints, want: int
) -> tuple[Ints, Floats]:
    """The best `want` labels outside `exclude` by their share of the query's idf weight."""
    ordered = sorted(postings.values(), key=lambda p: p.df)  # rarest first
    held = [p.labels for p in ordered]  # a label holding a term twice is there twice
    idf = [math.log1p(n / p.df) for p in ordered]  # rarer words weigh more
    if len(held) > _MASK_TERMS:
        return _ranked_by_sums(held, idf, exclude, want)
    return _ranked_by_subsets(held, idf, exclude, want)


def _ranked_by_subsets(
    held: Sequence[Ints], weights: list[float], exclude: Ints, want: int
) -> tuple[Ints, Floats]:
    """Top labels by held-term subset; `held` (sorted ids per term) goes rarest first."""
    if len(held) == 1:  # every holder ties: the lowest ids win
        gids = distinct_sorted(held[0])
        gids = gids[~member(gids, exclude)][:want]
        return gids, np.ones(len(gids))
    level = _subset_scores(weights)
    found = _rare_first(held, level, exclude, want)
    if found is not None:
        return found
    gids, masks = _subset_bits(held, exclude)
    best = _top_subsets(masks, level, want)
    return gids[best], level[masks[best]]


def _rare_first(
    held: Sequence[Ints], level: Floats, exclude: Ints, want: int
) -> tuple[Ints, Floats] | None:
    """The top labels from the rarest terms' holders alone, when that is provably enough."""
    # MaxScore: labels holding none of the j rarest terms score at most the weight of the
    # others; once `want` labels beat that, the common terms' long postings are never read.
    # Worth it while the candidates' binary searches (one per term) cost less than the
    # scatter of every posting that the full pass does.
    total = sum(len(d) for d in held)
    for j in range(1, len(held)):
        if 8 * len(held) * sum(len(d) for d in held[:j]) > total:
            return None
        gids = distinct_sorted(np.sort(np.concatenate(held[:j])))
        gids = gids[~member(gids, exclude)]
        masks: Ints = np.zeros(len(gids), np.int64)
        for i, d in enumerate(held):
            masks |= member(gids, d).astype(np.int64) << i
        best = _top_subsets(masks, level, want)
        outside = level[(1 << len(held)) - (1 << j)]  # holds every term from the j-th on
        if len(best) == want and level[masks[best[-1]]] > outside:
            return gids[best], level[masks[best]]
    return None


def _subset_scores(weights: list[float]) -> Floats:
    """Share of the weight held by every subset of terms (bit i: term i), summed in one order
    for all, so that equal subsets tie and holding every term is exactly 1.0."""
    subsets = np.arange(1 << len(weights))
    level: Floats = np.zeros(len(subsets))
    for i, w in enumerate(weights):
        level += np.where((subsets >> i) & 1, w, 0.0)
    level /= level[-1]
    return level


def _subset_bits(held: Sequence[Ints], exclude: Ints) -> tuple[Ints, Ints]:
    """(every id outside `exclude` holding some term, ascending; its subset bits)."""
    lo, hi = min(int(d[0]) for d in held), max(int(d[-1]) for d in held) + 1
    bits = np.zeros(hi - lo, np.uint16)  # _MASK_TERMS bits at most
    for i, d in enumerate(held):
        bits[d - lo if lo else d] |= 1 << i  # a label listed twice gets its bit twice: no harm
    bits[exclude[(exclude >= lo) & (exclude < hi)] - lo] = 0
    present = np.flatnonzero(bits != 0)  # a bool array: several times faster
    return present + lo, bits[present]


def _top_subsets(masks: Ints, level: Floats, want: int) -> Ints:
    """Positions of the `want` best `masks` (term subsets) by their level, best first; ties to
    the lower position. Works from a histogram of the subsets, never sorting the labels."""
    counts = np.bincount(masks, minlength=len(level))
    present = np.flatnonzero(counts)
    if len(present) == 0:
        return EMPTY
    order = present[np.argsort(-level[present], kind="stable")]
    reached = int(np.searchsorted(np.cumsum(counts[order]), want))
    kth = level[order[min(reached, len(order) - 1)]]  # the want-th best score
    # One lookup per label: 2 above the want-th score, 1 level with it, 0 below.
    marks = ((level > kth).astype(np.uint8) * 2 + (level == kth))[masks]
    above = np.flatnonzero(marks == 2)
    tied = np.flatnonzero(marks == 1)[: want - len(above)]
    chosen = np.concatenate([above, tied])
    return chosen[np.lexsort((chosen, -level[masks[chosen]]))]


def _ranked_by_sums(
    held: Sequence[Ints], weights: list[float], exclude: Ints, want: int
) -> tuple[Ints, Floats]:
    """Top labels by summed weights: the slow path of very long queries."""
    held = [distinct_sorted(d) for d in held]  # each term's weight once per label
    ids = np.concatenate(held).astype(np.int64)
    gids, sums = _accumulate(ids, np.repeat(weights, [len(d) for d in held]))
    keep = ~member(gids, exclude)
    # Each label's weights add up in the order of `weights`, as sum() does: all terms give 1.0.
    gids, scores = gids[keep], np.minimum(sums[keep] / sum(weights), 1.0)
    n = len(scores)
    best = _top(scores, want, float(np.partition(scores, n - want)[n - want]) if n > want else -1.0)
    return gids[best], scores[best]


def _accumulate(ids: Ints, weights: Floats) -> tuple[Ints, Floats]:
    """(distinct ids ascending, summed weights): bincount for dense ids, a sort for few."""
    if len(ids) == 0:
        return EMPTY, np.zeros(0)
    lo, hi = int(ids.min()), int(ids.max()) + 1
    if len(ids) * 16 < hi - lo:  # few scattered ids: sorting them beats a huge bincount
        unique = distinct_sorted(np.sort(ids))
        slots = np.searchsorted(unique, ids)
        return unique, np.asarray(np.bincount(slots, weights, minlength=len(unique)), np.float64)
    sums = np.asarray(np.bincount(ids - lo, weights, minlength=hi - lo), np.float64)
    present = np.flatnonzero(sums > 0)  # weights are positive: no sum means no term
    return (present + lo).astype(np.int64), sums[present]


def _top(scores: Floats, want: int, kth: float) -> Ints:
    """Indices of the `want` best scores, given the `want`-th best; best first, ties to the
    lower index."""
    above = np.flatnonzero(scores > kth)
    tied = np.flatnonzero(scores == kth)[: want - len(above)]
    chosen = np.concatenate([above, tied])
    return chosen[np.lexsort((chosen, -scores[chosen]))]


def distinct_sorted(values: Ints) -> Ints:
    if len(values) < 2:
        return values
    keep = np.ones(len(values), bool)
    keep[1:] = values[1:] != values[:-1]
    return values[keep]


def member(values: Ints, pool: Ints) -> npt.NDArray[np.bool_]:
    """Which of the sorted `values` are in the sorted `pool`."""
    if len(pool) == 0:
        return np.zeros(len(values), bool)
    at = np.minimum(np.searchsorted(pool, values), len(pool) - 1)
    return np.asarray(pool[at] == values, np.bool_)
