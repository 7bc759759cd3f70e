"""Graph-safe steering tables: per SAE, persistent per-slot buffers of what each running row
edits and reads, written in place when a request joins and cleared when it leaves.

Row b of a decode forward is slot b, so the hooks index the buffers by row and gather each
row's encoder columns and decoder rows by feature index inside the step: a step's work has the
same shapes whatever its rows ask (the width of a table may be trimmed to the widest row on the
host; under CUDA graphs it stays whole). Unused entries point at feature 0 but are masked out
of every product (exactly 0, whatever feature 0's weights hold), so they are the identity and
count nothing.
The rule latch (which of a row's rules fired) stays on the device beside them. Prefills keep
the per-forward `Plan` (Inspect's full reads are prefill-only). Knows nothing of requests beyond
what a row asks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from steering.sae.jumprelu import JumpReLUSAE
from steering.steer.plan import Readback, RowAsk, RowResult
from steering.steer.tables import AFFINE_OF_MODE, edit_features

Widths = tuple[int, int, int]  # (edits, reads, rules) columns of one SAE's tables in a step


@dataclass(frozen=True, eq=False)
class SaeSlots:
    """One SAE's buffers: (S, K) edits, (S, Kr) read features, (S, R) rule conditions."""

    features: torch.Tensor  # (S, K) long
    alpha: torch.Tensor  # (S, K) float32
    beta: torch.Tensor  # (S, K) float32
    gated: torch.Tensor  # (S, K) bool: edit only where the feature is active
    switch: torch.Tensor  # (S, K) long: the row's rule that switches the edit on; -1: always
    used: torch.Tensor  # (S, K) bool
    totals: torch.Tensor  # (S, K, 2) long: [applied, active] positions since the row joined
    reads: torch.Tensor  # (S, Kr) long: features read (watch, then rule conditions)
    read_used: torch.Tensor  # (S, Kr) bool
    rule_column: torch.Tensor  # (S, R) long: the condition's column among the reads
    rule_above: torch.Tensor  # (S, R) float32
    rule_used: torch.Tensor  # (S, R) bool

    def clear(self, slot: int) -> None:
        for buffer, value in (
            (self.features, 0),
            (self.alpha, 1.0),
            (self.beta, 0.0),
            (self.gated, False),
            (self.switch, -1),
            (self.used, False),
            (self.totals, 0),
            (self.reads, 0),
            (self.read_used, False),
            (self.rule_column, 0),
            (self.rule_above, 0.0),
            (self.rule_used, False),
        ):
            buffer[slot].fill_(value)


@dataclass(frozen=True)
class SlotLayout:
    """Where one row's entries sit in its slot: (SAE, column) per all_edits entry, per watched
    feature, and per rule (its condition's SAE and the rule's index)."""

    edits: tuple[tuple[str, int], ...]
    watch: tuple[tuple[str, int], ...]
    rules: tuple[str, ...]
    widths: dict[str, Widths] = field(default_factory=dict)


def _buffers(slots: int, k: int, reads: int, rules: int, device: torch.device) -> SaeSlots:
    def longs(*shape: int, fill: int = 0) -> torch.Tensor:
        return torch.full(shape, fill, dtype=torch.long, device=device)

    def bools(*shape: int) -> torch.Tensor:
        return torch.zeros(shape, dtype=torch.bool, device=device)

    return SaeSlots(
        features=longs(slots, k),
        alpha=torch.ones(slots, k, device=device),
        beta=torch.zeros(slots, k, device=device),
        gated=bools(slots, k),
        switch=longs(slots, k, fill=-1),
        used=bools(slots, k),
        totals=longs(slots, k, 2),
        reads=longs(slots, reads),
        read_used=bools(slots, reads),
        rule_column=longs(slots, rules),
        rule_above=torch.zeros(slots, rules, device=device),
        rule_used=bools(slots, rules),
    )


class SlotTables:
    """Every SAE's per-slot buffers, the rule latch, and the host's map of each slot."""

    def __init__(
        self,
        saes: Mapping[str, JumpReLUSAE],
        slots: int,
        *,
        features: int,  # K: edits per row and SAE, a request's and its rules' together
        reads: int,  # Kr: watched features and rule conditions per row and SAE
        rules: int,  # R: rules per row
        fixed: bool = False,  # keep every table whole in each step (CUDA graphs)
    ) -> None:
        self.saes = dict(saes)
        self.features, self.reads, self.rules, self.fixed = features, reads, rules, fixed
        self.tables = {
            name: _buffers(slots, features, reads, rules, sae.device) for name, sae in saes.items()
        }
        device = next((sae.device for sae in saes.values()), torch.device("cpu"))
        self.latch = torch.zeros(slots, max(rules, 1), dtype=torch.bool, device=device)
        self.layouts: list[SlotLayout | None] = [None] * slots

    def write(self, slot: int, ask: RowAsk) -> None:
        """Write a joining row's edits, reads, rules and latch (the rules fired so far)."""
        self.clear(slot)
        edits: list[tuple[str, int]] = []
        widths: dict[str, list[int]] = {name: [0, 0, 0] for name in self.saes}
        switches = [-1] * len(ask.edits) + [i for i, r in enumerate(ask.rules) for _ in r.apply]
        for edit, switch in zip(ask.all_edits, switches, strict=True):
            k = widths[edit.sae][0]
            widths[edit.sae][0] += 1
            edits.append((edit.sae, k))
            t = self.tables[edit.sae]
            alpha, beta = AFFINE_OF_MODE[edit.mode](edit.value)
            t.features[slot, k], t.alpha[slot, k], t.beta[slot, k] = edit.feature, alpha, beta
            t.gated[slot, k], t.switch[slot, k], t.used[slot, k] = (
                edit.only_when_active,
                switch,
                True,
            )
        watch = []
        for ref in ask.watch:
            watch.append((ref.sae, self._read(slot, ref.sae, ref.feature, widths)))
        for i, rule in enumerate(ask.rules):
            t = self.tables[rule.when.sae]
            t.rule_column[slot, i] = self._read(slot, rule.when.sae, rule.when.feature, widths)
            t.rule_above[slot, i], t.rule_used[slot, i] = rule.above, True
            widths[rule.when.sae][2] = i + 1
            self.latch[slot, i] = i in ask.fired
        self.layouts[slot] = SlotLayout(
            tuple(edits),
            tuple(watch),
            tuple(rule.when.sae for rule in ask.rules),
            {name: (w[0], w[1], w[2]) for name, w in widths.items()},
        )

    def _read(self, slot: int, sae: str, feature: int, widths: dict[str, list[int]]) -> int:
        kr = widths[sae][1]
        widths[sae][1] += 1
        self.tables[sae].reads[slot, kr] = feature
        self.tables[sae].read_used[slot, kr] = True
        return kr

    def clear(self, slot: int) -> None:
        """A row left: its slot edits nothing and reads nothing."""
        for table in self.tables.values():
            table.clear(slot)
        self.latch[slot].fill_(False)
        self.layouts[slot] = None

    @property
    def empty(self) -> bool:
        return all(layout is None for layout in self.layouts)

    def widths(self, n: int) -> dict[str, Widths]:
        """Per SAE, the columns a step over slots 0..n-1 uses; SAEs that no row uses left out."""
        if self.fixed:
            return {name: (self.features, self.reads, self.rules) for name in self.saes}
        out: dict[str, Widths] = {}
        for layout in self.layouts[:n]:
            for name, w in (layout.widths if layout else {}).items():
                old = out.get(name, (0, 0, 0))
                out[name] = (max(old[0], w[0]), max(old[1], w[1]), max(old[2], w[2]))
        return {name: w for name, w in out.items() if any(w)}

    def accumulators(self) -> list[torch.Tensor]:
        """The buffers a decode step adds to (each SAE's edit totals), so that a step run twice,
        as a graph's check does, can be undone once."""
        return [table.totals for table in self.tables.values()]

    def queue(self, n: int, out: Mapping[str, object], readback: Readback) -> None:
        """After a forward over slots 0..n-1: latch the rules that fired (from the next forward
        on) and add the edit totals, readings and fired rules to the step's one copy."""
        fired = [v for k, v in out.items() if k.startswith("fired.")]
        for value in fired:
            assert isinstance(value, torch.Tensor)
            self.latch[:n, : value.shape[1]] |= value
        for name, (k, _, _) in self.widths(n).items():
            if k:
                readback.add(f"totals.{name}", self.tables[name].totals[:n, :k])
        for name, value in out.items():
            if isinstance(value, torch.Tensor) and not name.startswith("counts."):
                readback.add(name, value)

    def result(self, readback: Readback, slot: int) -> RowResult:
        """A row's watched features (at the last position) and rules fired in this forward."""
        layout = self.layouts[slot]
        assert layout is not None
        watched = []
        for sae, kr in layout.watch:
            values, (_, t, width) = readback.get(f"read.{sae}.named")
            watched.append(values[(slot * t + t - 1) * width + kr])
        fired = []
        for i, sae in enumerate(layout.rules):
            values, (_, width) = readback.get(f"fired.{sae}")
            if values[slot * width + i]:
                fired.append(i)
        return RowResult(tuple(watched), tuple(fired))

    def counts(self, readback: Readback, slot: int) -> list[tuple[int, int]]:
        """A row's [applied, active] per all_edits entry since it joined."""
        layout = self.layouts[slot]
        assert layout is not None
        out = []
        for sae, k in layout.edits:
            values, (_, width, _) = readback.get(f"totals.{sae}")
            at = 2 * (slot * width + k)
            out.append((int(values[at]), int(values[at + 1])))
        return out


@dataclass(frozen=True, eq=False)
class SlotStep:
    """What the hooks apply in a forward over slots 0..n-1."""

    tables: SlotTables
    n: int
    widths: dict[str, Widths]
    latch: torch.Tensor  # (n, R) bool: the rules fired before this forward


def slot_pre_activations(
    x: torch.Tensor, sae: JumpReLUSAE, features: torch.Tensor, used: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's own features: x (n, T, d_model), features and used (n, K) -> the
    pre-activations (n, T, K) float32 and the thresholds (n, 1, K); 0 and 0 where not used."""
    n, k = features.shape
    flat = features.reshape(-1)
    # index_select, not W_enc[:, index]: advanced indexing of columns is ~6x slower.
    w_enc = sae.W_enc.index_select(1, flat).float().view(-1, n, k).permute(1, 0, 2)  # (n, d, K)
    # A select, not a product: 0 * inf is NaN, and an unused column must give exactly 0.
    w_enc = torch.where(used[:, None, :], w_enc, 0.0)
    b_enc = torch.where(used, sae.b_enc[features].float(), 0.0)
    threshold = torch.where(used, sae.threshold[features].float(), 0.0)
    pre = torch.bmm(x.float(), w_enc) + b_enc[:, None, :]
    return pre, threshold[:, None, :]


def slot_activations(
    x: torch.Tensor, sae: JumpReLUSAE, features: torch.Tensor, used: torch.Tensor
) -> torch.Tensor:
    """f of each row's own features: (n, T, K) float32, 0 where not used."""
    pre, threshold = slot_pre_activations(x, sae, features, used)
    return pre * (pre > threshold)


def _affine_in_effect(
    table: SaeSlots, step: SlotStep, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(n, K) each: which edits are on (used, and switched on by their latch unless they have
    no rule), and their alpha and beta, the identity where off."""
    n = step.n
    on = table.used[:n, :k] & (
        (table.switch[:n, :k] < 0) | step.latch.gather(1, table.switch[:n, :k].clamp_min(0))
    )
    alpha = torch.where(on, table.alpha[:n, :k], 1.0)
    beta = torch.where(on, table.beta[:n, :k], 0.0)
    return on, alpha, beta


def steer_slots(
    x: torch.Tensor,
    sae: JumpReLUSAE,
    table: SaeSlots,
    step: SlotStep,
    k: int,
    steerable: torch.Tensor | None,
) -> torch.Tensor:
    """x + each row's sparse delta sum_i (f'_i - f_i) W_dec[i] over its own edits, at steerable
    positions; adds the edit counts to the slots' totals. x (n, T, d_model), a new tensor."""
    n = step.n
    features, used = table.features[:n, :k], table.used[:n, :k]
    f = slot_activations(x, sae, features, used)  # (n, T, K)
    on, alpha, beta = _affine_in_effect(table, step, k)
    gated = table.gated[:n, :k]
    w_dec = sae.W_dec.index_select(0, features.reshape(-1)).float().view(n, k, -1)  # (n, K, d)
    w_dec = torch.where(used[..., None], w_dec, 0.0)
    delta = torch.bmm(edit_features(f, alpha, beta, gated) - f, w_dec)  # (n, T, d_model)
    active = f > 0
    applied = ~gated[:, None, :] | active
    if steerable is not None:
        delta = torch.where(steerable[..., None], delta, 0.0)
        active, applied = active & steerable[..., None], applied & steerable[..., None]
    counts = torch.stack([applied.sum(dim=1), active.sum(dim=1)], dim=-1)  # (n, K, 2)
    table.totals[:n, :k] += counts * on[..., None]
    return (x.float() + delta).to(x.dtype)


def read_slots(
    x: torch.Tensor,
    sae: JumpReLUSAE,
    table: SaeSlots,
    n: int,
    kr: int,
    steerable: torch.Tensor | None,
) -> torch.Tensor:
    """(n, T, Kr) f of each row's read features, 0 at positions that are not steerable."""
    pre, threshold = slot_pre_activations(x, sae, table.reads[:n, :kr], table.read_used[:n, :kr])
    f = torch.where(pre > threshold, pre, 0.0)  # not a product: that leaves -0 below threshold
    if steerable is None:
        return f
    return torch.where(steerable[..., None], f, 0.0)


def fired_slots(
    named: torch.Tensor, table: SaeSlots, step: SlotStep, r: int, steerable: torch.Tensor | None
) -> torch.Tensor:
    """(n, R) bool: rules whose condition held at a steerable position and had not fired."""
    n = step.n
    values = named.gather(2, table.rule_column[:n, None, :r].expand(-1, named.shape[1], -1))
    holds = values > table.rule_above[:n, None, :r]
    if steerable is not None:
        holds = holds & steerable[..., None]
    return holds.any(dim=1) & table.rule_used[:n, :r] & ~step.latch[:, :r]


def reconstruct_slots(
    x: torch.Tensor,
    sae: JumpReLUSAE,
    table: SaeSlots,
    step: SlotStep,
    k: int,
    steerable: torch.Tensor | None,
) -> torch.Tensor:
    """Research mode: the SAE's reconstruction of every row, each row's own edits applied
    (switched on or not by its latch), without the error term, at steerable positions."""
    n = step.n
    xf = x.float()
    f = sae.encode(xf)  # (n, T, d_sae)
    if k:
        features = table.features[:n, :k]
        _, alpha, beta = _affine_in_effect(table, step, k)
        index = features[:, None, :].expand(-1, f.shape[1], -1)
        mine = f.gather(2, index)
        edited = edit_features(mine, alpha, beta, table.gated[:n, :k])
        # Unused entries add exactly 0, wherever their placeholder index points.
        f = f.scatter_add(2, index, edited - mine)
    out = sae.decode(f)
    if steerable is not None:
        out = torch.where(steerable[..., None], out, xf)
    return out.to(x.dtype)
