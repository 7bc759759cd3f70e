"""`steering-features`' core: any SAE's features described from texts read through the model.

Per feature that fires: its typical maximum (`maxActApprox`: the 99.9th percentile of its
positive activations at steerable positions, the maximum when it has fewer than 1,000), its
firing frequency (`frac_nonzero`: the share of steerable positions where it fires), a label
from its top tokens and its top contexts (`steering.train.labelling`'s words and contexts), in
the Neuronpedia shape that `--labels` reads.

`FeatureStats` accumulates batch by batch and is saved whole between batches, so a run that
stops continues from the last batch saved (`describe_features`' `state`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from steering.models.gemma import special_token_ids
from steering.sae.jumprelu import JumpReLUSAE
from steering.train.harvest import layer_outputs
from steering.train.labelling import context_text, label_words
from steering.train.trainer import save_atomically

PERCENTILE = 99.9  # maxActApprox
MIN_FOR_PERCENTILE = 1000  # fewer positive activations: the maximum
TOP_SPOTS = 24  # spots per feature that its label is made from (as the demo's labelling)
CONTEXTS = 3  # top contexts written per feature


@dataclass
class FeatureStats:
    """What has been read so far: per feature the positive activations counted, the largest
    ones kept (enough for the percentile), and the top spots as (text, position)."""

    d_sae: int
    expected: int = 0  # steerable positions of all the texts: bounds what the percentile needs
    texts_done: int = 0
    positions: int = 0  # steerable positions read
    fired: torch.Tensor = field(init=False)  # (d_sae,) long
    largest: torch.Tensor = field(init=False)  # (K, d_sae), descending; 0 where none
    top_values: torch.Tensor = field(init=False)  # (TOP_SPOTS, d_sae)
    top_spots: torch.Tensor = field(init=False)  # (TOP_SPOTS, d_sae) long: text * 2**20 + pos
    ids: list[list[int]] = field(default_factory=list)  # each text's token ids, as read

    def __post_init__(self) -> None:
        self.fired = torch.zeros(self.d_sae, dtype=torch.long)
        # The percentile needs the top floor(0.001 * (n - 1)) + 2 positives of n <= expected.
        keep = math.floor((100 - PERCENTILE) / 100 * self.expected) + 2
        self.largest = torch.zeros(keep, self.d_sae)
        self.top_values = torch.full((TOP_SPOTS, self.d_sae), -1.0)
        self.top_spots = torch.zeros((TOP_SPOTS, self.d_sae), dtype=torch.long)

    def add(self, f: torch.Tensor, spots: torch.Tensor) -> None:
        """f: (N, d_sae) at N steerable positions; spots: (N,) their text * 2**20 + position."""
        self.positions += len(f)
        self.fired += (f > 0).sum(dim=0)
        merged = torch.cat([self.largest, f.clamp(min=0)])
        self.largest = merged.topk(len(self.largest), dim=0).values
        values = torch.cat([self.top_values, torch.where(f > 0, f, -1.0)])
        where = torch.cat([self.top_spots, spots[:, None].expand_as(f)])
        self.top_values, index = values.topk(TOP_SPOTS, dim=0)
        self.top_spots = where.gather(0, index)

    def typical_max(self, feature: int) -> float:
        """The 99.9th percentile (linear interpolation, as numpy's) of the feature's positive
        activations; their maximum when fewer than MIN_FOR_PERCENTILE."""
        n = int(self.fired[feature])
        top = self.largest[:, feature]
        if n < MIN_FOR_PERCENTILE:
            return float(top[0])
        rank = (n - 1) * (1 - PERCENTILE / 100)  # from the top, in sorted-descending order
        low = math.floor(rank)
        frac = rank - low
        return float(top[low] + (top[low + 1] - top[low]) * frac) if frac else float(top[low])


SPOT = 1 << 20  # positions per text in a spot's code


def describe_features(
    model: Any,
    tokenizer: Any,
    sae: JumpReLUSAE,
    layer: int,
    texts: Sequence[str],
    *,
    batch: int = 8,
    state: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FeatureStats:
    """Reads `texts` (each tokenized as a prompt, with BOS) through the model `batch` at a time
    and accumulates the SAE's features at every steerable position. With `state`, the stats
    are saved there after each batch and a matching saved state is continued from."""
    special = torch.tensor(special_token_ids(tokenizer), dtype=torch.long)
    key = _key(sae, layer, texts)
    stats = _resume(state, key) if state is not None else None
    if stats is None:
        skipped = set(special.tolist())
        expected = sum(
            sum(1 for t in tokenizer(text).input_ids if t not in skipped) for text in texts
        )
        stats = FeatureStats(sae.d_sae, expected)
    device = next(model.parameters()).device
    while stats.texts_done < len(texts):
        first = stats.texts_done
        chunk = [tokenizer(t).input_ids for t in texts[first : first + batch]]
        width = max(len(ids) for ids in chunk)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        rows = torch.tensor([ids + [pad] * (width - len(ids)) for ids in chunk], device=device)
        # Right padding: no real position attends to a pad (causal), so none changes.
        (x,) = list(layer_outputs(model, layer, rows, batch=len(rows)))  # BOS column left out
        x = x.reshape(len(rows), width - 1, -1)
        real = torch.arange(width - 1)[None] < torch.tensor([len(i) - 1 for i in chunk])[:, None]
        steerable = real & ~torch.isin(rows[:, 1:].cpu(), special)
        text_of, position = torch.nonzero(steerable, as_tuple=True)
        f = sae.encode(x[steerable.to(x.device)].to(sae.device)).float().cpu()
        stats.add(f, (first + text_of) * SPOT + position + 1)
        stats.ids += [list(map(int, ids)) for ids in chunk]
        stats.texts_done += len(chunk)
        if state is not None:
            save_atomically({"key": key, "stats": stats.__dict__}, state)
        if progress is not None:
            progress(stats.texts_done, len(texts))
    return stats


def _key(sae: JumpReLUSAE, layer: int, texts: Sequence[str]) -> str:
    """What a saved state must have been made from: the SAE, the layer, the texts."""
    digest = hashlib.sha256(f"{layer}\0{sae.d_sae}\0".encode())
    digest.update(sae.W_enc.float().cpu().numpy().tobytes()[: 1 << 20])
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()


def _resume(state: Path, key: str) -> FeatureStats | None:
    if not state.is_file():
        return None
    saved = torch.load(state, weights_only=False)
    if saved.get("key") != key:
        return None  # made from other texts or another SAE: start over
    stats = FeatureStats(int(saved["stats"]["d_sae"]), int(saved["stats"]["expected"]))
    stats.__dict__.update(saved["stats"])
    return stats


def explanations(
    stats: FeatureStats, tokenizer: Any, *, model_id: str, layer: str
) -> list[dict[str, Any]]:
    """The Neuronpedia-shaped entries of every feature that fired, by index."""
    out = []
    for feature in torch.nonzero(stats.fired > 0).flatten().tolist():
        live = stats.top_values[:, feature] > 0
        values = stats.top_values[live, feature].tolist()
        before = [
            stats.ids[spot // SPOT][1 : spot % SPOT + 1]  # BOS left out, as in the demo's
            for spot in stats.top_spots[live, feature].tolist()
        ]
        words = label_words(tokenizer, before, values)
        out.append({
            "modelId": model_id,
            "layer": layer,
            "index": str(feature),
            "description": ", ".join(words) or "(punctuation)",
            "explanationModelName": "top-activating-tokens",
            "typeName": "oai_token-act-pair",
            "maxActApprox": round(stats.typical_max(feature), 4),
            "frac_nonzero": round(int(stats.fired[feature]) / stats.positions, 6),
            "topContexts": [context_text(tokenizer, ids) for ids in before[:CONTEXTS]],
        })  # fmt: skip
    return out
