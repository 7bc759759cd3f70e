"""Discovery results from the engine's readings: Inspect's per-token features, Contrast's ranking.

Pure functions over host-side values (no model, no engine): the front end gathers the readings
of prefill-only requests and turns them into what a caller sees, with labels from the catalog.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from steering.discovery.catalog import FeatureMatch
from steering.requests import FeatureRef

Label = Callable[[str, int], str]  # (sae, feature) -> label, "" when none
Known = Callable[[str, int], float]  # (sae, feature) -> typical max or frequency, 0 unknown
TypicalMax = Known


def _unknown(sae: str, feature: int) -> float:
    return 0.0


@dataclass(frozen=True)
class FeatureActivation:
    sae: str
    feature: int
    activation: float
    label: str = ""
    typical_max: float = 0.0  # the feature's typical maximum activation; 0.0 when unknown


@dataclass(frozen=True)
class InspectedToken:
    token_id: int
    text: str  # the token decoded alone
    special: bool
    top: tuple[FeatureActivation, ...]  # by SAE in serving order; per SAE largest first
    features: tuple[FeatureActivation, ...]  # the named features, in the order asked


@dataclass(frozen=True)
class FeatureContrast:
    sae: str
    feature: int
    mean_a: float
    mean_b: float
    label: str = ""


def top_features(
    by_sae: Mapping[str, Sequence[tuple[int, float]]],
    top_k: int,
    label: Label,
    typical_max: TypicalMax = _unknown,
) -> tuple[FeatureActivation, ...]:
    """One position's active features per SAE, largest first (ties: lower index), at most top_k."""
    out: list[FeatureActivation] = []
    for sae, pairs in by_sae.items():
        active = sorted(((-v, i) for i, v in pairs if v > 0))[:top_k]
        out += [
            FeatureActivation(sae, i, -v, label(sae, i), typical_max(sae, i)) for v, i in active
        ]
    return tuple(out)


def named_features(
    refs: Sequence[FeatureRef],
    values: Sequence[float],
    label: Label,
    typical_max: TypicalMax = _unknown,
) -> tuple[FeatureActivation, ...]:
    return tuple(
        FeatureActivation(
            r.sae, r.feature, v, label(r.sae, r.feature), typical_max(r.sae, r.feature)
        )
        for r, v in zip(refs, values, strict=True)
    )


def contrast(
    means_a: Mapping[str, torch.Tensor],
    means_b: Mapping[str, torch.Tensor],
    top_k: int,
    label: Label,
) -> tuple[tuple[FeatureContrast, ...], tuple[FeatureContrast, ...]]:
    """The top_k features toward a (largest mean_a - mean_b > 0) and toward b (most negative).

    means_*: SAE name -> (d_sae,) mean activation over a set. Ties: lower SAE name, lower index.
    """
    names = sorted(means_a)
    if not names:  # no SAE is served: nothing separates the sets
        return (), ()
    diffs = torch.cat([(means_a[n] - means_b[n]).double() for n in names])
    offsets = [0]
    for n in names:
        offsets.append(offsets[-1] + means_a[n].numel())

    def pick(sign: float) -> tuple[FeatureContrast, ...]:
        scores = diffs * sign
        k = min(top_k, int((scores > 0).sum()))
        if k == 0:
            return ()
        # Stable sort over the concatenation (SAEs by name, features by index) keeps the ties'
        # order; topk alone does not promise it.
        order = torch.sort(-scores, stable=True).indices[:k].tolist()
        return tuple(_contrast_entry(j, names, offsets, means_a, means_b, label) for j in order)

    return pick(1.0), pick(-1.0)


def _contrast_entry(
    j: int,
    names: list[str],
    offsets: list[int],
    means_a: Mapping[str, torch.Tensor],
    means_b: Mapping[str, torch.Tensor],
    label: Label,
) -> FeatureContrast:
    s = max(i for i, start in enumerate(offsets[:-1]) if start <= j)
    name, feature = names[s], j - offsets[s]
    return FeatureContrast(
        name,
        feature,
        float(means_a[name][feature]),
        float(means_b[name][feature]),
        label(name, feature),
    )


def activation_matches(
    means: Mapping[str, torch.Tensor], limit: int, label: Label, typical_max: Known,
    frequency: Known,
) -> list[FeatureMatch]:  # fmt: skip
    """Search by meaning: the `limit` features with the largest mean activation over the query
    relative to their typical maximum (the raw mean where none is known), only those with a
    positive mean. means: SAE name -> (d_sae,). Ties: lower SAE name, lower index."""
    names = sorted(means)
    scores: list[torch.Tensor] = []
    for name in names:
        mean = means[name].double()
        tops = torch.ones_like(mean)
        for feature in torch.nonzero(mean > 0).flatten().tolist():
            top = typical_max(name, feature)
            tops[feature] = top if top > 0 else 1.0
        scores.append(torch.where(mean > 0, mean / tops, torch.zeros_like(mean)))
    if not scores:
        return []
    flat = torch.cat(scores)
    k = min(limit, int((flat > 0).sum()))
    order = torch.sort(-flat, stable=True).indices[:k].tolist()
    starts = [0]
    for s in scores:
        starts.append(starts[-1] + s.numel())
    found = []
    for j in order:
        at = max(i for i, start in enumerate(starts[:-1]) if start <= j)
        name, feature = names[at], j - starts[at]
        found.append(
            FeatureMatch(
                name, feature, label(name, feature), float(flat[j]),
                typical_max(name, feature), frequency(name, feature), "activation",
            )
        )  # fmt: skip
    return found


def merged(by_labels: Sequence[FeatureMatch], by_activation: Sequence[FeatureMatch], limit: int
) -> list[FeatureMatch]:  # fmt: skip
    """Label hits first, then activation hits not among them; each feature once, at most
    `limit` in all."""
    seen = {(m.sae, m.feature) for m in by_labels}
    rest = [m for m in by_activation if (m.sae, m.feature) not in seen]
    return [*by_labels, *rest][:limit]
