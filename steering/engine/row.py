"""The engine's mutable state of one request: its tokens, sampler, rules fired and receipts.

Owned by the engine thread; the request itself stays frozen (`GenerationRequest`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from steering.engine.channel import OutputChannel
from steering.engine.sampling import RowSampler
from steering.requests import GenerationRequest, Receipt
from steering.steer.plan import Readback, RowAsk


class Counted(Protocol):
    """Where a row's edit counts are read: a prefill's plan, or the slot tables of decode."""

    def counts(self, readback: Readback, b: int) -> list[tuple[int, int]]: ...


@dataclass(eq=False)
class Row:
    """The engine's mutable state of one request."""

    key: int
    request: GenerationRequest
    channel: OutputChannel
    budget: int  # tokens it may generate: max_new_tokens, bounded by the context length
    queued_at: float
    sampler: RowSampler | None = None
    generated: list[int] = field(default_factory=list)
    admitted_at: float | None = None
    first_token_at: float | None = None
    # Edit counts (per all_edits entry, [applied, active]) of the tables it left (its prefill's
    # plan), and where to read those of its current tables: (tables, its row there, the latest
    # readback).
    folded: list[list[int]] = field(default_factory=list)
    view: tuple[Counted, int, Readback] | None = None
    fired: set[int] = field(default_factory=set)  # its rules that fired
    reserved: bool = False  # a text of a discovery call, which `Engine.reserve` counted

    @property
    def ask(self) -> RowAsk:
        r = self.request
        return RowAsk(r.edits, r.watch, r.inspect, r.rules, self.fired)

    def receipts(self) -> tuple[Receipt, ...]:
        """One per edit in effect: the request's, and those of the rules that fired."""
        ask = self.ask
        counts = self.counts()
        in_effect = [True] * len(ask.edits) + [
            i in self.fired for i, rule in enumerate(ask.rules) for _ in rule.apply
        ]
        return tuple(
            Receipt(e, a, b)
            for e, (a, b), shown in zip(ask.all_edits, counts, in_effect, strict=True)
            if shown
        )

    def counts(self) -> list[list[int]]:
        """[applied, active] per all_edits entry, over every forward so far."""
        totals = [list(c) for c in self.folded] or [[0, 0] for _ in self.ask.all_edits]
        if self.view is not None:
            source, b, readback = self.view
            for total, (applied, active) in zip(totals, source.counts(readback, b), strict=True):
                total[0] += applied
                total[1] += active
        return totals

    def seen(self, source: Counted, b: int, readback: Readback) -> None:
        """After a step: its counts under `source` are in `readback`. O(1) unless the source is
        new (its first decode after the prefill): then the old one's counts are folded first."""
        if self.view is not None and self.view[0] is not source:
            self.folded, self.view = self.counts(), None
        if self.ask.all_edits:
            self.view = (source, b, readback)
