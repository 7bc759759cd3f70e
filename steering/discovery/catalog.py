"""Feature-label catalog: a ranked word search over the labels of each SAE's features.

The labels come from `steering.discovery.labels`; knows nothing about models, SAE weights or
the server.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from steering.discovery.ranking import (
    EMPTY,
    Floats,
    Ints,
    Postings,
    distinct_sorted,
    member,
    word_ranked,
)
from steering.discovery.words import stem, terms, words
from steering.errors import InvalidRequestError

DEFAULT_LIMIT = 10

# Scores: the fraction of the query's idf weight a label holds (0, 1], plus one for holding the
# query as a phrase, plus one more for being the query: every tier outranks the one below.
# Phrase labels rank among themselves by coverage (the share of their words that are query
# words: "sea waves" before "ships, harbours and the sea" for "sea"), then by where a query word
# first comes in them; their score is PHRASE_SCORE + COVERAGE_WEIGHT * coverage.
PHRASE_SCORE = 2.0
COVERAGE_WEIGHT = 0.5
EXACT_SCORE = 3.0


# ---------------------------------------------------------------------------- catalog


@dataclass(frozen=True)
class FeatureMatch:
    """A feature that matches a search; `score` as `Catalog.search` describes (or, found by
    activation, its mean activation over the query relative to its typical maximum);
    `typical_max` and `frequency` from the label file, 0 where unknown."""

    sae: str
    feature: int
    label: str
    score: float
    typical_max: float = 0.0
    frequency: float = 0.0
    found_by: str = "labels"  # or "activation": the model read the query (FrontEnd.search)


class Catalog:
    """Feature labels of several SAEs, and a search over them through an index built once.

    Labels get ids ordered by (SAE name, feature), so one SAE is a contiguous id range and the
    tie order of search results is the id order. `typical_max`, `frequency` and `top_contexts`
    (per SAE, per feature, only where known) may cover features without a label.
    """

    def __init__(
        self,
        labels: Mapping[str, Mapping[int, str]],
        *,
        typical_max: Mapping[str, Mapping[int, float]] | None = None,
        frequency: Mapping[str, Mapping[int, float]] | None = None,
        top_contexts: Mapping[str, Mapping[int, tuple[str, ...]]] | None = None,
    ) -> None:
        self._typical_max = {sae: dict(m) for sae, m in (typical_max or {}).items()}
        self._frequency = {sae: dict(m) for sae, m in (frequency or {}).items()}
        self._top_contexts = {sae: dict(m) for sae, m in (top_contexts or {}).items()}
        self._saes = tuple(labels)
        self._names = sorted(labels)
        self._ranges: dict[str, tuple[int, int]] = {}
        features: list[Ints] = [np.zeros(0, np.int64)]
        self._texts: list[str] = []
        self._longest: dict[str, int] = {}
        for name in self._names:
            feats, texts = _sorted_labels(labels[name])
            self._longest[name] = max((_utf8_bytes(text) for text in texts), default=0)
            self._ranges[name] = (len(self._texts), len(self._texts) + len(texts))
            features.append(feats)
            self._texts += texts  # the caller's strings, not copies
        self._sae_starts = np.array([self._ranges[n][0] for n in self._names], np.int64)
        self._features = np.concatenate(features)
        self._index = _Index(self._texts)

    @property
    def saes(self) -> tuple[str, ...]:
        """The SAE names, in the order given at construction."""
        return self._saes

    def count(self, sae: str) -> int:
        """How many features of that SAE carry a label (0 for an unknown SAE)."""
        lo, hi = self._ranges.get(sae, (0, 0))
        return hi - lo

    def longest_label_bytes(self, sae: str) -> int:
        """The UTF-8 size of that SAE's longest label (0 for none): what bounds a reply."""
        return self._longest.get(sae, 0)

    def label(self, sae: str, feature: int) -> str:
        """The feature's label; "" when it has none or the SAE is unknown."""
        lo, hi = self._ranges.get(sae, (0, 0))
        if lo == hi or not -(2**63) <= feature < 2**63:  # beyond int64: surely no feature
            return ""
        feats = self._features[lo:hi]
        i = int(np.searchsorted(feats, feature))
        return self._texts[lo + i] if i < len(feats) and feats[i] == feature else ""

    def typical_max(self, sae: str, feature: int) -> float:
        """The feature's typical maximum activation; 0.0 when unknown."""
        return self._typical_max.get(sae, {}).get(feature, 0.0)

    def frequency(self, sae: str, feature: int) -> float:
        """The share of positions where the feature fires; 0.0 when unknown."""
        return self._frequency.get(sae, {}).get(feature, 0.0)

    def top_contexts(self, sae: str, feature: int) -> tuple[str, ...]:
        """Texts where the feature fires most, as its label file gives them; () when unknown."""
        return self._top_contexts.get(sae, {}).get(feature, ())

    def search(self, query: str, *, sae: str = "", limit: int = 0) -> list[FeatureMatch]:
        """Labels holding any query word, best first; `sae` "" searches every SAE.

        A label equal to the query comes first (score 3), then labels holding it as a phrase
        (score 2 + coverage / 2, coverage being the share of the label's words that are query
        words; equal coverage: the label whose first query word comes earlier first), then
        labels holding some of its words, by their share of the query's idf weight
        (0 < score <= 1). Ties go to the lower SAE name, then the lower feature.
        Raises KeyError for an unknown `sae`.
        """
        if limit < 0:
            raise InvalidRequestError("limit", f"must be 0 or more, got {limit}")
        lo, hi = self._ranges[sae] if sae else (0, len(self._texts))
        query_terms = [self._index.term_ids.get(t, -1) for t in terms(query)]
        postings = {t: self._index.postings(t, lo, hi) for t in set(query_terms) if t >= 0}
        postings = {t: p for t, p in postings.items() if p.df}
        if not postings:
            return []
        ranked = self._rank(query_terms, postings, (lo, hi), limit or DEFAULT_LIMIT)
        return self._matches([g for g, _ in ranked], [s for _, s in ranked])

    def _rank(
        self, query: list[int], postings: dict[int, Postings], span: tuple[int, int], limit: int
    ) -> list[tuple[int, float]]:
        """(label id, score) of the best `limit` labels, best first."""
        exact, phrase = EMPTY, EMPTY
        # A word absent from the searched labels rules out every phrase (and exact) match.
        if all(t in postings for t in query):
            exact = self._index.exact(query, *span)
            if len(exact) < limit:  # every phrase label: they rank among themselves
                phrase = self._index.phrase(query, postings, enough=len(self._texts) + 1)
        phrase_only = phrase[~member(phrase, exact)]
        ranked = [(g, EXACT_SCORE) for g in exact[:limit].tolist()]
        if len(ranked) < limit and len(phrase_only):
            order, coverage = self._index.by_coverage(phrase_only, postings)
            best = order[: limit - len(ranked)]
            scores = PHRASE_SCORE + COVERAGE_WEIGHT * coverage[best]
            ranked += zip(phrase_only[best].tolist(), scores.tolist(), strict=True)
        if len(ranked) < limit:  # then word-only labels are needed
            n = span[1] - span[0]
            gids, scores = word_ranked(postings, n, phrase, limit - len(ranked))
            ranked += zip(gids.tolist(), scores.tolist(), strict=True)
        return ranked

    def _matches(self, gids: list[int], scores: list[float]) -> list[FeatureMatch]:
        saes = np.searchsorted(self._sae_starts, gids, side="right") - 1
        features = self._features[gids].tolist() if gids else []
        matches = []
        for sae_id, feature, gid, score in zip(saes.tolist(), features, gids, scores, strict=True):
            sae = self._names[sae_id]
            top, share = self.typical_max(sae, feature), self.frequency(sae, feature)
            matches.append(FeatureMatch(sae, feature, self._texts[gid], score, top, share))
        return matches


# ---------------------------------------------------------------------------- the index

_HASH_BASE = 0x9E3779B97F4A7C15  # odd, so its powers modulo 2**64 never vanish
_FIRST_BLOCK = 4096  # postings read by the first step of a phrase scan; each step doubles


class _Index:
    """Labels 0..n-1 as terms: every label's terms in a row, postings by term, and a table of
    whole-label hashes for exact matches."""

    def __init__(self, texts: Sequence[str]) -> None:
        word_ids, self.lengths, vocabulary = _tokenize(texts)
        self.term_ids, term_of_word = _stem_vocabulary(vocabulary)
        self.tokens = term_of_word[word_ids]  # every label's terms, label after label
        self.starts = np.zeros(len(texts) + 1, np.int64)
        np.cumsum(self.lengths, out=self.starts[1:])
        positions = np.arange(len(self.tokens)) - np.repeat(self.starts[:-1], self.lengths)
        n_terms = len(self.term_ids)
        self.offsets, self.labels, self.positions, self.df = _invert(
            self.tokens, self.lengths, positions, n_terms
        )
        self.powers = _hash_powers(int(self.lengths.max()) if len(texts) else 0)
        self.hashes, self.hashed = _label_hashes(self.tokens, positions, self.starts, self.powers)

    def postings(self, term: int, lo: int, hi: int) -> Postings:
        a, b = int(self.offsets[term]), int(self.offsets[term + 1])
        labels, positions = self.labels[a:b], self.positions[a:b]
        if lo == 0 and hi == len(self.lengths):
            return Postings(labels, positions, int(self.df[term]))
        i, j = np.searchsorted(labels, [lo, hi])  # one SAE: its contiguous id range
        labels, positions = labels[i:j], positions[i:j]
        return Postings(labels, positions, len(distinct_sorted(labels)))

    def exact(self, query: list[int], lo: int, hi: int) -> Ints:
        """Sorted ids in [lo, hi) of the labels whose terms are exactly `query`."""
        if len(query) >= len(self.powers):
            return EMPTY
        powers = self.powers[: len(query)].tolist()
        h = sum((t + 1) * p for t, p in zip(query, powers, strict=True)) % 2**64  # as numpy wraps
        i = int(np.searchsorted(self.hashes, np.uint64(h), side="left"))
        j = int(np.searchsorted(self.hashes, np.uint64(h), side="right"))
        ids: Ints = np.sort(self.hashed[i:j])
        ids = ids[(ids >= lo) & (ids < hi) & (self.lengths[ids] == len(query))]
        # A hash can collide: compare the terms themselves.
        rows = self.tokens[self.starts[ids][:, None] + np.arange(len(query))]
        same = np.asarray(np.all(rows == np.array(query), axis=1), np.bool_)
        return ids[same]

    def by_coverage(self, ids: Ints, postings: dict[int, Postings]) -> tuple[Ints, Floats]:
        """(positions in the sorted `ids` from best to worst, each label's coverage): by the share
        of a label's words that are query words (more first), then the position of its first
        query word (earlier first), then id."""
        held = np.zeros(len(ids), np.int64)
        first = np.full(len(ids), np.iinfo(np.int64).max)
        for labels, positions, _ in postings.values():
            left = np.searchsorted(labels, ids, side="left")
            right = np.searchsorted(labels, ids, side="right")
            held += right - left
            has = right > left  # postings run in (label, position) order: left is the first
            at = np.minimum(left, len(positions) - 1)
            first = np.where(has, np.minimum(first, positions[at].astype(np.int64)), first)
        coverage: Floats = held / np.maximum(self.lengths[ids], 1)
        return np.lexsort((ids, first, -coverage)), coverage

    def phrase(self, query: list[int], postings: dict[int, Postings], enough: int) -> Ints:
        """Sorted ids of the labels holding `query` as a phrase: all of them, or at least the
        lowest `enough` (every lower id holding it is then among them)."""
        # Anchor on the rarest term's occurrences; read in blocks of whole labels, in id order,
        # and stop once `enough` labels hold the phrase.
        anchor = min(range(len(query)), key=lambda i: len(postings[query[i]].labels))
        labels, positions, _ = postings[query[anchor]]
        found: list[Ints] = []
        start, block, count = 0, _FIRST_BLOCK, 0
        while start < len(labels) and count < enough:
            stop = min(start + block, len(labels))
            stop = int(np.searchsorted(labels, labels[stop - 1], side="right"))
            hits = self._phrase_at(query, anchor, labels[start:stop], positions[start:stop])
            found.append(hits)
            start, block, count = stop, 2 * block, count + len(hits)
        return np.concatenate(found) if found else EMPTY

    def _phrase_at(self, query: list[int], anchor: int, labels: Ints, positions: Ints) -> Ints:
        """Distinct labels (sorted) where the anchor occurrence starts the whole phrase."""
        # Read the neighbouring terms straight from the token rows: a gather per query word,
        # no intersection of postings.
        begin = positions.astype(np.int64) - anchor
        fits = (begin >= 0) & (begin + len(query) <= self.lengths[labels])
        labels, at = labels[fits], self.starts[labels[fits]] + begin[fits]
        for i, term in enumerate(query):
            if i != anchor:
                same = self.tokens[at + i] == term
                labels, at = labels[same], at[same]
        return distinct_sorted(labels)


def _utf8_bytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _sorted_labels(labels: Mapping[int, str]) -> tuple[Ints, list[str]]:
    """One SAE's (features ascending, their labels)."""
    features = np.fromiter(labels.keys(), np.int64, len(labels))
    texts = list(labels.values())
    if len(features) > 1 and not bool(np.all(features[1:] > features[:-1])):
        order = np.argsort(features, kind="stable")
        features, texts = features[order], [texts[i] for i in order.tolist()]
    return features, texts


class _Interner(dict[str, int]):
    """word -> dense id, handing out the next id to a word seen for the first time."""

    def __missing__(self, key: str) -> int:
        value = self[key] = len(self)
        return value


# Labels are tokenized a chunk at a time, joined by NUL (no word character, so no word spans
# it): one regex call and one C-level map per chunk instead of per label.
_WORD_OR_BREAK = re.compile(r"[^\W_]+|\x00")
_CHUNK = 4096


def _tokenize(texts: Sequence[str]) -> tuple[npt.NDArray[np.int32], Ints, list[str]]:
    """(word id of every token, label after label; words per label; the words by id)."""
    interner = _Interner()
    intern = interner.__getitem__
    intern("\x00")  # id 0: the break after each label
    ids = array("i")  # C ints, not a list of Python ints: a tenth of the memory
    for first in range(0, len(texts), _CHUNK):
        chunk = texts[first : first + _CHUNK]
        found = _WORD_OR_BREAK.findall("\x00".join(chunk).casefold())
        if found.count("\x00") != len(chunk) - 1:  # some label holds a NUL of its own
            found = [w for text in chunk for w in [*words(text), "\x00"]][:-1]
        ids.extend(map(intern, found))
        ids.append(0)
    tokens = np.array(ids, np.int32)
    breaks = np.flatnonzero(tokens == 0)
    lengths = np.diff(breaks, prepend=-1) - 1
    return tokens[tokens != 0] - 1, lengths.astype(np.int64), list(interner)[1:]


def _stem_vocabulary(vocabulary: list[str]) -> tuple[dict[str, int], npt.NDArray[np.int32]]:
    """(stem -> term id, term id of each word id): each distinct word is stemmed once."""
    term_ids: dict[str, int] = {}
    of_word = [term_ids.setdefault(stem(w), len(term_ids)) for w in vocabulary]
    return term_ids, np.array(of_word, np.int32)


def _invert(
    tokens: npt.NDArray[np.int32], lengths: Ints, positions: Ints, n_terms: int
) -> tuple[Ints, npt.NDArray[np.int32], Ints, Ints]:
    """(offsets by term, label and position of each posting, labels holding each term)."""
    # A stable sort by term keeps each term's postings in (label, position) order.
    order = np.argsort(tokens, kind="stable")
    terms = tokens[order]
    labels = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)[order]
    longest = int(lengths.max()) if len(lengths) else 0
    pos_type = np.uint16 if longest <= np.iinfo(np.uint16).max else np.int32
    offsets = np.zeros(n_terms + 1, np.int64)
    np.cumsum(np.bincount(tokens, minlength=n_terms), out=offsets[1:])
    first = np.ones(len(terms), bool)  # a term's first posting in each label
    first[1:] = (labels[1:] != labels[:-1]) | (terms[1:] != terms[:-1])
    df = np.bincount(terms[first], minlength=n_terms)
    return offsets, labels, positions[order].astype(pos_type), df


def _hash_powers(longest: int) -> npt.NDArray[np.uint64]:
    powers = [1]
    for _ in range(longest):
        powers.append(powers[-1] * _HASH_BASE % 2**64)
    return np.array(powers, np.uint64)


def _label_hashes(
    tokens: Ints, positions: Ints, starts: Ints, powers: npt.NDArray[np.uint64]
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int32]]:
    """(sorted hashes of the labels' term rows, label id of each); labels without words left
    out. A row hashes to sum((term + 1) * base**position) modulo 2**64."""
    values = (tokens.astype(np.uint64) + np.uint64(1)) * powers[positions]  # wraps: modulo 2**64
    has_words = np.flatnonzero(starts[1:] > starts[:-1])
    if len(has_words) == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int32)
    hashes = np.add.reduceat(values, starts[has_words])
    order = np.argsort(hashes, kind="stable")
    return hashes[order], has_words[order].astype(np.int32)
