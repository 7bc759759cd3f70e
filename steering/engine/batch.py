"""The running batch: which slot of the static KV cache each row holds, and its positions.

A small contract in the manner of TGI: `prefill_chunk` writes a piece of one prompt into its
slot (one forward of that row alone, at its own shape: no padding, no other row), a prompt whose
last chunk is in joins as a batch of one, `concatenate` joins batches, `filter` keeps some rows
(a row that leaves frees its slot), `decode` runs one step over the slots. Joining and leaving
move no cache: only the small per-row lists change. Knows nothing of sampling or requests.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from steering.engine.decoder import Decoder
from steering.engine.forward import PAD_ID, Forward, Steering, eager_attention, forward_logits
from steering.engine.slot_cache import SlotCache
from steering.steer.plan import Plan, RowAsk


def prefill_chunk(
    model: torch.nn.Module,
    steering: Steering,
    cache: SlotCache,
    slot: int,
    tokens: Sequence[int],
    start: int,
    plan: Plan,
    scored: tuple[int, Sequence[int]] | None = None,
) -> tuple[torch.Tensor, Forward]:
    """Feed `tokens`, a prompt's positions start..start+T-1, into `slot` (an earlier chunk
    wrote its first `start` positions), steered and read by `plan` (the row's own, one row);
    the last position's logits (1, V) and what the forward read.

    `scored` = (i, targets): also the log-probabilities of `targets`, the tokens that follow the
    chunk's positions i, i+1, ... (one each), in `Forward.scored`: log_softmax in float32 of
    only the logits needed, gathered on the device to one value per target."""
    device = steering.special_ids.device
    length = len(tokens)
    ids = torch.tensor([list(tokens)], dtype=torch.long, device=device)  # (1, T)
    positions = torch.arange(start, start + length, device=device)[None, :]
    cache.chunk(slot, start, length)
    masks = cache.chunk_masks(start, length, eager_attention(model))
    tables = steering.step_tables(plan, ids)
    keep = length - scored[0] if scored else 1
    logits = forward_logits(model, steering, tables, ids, masks, positions, cache, keep)
    picked = None
    if scored:
        targets = torch.tensor(list(scored[1]), dtype=torch.long, device=device)  # (K,)
        picked = token_logprobs(logits[0, : len(targets)], targets)
    done = Forward(plan, tables, [range(length)], [0], scored=picked)
    return logits[:, -1].float(), done


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, block: int = 128) -> torch.Tensor:
    """log_softmax(logits (K, V)) in float32 at `targets` (K,): (K,), a block of positions at a
    time so that a long chunk never holds a second float32 copy of all its logits."""
    parts = [
        torch.log_softmax(logits[i : i + block].float(), dim=-1)
        .gather(-1, targets[i : i + block, None])
        .squeeze(-1)
        for i in range(0, len(targets), block)
    ]
    return torch.cat(parts)


class Batch:
    """Rows decoding together. Row i of `keys`, `asks`, `slots` and `positions` is one request."""

    def __init__(
        self,
        keys: list[int],
        asks: list[RowAsk],
        slots: list[int],
        positions: list[int],  # position id of the next token each row feeds (= tokens held)
    ) -> None:
        self.keys = keys
        self.asks = asks
        self.slots = slots
        self.positions = positions
        self.steered_rows = sum(1 for ask in asks if ask.edits)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def attention_mask(self) -> torch.Tensor:
        """(B, L): 1 where a row's slot holds a position, L the most any row holds."""
        length = max(self.positions)
        return torch.tensor([[1] * p + [0] * (length - p) for p in self.positions])

    def decode(self, decoder: Decoder, tokens: Sequence[int]) -> tuple[torch.Tensor, Forward]:
        """Feed each row its last sampled token; the logits (B, V) of the next one, and what the
        forward read. The forward runs over slots 0..n-1 (row b of it is slot b); other
        slots among them feed padding at their parked position (see SlotCache), never read."""
        device = decoder.cache.shape.device
        n = max(self.slots) + 1
        fed, at = [PAD_ID] * n, decoder.cache.parked[:n]
        for slot, token, position in zip(self.slots, tokens, self.positions, strict=True):
            fed[slot], at[slot] = token, position
        ids = torch.tensor(fed, dtype=torch.long, device=device)[:, None]  # (n, 1)
        positions = torch.tensor(at, dtype=torch.long, device=device)  # (n,)
        logits, tables = decoder(ids, positions, max(self.positions) + 1)
        self.positions = [p + 1 for p in self.positions]
        rows = torch.tensor(self.slots, dtype=torch.long, device=device)
        slots = decoder.steering.slots
        done = Forward(slots, tables, [range(1)] * len(self.keys), list(self.slots))
        return logits.index_select(0, rows), done

    @classmethod
    def concatenate(cls, batches: Sequence[Batch]) -> Batch:
        """One batch of all rows; their slots stay where they are."""
        if len(batches) == 1:
            return batches[0]
        return cls(
            keys=[k for b in batches for k in b.keys],
            asks=[a for b in batches for a in b.asks],
            slots=[s for b in batches for s in b.slots],
            positions=[p for b in batches for p in b.positions],
        )

    def filter(self, keep: set[int]) -> Batch | None:
        """The rows whose key is in `keep` (None if none is); the others' slots are free."""
        rows = [i for i, key in enumerate(self.keys) if key in keep]
        if not rows:
            return None
        if len(rows) == len(self.keys):
            return self
        return Batch(
            keys=[self.keys[i] for i in rows],
            asks=[self.asks[i] for i in rows],
            slots=[self.slots[i] for i in rows],
            positions=[self.positions[i] for i in rows],
        )
