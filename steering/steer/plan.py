"""A prefill's plan: the edit and read tables of the rows it reads, and where each row's
results lie in what the hooks leave behind; then one device-to-host copy per step for them all.

Built for each prefill forward (decode steps read the per-slot tables of `slot_tables.py`
instead). Knows nothing of sampling or of the engine's requests beyond what rows ask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

import torch

from steering.edits import FeatureEdit
from steering.requests import FeatureRef, InspectSpec, Rule
from steering.sae.jumprelu import JumpReLUSAE
from steering.steer.readings import ReadOut, ReadTable, read_table
from steering.steer.rules import RuleTable, rule_table
from steering.steer.tables import EditTable, build_tables

Slot = tuple[str, int, int]  # (SAE, row of its table, column of its table)


@dataclass(frozen=True)
class RowAsk:
    """What one row asks of a forward: its edits, and what to read."""

    edits: tuple[FeatureEdit, ...] = ()
    watch: tuple[FeatureRef, ...] = ()
    inspect: InspectSpec | None = None
    rules: tuple[Rule, ...] = ()
    # The rules of this row that fired so far: the engine's own set, which it adds to as rules
    # fire, so that its slot's latch is written as it is when the row joins the batch.
    fired: AbstractSet[int] = frozenset()

    @property
    def all_edits(self) -> tuple[FeatureEdit, ...]:
        """Its edits, then every rule's (switched on as the rule fires)."""
        return self.edits + tuple(e for rule in self.rules for e in rule.apply)


@dataclass(frozen=True)
class RowResult:
    """One row's results of one forward, on the host."""

    watched: tuple[float, ...]  # the watched features at the forward's last position
    fired: tuple[int, ...] = ()  # its rules that fired in this forward
    named: tuple[tuple[float, ...], ...] = ()  # inspect: per position, the named features
    top: tuple[dict[str, list[tuple[int, float]]], ...] = ()  # inspect: per position, per SAE
    sums: dict[str, torch.Tensor] = field(default_factory=dict)  # SAE -> (d_sae,) on the host
    # score: the log-probability of each scored prompt token (InspectSpec.score_from on)
    logprobs: tuple[float, ...] = ()


@dataclass(frozen=True, eq=False)
class Plan:
    edits: dict[str, EditTable]
    reads: dict[str, ReadTable]
    watch_slots: list[list[Slot]]  # per row, per watched feature
    named_slots: list[list[Slot]]  # per row, per inspected feature
    full_slots: list[dict[str, int]]  # per row: SAE -> its row among the table's full rows
    rules: dict[str, RuleTable] = field(default_factory=dict)
    rule_slots: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # (row, rule)
    latch: torch.Tensor | None = None  # (rules + 1,) bool, the last entry always True
    # Per SAE, (R, F, 2): edit counts summed over every forward run with this plan, kept on the
    # device so that no step spends Python per edit; read for a row when it needs its receipts.
    totals: dict[str, torch.Tensor] = field(default_factory=dict)
    # Which totals entries receipts read, gathered on the device in plan.edits' order: per SAE
    # (table rows, table columns), and per row the places of its edits in the gathered (E, 2).
    receipt_gather: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    receipt_at: list[list[int]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.edits and not self.reads

    def counts(self, readback: Readback, b: int) -> list[tuple[int, int]]:
        """Row b's edit counts over the forwards run with this plan (see `row_counts`)."""
        return row_counts(self, readback, b)


def build_plan(asks: Sequence[RowAsk], saes: Mapping[str, JumpReLUSAE]) -> Plan:
    edits = [ask.all_edits for ask in asks]
    ids = _rule_ids(asks)
    switches = [
        [-1] * len(ask.edits) + [ids[b][i] for i, rule in enumerate(ask.rules) for _ in rule.apply]
        for b, ask in enumerate(asks)
    ]
    edit_tables = build_tables(edits, saes, switches) if any(edits) else {}
    named = [
        ask.watch
        + (ask.inspect.features if ask.inspect else ())
        + tuple(rule.when for rule in ask.rules)
        for ask in asks
    ]
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
    rules, rule_slots, latch = _rules(asks, ids, named_at, saes)
    gather, at = _receipt_gather(_slots(edits, _edit_layout(edits)), list(edit_tables), saes)
    return Plan(
        edits=edit_tables,
        reads=reads,
        watch_slots=_slots([ask.watch for ask in asks], named_at),
        named_slots=_slots([ask.inspect.features if ask.inspect else () for ask in asks], named_at),
        full_slots=[
            {name: rows.index(b) for name, rows in full_at.items() if b in rows}
            for b in range(len(asks))
        ],
        rules=rules,
        rule_slots=rule_slots,
        latch=latch,
        receipt_gather=gather,
        receipt_at=at,
    )


def _receipt_gather(
    slots: list[list[Slot]], order: list[str], saes: Mapping[str, JumpReLUSAE]
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], list[list[int]]]:
    entries: dict[str, list[tuple[int, int]]] = {name: [] for name in order}
    for row in slots:
        for sae, r, c in row:
            entries[sae].append((r, c))
    start, base = 0, {}
    for name in order:
        base[name], start = start, start + len(entries[name])
    seen = dict.fromkeys(order, 0)
    at = []
    for row in slots:
        mine = []
        for sae, _, _ in row:
            mine.append(base[sae] + seen[sae])
            seen[sae] += 1
        at.append(mine)
    gather = {}
    for name, pairs in entries.items():
        device = saes[name].device
        rows = torch.tensor([r for r, _ in pairs], dtype=torch.long, device=device)
        cols = torch.tensor([c for _, c in pairs], dtype=torch.long, device=device)
        gather[name] = (rows, cols)
    return gather, at


def _rule_ids(asks: Sequence[RowAsk]) -> list[list[int]]:
    """Each row's rules' entries in the batch's latch."""
    ids, start = [], 0
    for ask in asks:
        ids.append(list(range(start, start + len(ask.rules))))
        start += len(ask.rules)
    return ids


def _rules(
    asks: Sequence[RowAsk],
    ids: list[list[int]],
    named_at: Mapping[str, tuple[list[int], list[int]]],
    saes: Mapping[str, JumpReLUSAE],
) -> tuple[dict[str, RuleTable], dict[str, list[tuple[int, int]]], torch.Tensor | None]:
    """Per SAE, the conditions of the rules that read it; and the latch as the rows left it."""
    count = sum(len(ask.rules) for ask in asks)
    if not count:
        return {}, {}, None
    tables, slots = {}, {}
    for name, sae in saes.items():
        mine = [(b, i, r) for b, ask in enumerate(asks) for i, r in enumerate(ask.rules)]
        mine = [(b, i, r) for b, i, r in mine if r.when.sae == name]
        if not mine:
            continue
        read_rows, features = named_at[name]
        tables[name] = rule_table(
            rows=[b for b, _, _ in mine],
            read_rows=[read_rows.index(b) for b, _, _ in mine],
            columns=[features.index(r.when.feature) for _, _, r in mine],
            above=[r.above for _, _, r in mine],
            ids=[ids[b][i] for b, i, _ in mine],
            device=sae.device,
        )
        slots[name] = [(b, i) for b, i, _ in mine]
    fired = [i in ask.fired for ask in asks for i in range(len(ask.rules))]
    device = next(iter(saes.values())).device
    return tables, slots, torch.tensor([*fired, True], dtype=torch.bool, device=device)


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
        if not self._parts:
            return
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
    """Queue what the hooks left in a step's `out` (reads, fired rules) for the one copy."""
    for name, value in out.items():
        if isinstance(value, torch.Tensor) and not name.startswith("counts."):
            readback.add(name, value)
        elif isinstance(value, ReadOut):
            for part in ("named", "top_values", "top_indices"):
                tensor = getattr(value, part)
                if tensor is not None:
                    readback.add(f"{name}.{part}", tensor)


def fired_rules(plan: Plan, readback: Readback) -> dict[int, tuple[int, ...]]:
    """Row -> its rules that fired in this forward (rows with none left out)."""
    hits: dict[int, list[int]] = {}
    for sae, slots in plan.rule_slots.items():
        for (row, i), hit in zip(slots, readback.get(f"fired.{sae}")[0], strict=True):
            if hit:
                hits.setdefault(row, []).append(i)
    return {row: tuple(rules) for row, rules in hits.items()}


def row_result(
    plan: Plan,
    readback: Readback,
    out: Mapping[str, object],
    b: int,
    positions: range,
    fired: tuple[int, ...] = (),
) -> RowResult:
    """Row b's results; `positions` are its own positions among the forward's T."""
    last = positions[-1]
    watched = tuple(_named(readback, slot, last) for slot in plan.watch_slots[b])
    if not plan.named_slots[b] and not plan.full_slots[b]:
        return RowResult(watched, fired)
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
    return RowResult(watched, fired, named, top, sums)


def row_counts(plan: Plan, readback: Readback, b: int) -> list[tuple[int, int]]:
    """Row b's edit counts (per all_edits entry) over the forwards run with this plan so far,
    from a readback taken after the latest of them."""
    values, _ = readback.get("receipts")
    return [(int(values[2 * i]), int(values[2 * i + 1])) for i in plan.receipt_at[b]]


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
