"""The static slot KV cache: per layer, one preallocated buffer of `slots` rows, and the masks.

A request holds one slot from admission to leaving; its prompt's chunks write its positions into
the slot, each decode step writes one position per slot in place, and nothing else ever moves,
so joining or leaving copies no other row's cache and every shape is known at startup. Full
attention layers keep `context` positions per slot; sliding-window layers keep only their
window, as a ring (position p at p % window). A chunk attends over what its slot holds of the
earlier chunks (in a ring, read before the chunk overwrites it) and its own keys, so a prompt
longer than the window leaves only its last `window` positions in the ring. Knows nothing of
requests, sampling or steering.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import Cache

FULL, SLIDING = "full_attention", "sliding_attention"


@dataclass(frozen=True)
class CacheShape:
    """What a slot cache holds, read from a model's text config."""

    slots: int
    context: int  # positions a slot holds in a full attention layer
    layer_types: tuple[str, ...]  # per layer: FULL or SLIDING
    window: int | None  # the sliding window (keys with query - key < window), if any
    kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device

    @classmethod
    def of(cls, model: Any, slots: int, context: int) -> CacheShape:
        config = model.config.get_text_config()
        n_layers = int(config.num_hidden_layers)
        types = tuple(getattr(config, "layer_types", None) or [FULL] * n_layers)[:n_layers]
        window = getattr(config, "sliding_window", None) if SLIDING in types else None
        heads = int(config.num_attention_heads)
        parameter = next(model.parameters())
        return cls(
            slots=slots,
            context=context,
            layer_types=types,
            window=int(window) if window else None,
            kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
            head_dim=int(getattr(config, "head_dim", None) or config.hidden_size // heads),
            dtype=parameter.dtype,
            device=parameter.device,
        )

    @property
    def ring(self) -> int | None:
        """The ring length of sliding layers; None where the window saves nothing."""
        return self.window if self.window is not None and self.window < self.context else None

    def length(self, layer_type: str) -> int:
        """Positions a slot holds in a layer of this type."""
        ring = self.ring
        return ring if layer_type == SLIDING and ring is not None else self.context

    @property
    def nbytes(self) -> int:
        """The whole cache, keys and values of every layer."""
        per_position = 2 * self.kv_heads * self.head_dim * self.dtype.itemsize * self.slots
        return sum(self.length(t) for t in self.layer_types) * per_position


@dataclass(frozen=True, eq=False)
class _Writes:
    """Where a forward's keys go: source (row, token) -> destination (slot, position)."""

    rows: torch.Tensor  # (N,) long
    tokens: torch.Tensor  # (N,) long
    slots: torch.Tensor  # (N,) long
    positions: torch.Tensor  # (N,) long: in the layer's buffer (ring positions for a ring)


class SlotCache(Cache):  # type: ignore[misc]  # transformers is untyped
    """The model's cache for every forward: `chunk(...)` or `decode(...)` first says where the
    forward's rows live, then each layer's `update` writes its keys in place."""

    def __init__(self, shape: CacheShape) -> None:
        super().__init__(layers=[])
        self.shape = shape
        size = (shape.slots, shape.kv_heads)
        self.keys = [
            torch.zeros(
                *size, shape.length(t), shape.head_dim, dtype=shape.dtype, device=shape.device
            )
            for t in shape.layer_types
        ]
        self.values = [torch.zeros_like(k) for k in self.keys]
        self._writes: dict[str, _Writes] = {}
        self._read: dict[str, int] | None = None  # decode: key length read per layer type
        self._chunk: tuple[int, int] | None = None  # a chunk: (its slot, its first position)
        # Per slot, the position a decode step over it writes while the slot is not decoding: 0
        # for a free slot, the next position of a prompt being prefilled (which its next chunk
        # overwrites, and which no key its queries read lies at in a ring).
        self.parked = [0] * shape.slots

    def chunk(self, slot: int, start: int, length: int) -> None:
        """The next forward feeds one row: positions start..start+length-1 of the prompt in
        `slot`, whose first `start` positions an earlier chunk wrote. Its attention reads the
        slot's earlier keys (what a ring still holds of them) and its own."""
        device = self.shape.device
        self._writes = {}
        for layer_type in set(self.shape.layer_types):
            keep = self.shape.length(layer_type)
            first = max(0, length - keep)  # a ring keeps only the chunk's last `keep` positions
            tokens = torch.arange(first, length, device=device)
            rows, slots = torch.zeros_like(tokens), torch.full_like(tokens, slot)
            self._writes[layer_type] = _Writes(rows, tokens, slots, (start + tokens) % keep)
        self._read = None
        self._chunk = (slot, start)

    def decode(self, positions: torch.Tensor, length: int) -> None:
        """The next forward feeds one token to each of the first B slots, at `positions` (B,);
        attention reads the first `length` positions of each full layer's slots."""
        rows = torch.arange(positions.shape[0], device=positions.device)
        self._writes = {}
        self._read = {}
        self._chunk = None
        for layer_type in set(self.shape.layer_types):
            keep = self.shape.length(layer_type)
            zeros = torch.zeros_like(rows)
            self._writes[layer_type] = _Writes(rows, zeros, rows, positions % keep)
            self._read[layer_type] = min(length, keep)

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        *_: object,
        **__: object,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write a layer's new keys and values (B, H, T, D) into their slots; return what its
        attention reads: a chunk the slot's earlier keys and its own, a decode step the first B
        slots in place."""
        layer_type = self.shape.layer_types[layer_idx]
        w = self._writes[layer_type]
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if self._chunk is not None and self._chunk[1] > 0:
            slot, start = self._chunk
            held = min(start, self.shape.length(layer_type))  # what the slot holds before it
            key_states = torch.cat([keys[slot : slot + 1, :, :held], key_states], dim=2)
            value_states = torch.cat([values[slot : slot + 1, :, :held], value_states], dim=2)
            keys[w.slots, :, w.positions] = key_states[w.rows, :, held + w.tokens]
            values[w.slots, :, w.positions] = value_states[w.rows, :, held + w.tokens]
            return key_states, value_states
        keys[w.slots, :, w.positions] = key_states[w.rows, :, w.tokens]
        values[w.slots, :, w.positions] = value_states[w.rows, :, w.tokens]
        if self._read is None:
            return key_states, value_states
        rows, length = key_states.shape[0], self._read[layer_type]
        return keys[:rows, :, :length], values[:rows, :, :length]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0  # positions are always given explicitly

    def chunk_masks(self, start: int, length: int, additive: bool) -> dict[str, torch.Tensor]:
        """Per layer type, (1, 1, T, L) for a chunk of `length` positions from `start`: causal
        over the slot's earlier keys (as `update` puts them before the chunk's) and its own."""
        device = self.shape.device
        queries = start + torch.arange(length, device=device)
        masks = {}
        for layer_type in set(self.shape.layer_types):
            keep = self.shape.length(layer_type)
            held = torch.arange(min(start, keep), device=device)
            if start > keep:  # a ring: entry r holds the latest position before start at r
                held = start - 1 - (start - 1 - held) % keep
            keys = torch.cat([held, queries])
            mask = keys[None, :] <= queries[:, None]
            if layer_type == SLIDING and self.shape.window is not None:
                mask &= (queries[:, None] - keys[None, :]) < self.shape.window
            masks[layer_type] = mask[None, None]
        return self._format(masks, additive)

    def decode_masks(
        self, positions: torch.Tensor, length: int, additive: bool
    ) -> dict[str, torch.Tensor]:
        """Per layer type, (B, 1, 1, L): the keys each slot holds up to its own position.

        In a ring every held key lies within the window: a slot holds position p at p % window
        and the newest overwrites the one `window` behind it."""
        j = torch.arange(length, device=positions.device)
        held = j[None, :] <= positions[:, None]  # (B, L)
        masks = {FULL: held}
        window = self.shape.window
        if window is not None:
            ring = self.shape.ring
            if ring is not None:
                masks[SLIDING] = held[:, : min(length, ring)]
            else:
                masks[SLIDING] = held & (positions[:, None] - j[None, :] < window)
        return self._format({k: m[:, None, None, :] for k, m in masks.items()}, additive)

    def _format(self, masks: dict[str, torch.Tensor], additive: bool) -> dict[str, torch.Tensor]:
        """Boolean masks (True: attend) as the attention implementation takes them: bool for
        SDPA, 0 / the dtype's minimum added to the scores for eager attention."""
        if not additive:
            return masks
        low = torch.finfo(self.shape.dtype).min
        return {
            k: torch.zeros(m.shape, dtype=self.shape.dtype, device=m.device).masked_fill(~m, low)
            for k, m in masks.items()
        }
