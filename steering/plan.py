"""A batch's plan for its forwards: the edit and read tables of its rows, and where each row's
results lie in what the hooks leave behind; then one device-to-host copy per step for them all.

Built once per set of rows (like the edit tables) and reused by every decode step until rows
join or leave. Knows nothing of sampling or of the engine's requests beyond what rows ask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from steering.edits import EditTable, FeatureEdit, build_tables
from steering.readings import ReadOut, ReadTable, read_table
from steering.requests import FeatureRef, InspectSpec
from steering.sae import JumpReLUSAE

Slot = tuple[str, int, int]  # (SAE, row of its table, column of its table)


@dataclass(frozen=True)
class RowAsk:
    """What one row asks of a forward: its edits, and what to read."""

    edits: tuple[FeatureEdit, ...] = ()
    watch: tuple[FeatureRef, ...] = ()
    inspect: InspectSpec | None = None


@dataclass(frozen=True)
class RowResult:
    """One row's results of one forward, on the host."""

    counts: tuple[tuple[int, int], ...]  # per edit: (positions applied, positions active)
    watched: tuple[float, ...]  # the watched features at the forward's last position
    named: tuple[tuple[float, ...], ...] = ()  # inspect: per position, the named features
    top: tuple[dict[str, list[tuple[int, float]]], ...] = ()  # inspect: per position, per SAE
    sums: dict[str, torch.Tensor] = field(default_factory=dict)  # SAE -> (d_sae,) on the host


@dataclass(frozen=True, eq=False)
class Plan:
    edits: dict[str, EditTable]
    reads: dict[str, ReadTable]
    receipt_slots: list[list[Slot]]  # per row, per edit
    watch_slots: list[list[Slot]]  # per row, per watched feature
    named_slots: list[list[Slot]]  # per row, per inspected feature
    full_slots: list[dict[str, int]]  # per row: SAE -> its row among the table's full rows

    @property
    def empty(self) -> bool:
        return not self.edits and not self.reads


def build_plan(asks: Sequence[RowAsk], saes: Mapping[str, JumpReLUSAE]) -> Plan:
    edits = [ask.edits for ask in asks]
    edit_tables = build_tables(edits, saes) if any(edits) else {}
    named = [ask.watch + (ask.inspect.features if ask.inspect else ()) for ask in asks]
    reads: dict[str, ReadTable] = {}
    named_at: dict[str, tuple[list[int], list[int]]] = {}
    full_at: dict[str, list[int]] = {}
    for name, sae in saes.items():
        rows = [b for b, refs in enumerate(named) if any(r.sae == name for r in refs)]
        features = sorted({r.feature for refs in named for r in refs if r.sae == name})
        full = [b for b, ask in enumerate(asks) if _reads_all(ask.inspect, name)]
        if rows or full:
            top_k = max((_top_k(asks[b].inspect) for b in full), default=0)
            reads[name] = read_table(sae, rows, features, full, top_k)
            named_at[name], full_at[name] = (rows, features), full
    return Plan(
        edits=edit_tables,
        reads=reads,
        receipt_slots=_slots(edits, _edit_layout(edits)),
        watch_slots=_slots([ask.watch for ask in asks], named_at),
        named_slots=_slots([ask.inspect.features if ask.inspect else () for ask in asks], named_at),
        full_slots=[
            {name: rows.index(b) for name, rows in full_at.items() if b in rows}
            for b in range(len(asks))
        ],
    )


def _top_k(spec: InspectSpec | None) -> int:
    return spec.top_k if spec is not None else 0


def _reads_all(spec: InspectSpec | None, sae: str) -> bool:
    return spec is not None and (spec.top_k > 0 or spec.means) and sae in spec.saes


def _edit_layout(edits: Sequence[Sequence[FeatureEdit]]) -> dict[str, tuple[list[int], list[int]]]:
    """Per SAE, the rows and features of its edit table, as `build_tables` orders them."""
    layout: dict[str, tuple[list[int], list[int]]] = {}
    for name in {e.sae for row in edits for e in row}:
        rows = [b for b, row in enumerate(edits) if any(e.sae == name for e in row)]
        features = sorted({e.feature for row in edits for e in row if e.sae == name})
        layout[name] = (rows, features)
    return layout


def _slots(
    refs: Sequence[Sequence[FeatureRef | FeatureEdit]],
    layout: Mapping[str, tuple[list[int], list[int]]],
) -> list[list[Slot]]:
    slots = []
    for b, row in enumerate(refs):
        mine = []
        for ref in row:
            rows, features = layout[ref.sae]
            mine.append((ref.sae, rows.index(b), features.index(ref.feature)))
        slots.append(mine)
    return slots


class Readback:
    """Device tensors gathered through a step and copied to the host at once (one sync)."""

    def __init__(self) -> None:
        self._parts: list[torch.Tensor] = []
        self._names: list[str] = []
        self._values: dict[str, tuple[list[float], tuple[int, ...]]] = {}

    def add(self, name: str, tensor: torch.Tensor) -> None:
        self._names.append(name)
        self._parts.append(tensor)

    def fetch(self) -> None:
        # float64 holds every token id, count and float32 value exactly.
        flat = torch.cat([p.detach().reshape(-1).double() for p in self._parts]).tolist()
        start = 0
        for name, part in zip(self._names, self._parts, strict=True):
            self._values[name] = (flat[start : start + part.numel()], tuple(part.shape))
            start += part.numel()

    def get(self, name: str) -> tuple[list[float], tuple[int, ...]]:
        """The flat values of a part and its shape."""
        return self._values[name]

    def __contains__(self, name: str) -> bool:
        return name in self._values


def add_outputs(readback: Readback, out: Mapping[str, object]) -> None:
    """Queue what the hooks left in a step's `out` (counts and reads) for the one copy."""
    for name, value in out.items():
        if isinstance(value, torch.Tensor):
            readback.add(name, value)
        elif isinstance(value, ReadOut):
            for part in ("named", "top_values", "top_indices"):
                tensor = getattr(value, part)
                if tensor is not None:
                    readback.add(f"{name}.{part}", tensor)


def row_result(
    plan: Plan,
    readback: Readback,
    out: Mapping[str, object],
    b: int,
    positions: range,
) -> RowResult:
    """Row b's results; `positions` are its own positions among the forward's T."""
    counts = tuple(_count(readback, slot) for slot in plan.receipt_slots[b])
    last = positions[-1]
    watched = tuple(_named(readback, slot, last) for slot in plan.watch_slots[b])
    if not plan.named_slots[b] and not plan.full_slots[b]:
        return RowResult(counts, watched)
    named = tuple(
        tuple(_named(readback, slot, t) for slot in plan.named_slots[b]) for t in positions
    )
    top = tuple(
        {sae: _top(readback, sae, q, t) for sae, q in plan.full_slots[b].items()} for t in positions
    )
    sums = {}
    for sae, q in plan.full_slots[b].items():
        read_out = out[f"read.{sae}"]
        assert isinstance(read_out, ReadOut) and read_out.sums is not None
        sums[sae] = read_out.sums[q].float().cpu()
    return RowResult(counts, watched, named, top, sums)


def _count(readback: Readback, slot: Slot) -> tuple[int, int]:
    sae, r, c = slot
    values, (_, features, _) = readback.get(f"counts.{sae}")
    at = (r * features + c) * 2
    return int(values[at]), int(values[at + 1])


def _named(readback: Readback, slot: Slot, t: int) -> float:
    sae, r, c = slot
    values, (_, length, features) = readback.get(f"read.{sae}.named")
    return values[(r * length + t) * features + c]


def _top(readback: Readback, sae: str, q: int, t: int) -> list[tuple[int, float]]:
    name = f"read.{sae}"
    if f"{name}.top_values" not in readback:
        return []
    values, (_, length, k) = readback.get(f"{name}.top_values")
    indices, _ = readback.get(f"{name}.top_indices")
    at = (q * length + t) * k
    return [(int(indices[at + j]), values[at + j]) for j in range(k)]
