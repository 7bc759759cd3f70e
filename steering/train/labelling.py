"""Labels for the demo SAE's features, in Neuronpedia's explanation-export shape.

A live feature's label is the words it fires most on in held-out text and, weighted less, the
words just before them; the entry also carries its typical maximum activation, how often it
fires and three of its top contexts.
"""

from __future__ import annotations

from typing import Any

import torch

from steering.sae.jumprelu import JumpReLUSAE


@torch.no_grad()
def label_features(
    layer: int, tokenizer: Any, sae: JumpReLUSAE, held: torch.Tensor, acts: torch.Tensor,
    top: int = 24,
) -> list[dict[str, Any]]:  # fmt: skip
    """Neuronpedia-shaped explanations: per live feature, its most activating words on held-out
    text as the label, its typical maximum activation, and a few of its top contexts."""
    best = torch.full((top, sae.d_sae), -1.0)
    where = torch.zeros((top, sae.d_sae), dtype=torch.long)
    fired = torch.zeros(sae.d_sae, dtype=torch.long)
    for start, chunk in zip(range(0, len(acts), 4096), torch.split(acts, 4096), strict=True):
        f = sae.encode(chunk.float())
        fired += (f > 0).sum(dim=0)
        rows = torch.arange(start, start + len(chunk))[:, None].expand_as(f)
        best, index = torch.cat([best, f]).topk(top, dim=0)
        where = torch.cat([where, rows]).gather(0, index)
    per_window = held.shape[1] - 1
    explanations = []
    for feature in range(sae.d_sae):
        live = best[:, feature] > 0
        if not live.any():
            continue
        spots = where[live, feature].tolist()
        values = best[live, feature].tolist()
        before = [_before(held, spot, per_window) for spot in spots]
        words = label_words(tokenizer, before, values)
        contexts = [context_text(tokenizer, ids) for ids in before[:3]]
        explanations.append({
            "modelId": "gemma-3-270m",
            "layer": f"{layer}-steering-demo-res-{sae.d_sae}",
            "index": str(feature),
            "description": ", ".join(words) or "(punctuation)",
            "explanationModelName": "top-activating-tokens",
            "typeName": "oai_token-act-pair",
            "maxActivation": round(float(torch.tensor(values).median()), 2),
            "frequency": round(fired[feature].item() / len(acts), 6),
            "topContexts": contexts,
        })  # fmt: skip
    return explanations


# Words that say nothing of a topic, left out of labels.
_STOPWORD_TEXT = """
the and for that with this from have has had was were are but not you your his her its
they them their our who whom which what when where why how all any can could would should
will shall may might must been being into upon than then there these those such some one
him she himself itself very more most other only also out about over under
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
CONTEXT_WEIGHT = 0.25  # a word before the token counts a quarter of the token itself


def _before(held: torch.Tensor, spot: int, per_window: int) -> list[int]:
    """The held-out window's tokens (BOS left out) up to and including the one at `spot`."""
    window, position = divmod(spot, per_window)
    return [int(t) for t in held[window, 1 : position + 2].tolist()]


def label_words(
    tokenizer: Any, before: list[list[int]], values: list[float], limit: int = 4
) -> list[str]:
    """Up to `limit` words for a feature: the tokens it fires most on (each spot given as the
    tokens of its text up to and including it, with the activation there), and (weighted
    less) the 8 words just before them, by summed activation; no stopwords."""
    weight: dict[str, float] = {}
    for ids, value in zip(before, values, strict=True):
        start = max(0, len(ids) - 9)
        for at in range(start, len(ids)):
            word = tokenizer.decode([int(ids[at])]).strip().casefold()
            if len(word) < 3 or not word.isalpha() or word in STOPWORDS:
                continue
            share = value if at == len(ids) - 1 else CONTEXT_WEIGHT * value
            weight[word] = weight.get(word, 0.0) + share
    return sorted(weight, key=lambda w: -weight[w])[:limit]


def context_text(tokenizer: Any, before: list[int]) -> str:
    """The text just before a spot (its last 11 tokens), the spot's token in [[ ]]."""
    text = tokenizer.decode(before[max(0, len(before) - 12) : -1])
    return f"{text}[[{tokenizer.decode(before[-1:])}]]"
