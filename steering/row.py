"""The engine's mutable state of one request: its tokens, sampler, rules fired and receipts.

Owned by the engine thread; the request itself stays frozen (`GenerationRequest`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from steering.channel import OutputChannel
from steering.plan import RowAsk, RowResult
from steering.requests import GenerationRequest, Receipt
from steering.sampling import RowSampler


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
    counts: list[list[int]] = field(default_factory=list)  # per edit: [applied, active] so far
    fired: set[int] = field(default_factory=set)  # its rules that fired

    @property
    def ask(self) -> RowAsk:
        r = self.request
        return RowAsk(r.edits, r.watch, r.inspect, r.rules, self.fired)

    def receipts(self) -> tuple[Receipt, ...]:
        """One per edit in effect: the request's, and those of the rules that fired."""
        ask = self.ask
        counts = self.counts or [[0, 0]] * len(ask.all_edits)
        in_effect = [True] * len(ask.edits) + [
            i in self.fired for i, rule in enumerate(ask.rules) for _ in rule.apply
        ]
        return tuple(
            Receipt(e, a, b)
            for e, (a, b), shown in zip(ask.all_edits, counts, in_effect, strict=True)
            if shown
        )

    def add_counts(self, result: RowResult | None) -> None:
        if result is None or not result.counts:
            return
        if not self.counts:
            self.counts = [[0, 0] for _ in result.counts]
        for total, (applied, active) in zip(self.counts, result.counts, strict=True):
            total[0] += applied
            total[1] += active
