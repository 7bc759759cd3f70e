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


def queue_logprobs(
    readback: Readback, logits: torch.Tensor, chosen: torch.Tensor, rows: Sequence[int], k: int
) -> None:
    """Queue rows' log-probabilities for the step's copy: the chosen token's, and the ids and
    values of the 2k most likely tokens (`read_logprobs` orders them and keeps k). logits
    (B, V), chosen (B,) token ids, on the device."""
    scores = logits.float()
    if len(rows) < logits.shape[0]:
        index = torch.tensor(rows, device=logits.device)
        scores, chosen = scores.index_select(0, index), chosen.index_select(0, index)
    norm = torch.logsumexp(scores, dim=-1, keepdim=True)  # (R, 1)
    readback.add("logprobs.chosen", scores.gather(1, chosen[:, None]) - norm)
    # 2k: `topk` breaks ties in no set order, so the host sorts ties by id; with 2k, every
    # token tied at the k-th value is in hand unless more than k tokens tie there.
    wide = min(2 * k, scores.shape[-1])
    if wide:
        top = scores.topk(wide, dim=-1)
        readback.add("logprobs.ids", top.indices)  # (R, 2k)
        readback.add("logprobs.values", top.values - norm)


def read_logprobs(readback: Readback, tops: Sequence[int]) -> list[Logprobs]:
    """Per row queued (in order), its Logprobs with the first `tops[i]` most likely tokens."""
    chosen = readback.get("logprobs.chosen")[0]
    ids, shape = readback.get("logprobs.ids") if "logprobs.ids" in readback else ([], (0, 0))
    values = readback.get("logprobs.values")[0] if ids else []
    wide = shape[-1] if ids else 0
    out = []
    for r, n in enumerate(tops):
        row = range(r * wide, (r + 1) * wide)
        ranked = sorted((-values[i], int(ids[i])) for i in row)  # most likely, then lower id
        out.append(Logprobs(chosen[r], tuple((t, -v) for v, t in ranked[:n])))
    return out
