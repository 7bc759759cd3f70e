"""Log-probabilities of generated tokens, from the logits the sampler holds, on the device.

`log_softmax` of the logits at temperature 1, before any top-k/top-p cut. Only the rows that
asked pay for it, and what it computes joins the step's one device-to-host copy (`Readback`);
the front end adds the tokens' texts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from steering.steer.plan import Readback


@dataclass(frozen=True)
class Logprobs:
    """One generated token's log-probability, and the most likely tokens at its position."""

    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, logprob), most likely first


def ranked(logits: torch.Tensor) -> torch.Tensor:
    """Keys that order (R, V) logits by value, highest first, and equal values by lower token id
    first: the float's bits made order-preserving as an integer, then the id, in one int64, so
    a single `topk` gives an exact, tie-stable ranking."""
    bits = (logits.float() + 0.0).view(torch.int32).to(torch.int64)  # + 0.0: no -0.0
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # negative floats: reverse their order
    vocab = logits.shape[-1]
    ids = torch.arange(vocab, device=logits.device, dtype=torch.int64)
    return bits * 2**32 + (vocab - 1 - ids)


def queue_logprobs(
    readback: Readback, logits: torch.Tensor, chosen: torch.Tensor, rows: Sequence[int], k: int
) -> None:
    """Queue rows' log-probabilities for the step's copy: the chosen token's, and the `k` most
    likely tokens' ids and values. logits (B, V), chosen (B,) token ids on the device."""
    index = torch.tensor(rows, device=logits.device)
    scores = logits.index_select(0, index).float()  # (R, V)
    norm = torch.logsumexp(scores, dim=-1, keepdim=True)  # (R, 1)
    picked = chosen.index_select(0, index)[:, None]  # (R, 1)
    readback.add("logprobs.chosen", scores.gather(1, picked) - norm)
    k = min(k, scores.shape[-1])
    if k:
        top = ranked(scores).topk(k, dim=-1).indices  # (R, k)
        readback.add("logprobs.ids", top)
        readback.add("logprobs.values", scores.gather(1, top) - norm)


def read_logprobs(readback: Readback, tops: Sequence[int]) -> list[Logprobs]:
    """Per row queued (in order), its Logprobs with the first `tops[i]` most likely tokens."""
    chosen = readback.get("logprobs.chosen")[0]
    ids, shape = readback.get("logprobs.ids") if "logprobs.ids" in readback else ([], (0, 0))
    values = readback.get("logprobs.values")[0] if ids else []
    k = shape[-1] if ids else 0
    out = []
    for r, n in enumerate(tops):
        top = tuple((int(ids[r * k + j]), values[r * k + j]) for j in range(min(n, k)))
        out.append(Logprobs(chosen[r], top))
    return out
