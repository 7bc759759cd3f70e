"""The decode forward over slots 0..n-1: eager (CPU, or CUDA without graphs), or replayed from
CUDA graphs captured per (batch-size bucket, key-length bucket).

Both run the same code: the slot cache writes and reads in place, the hooks read the per-slot
tables, so everything a step changes lives in persistent buffers and a captured graph replays
it. Sampling and the step's one copy to the host stay outside (the engine's). Each bucket's
graph is checked against the eager run it was captured after (its first replay must give the
same tokens and logits within `GRAPH_TOLERANCE`); a mismatch or a capture error gives the graphs
up for eager decoding, with one log line and `fallback` saying why. On CPU the bucketing and
static buffers run without capture (`capture=False`), which the tests use.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from steering.engine.forward import PAD_ID, Steering, eager_attention, forward
from steering.engine.slot_cache import SlotCache
from steering.steer.hooks import StepTables
from steering.steer.slot_tables import SlotStep

log = logging.getLogger(__name__)

Decoded = tuple[torch.Tensor, StepTables | None]
# A replayed step may differ from the eager one by kernel choice, not by more than this relative to
# the logits' scale (bfloat16 has ~0.4% resolution); the greedy tokens must be the same.
GRAPH_TOLERANCE = 1e-2  # logits (n, V) float32, what the hooks left


class Decoder:
    """One decode forward, eagerly."""

    def __init__(self, model: Any, steering: Steering, cache: SlotCache) -> None:
        self.model, self.steering, self.cache = model, steering, cache
        self.eager_attention = eager_attention(model)

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, length: int) -> Decoded:
        """Feed ids (n, 1) at positions (n,) to slots 0..n-1, reading `length` key positions."""
        self.cache.decode(positions, length)
        masks = self.cache.decode_masks(positions, length, self.eager_attention)
        tables = self.steering.slot_tables(ids)
        logits = forward(
            self.model, self.steering, tables, ids, masks, positions[:, None], self.cache
        )
        return logits, tables


class ContextDecoder(Decoder):
    """Every decode step reads every key position of the slot context (masked past each slot's
    own) with every steering table at full width, so no row's attention or steering arithmetic
    depends on how long the other rows are; the rows are the batch's. In bfloat16 the attention's
    rounding changed with the number of keys read (the demo's greedy text changed beside a longer
    prompt), not with the number of rows. Costs attention over the whole context per row."""

    def __init__(self, model: Any, steering: Steering, cache: SlotCache) -> None:
        super().__init__(model, steering, cache)
        steering.slots.fixed = True

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, length: int) -> Decoded:
        return Decoder.__call__(self, ids, positions, self.cache.shape.context)


class FixedDecoder(ContextDecoder):
    """Every decode step at one shape, whatever runs beside a row: as ContextDecoder, and at all
    the cache's slots (those beyond the batch fed padding at their parked positions, as
    GraphedDecoder's padding rows are). A row's arithmetic then never depends on the others, even
    where kernels pick their blocking by row count. Costs the forward of a full batch at full
    context every step."""

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, length: int) -> Decoded:
        n, rows = ids.shape[0], self.cache.shape.slots
        parked = self.cache.parked[n:rows]  # free, or mid-prompt: never read
        ids = torch.cat([ids, ids.new_full((rows - n, 1), PAD_ID)])
        positions = torch.cat([positions, positions.new_tensor(parked)])
        logits, tables = super().__call__(ids, positions, length)
        return logits[:n], _first_rows(tables, n)


@dataclass(eq=False)
class _Graph:
    ids: torch.Tensor  # (b, 1) static input
    positions: torch.Tensor  # (b,) static input
    replay: Callable[[], None]
    logits: torch.Tensor | None = None  # (b, V) static output
    tables: StepTables | None = None  # its `out` holds static outputs


class GraphedDecoder(Decoder):
    """Decode replayed from graphs: the batch padded to a bucket of rows (the padding rows are
    free slots fed padding at position 0), the keys read to a bucket of lengths. A bucket is
    captured the first time it is needed, right after an eager run of that very step."""

    def __init__(
        self, model: Any, steering: Steering, cache: SlotCache, *, capture: bool = True
    ) -> None:
        super().__init__(model, steering, cache)
        steering.slots.fixed = True  # every table at full width: the same shapes every step
        slots, context = cache.shape.slots, cache.shape.context
        self.batches = sorted({min(1 << i, slots) for i in range(slots.bit_length() + 1)})
        self.lengths = sorted({min(128 << i, context) for i in range(context.bit_length() + 1)})
        self.capture = capture
        self.fallback: str | None = None  # why the graphs were given up; None: in use
        self._graphs: dict[tuple[int, int], _Graph] = {}
        self._pool: Any = torch.cuda.graph_pool_handle() if capture else None

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, length: int) -> Decoded:
        if self.fallback is not None:
            return Decoder.__call__(self, ids, positions, length)
        n = ids.shape[0]
        rows = next(b for b in self.batches if b >= n)
        keys = next(k for k in self.lengths if k >= length)
        graph = self._graphs.get((rows, keys))
        logits: torch.Tensor | None
        if graph is None:
            graph = self._graphs[rows, keys] = self._new(rows, keys)
            self._fill(graph, ids, positions)
            before = [t.clone() for t in self.steering.slots.accumulators()]
            logits, tables = Decoder.__call__(self, graph.ids, graph.positions, keys)
            problem = self._captured(graph, keys, logits, before)
            if problem is not None:
                self._give_up(problem)
        else:
            self._fill(graph, ids, positions)
            graph.replay()
            logits, tables = graph.logits, graph.tables
        assert logits is not None
        return logits[:n], _first_rows(tables, n)

    def _new(self, rows: int, keys: int) -> _Graph:
        device = self.cache.shape.device
        ids = torch.full((rows, 1), PAD_ID, dtype=torch.long, device=device)
        positions = torch.zeros(rows, dtype=torch.long, device=device)
        graph = _Graph(ids, positions, lambda: None)
        if not self.capture:  # CPU: "replay" runs the same code on the static buffers

            def rerun() -> None:
                graph.logits, graph.tables = Decoder.__call__(self, ids, positions, keys)

            graph.replay = rerun
        return graph

    def _captured(
        self, graph: _Graph, keys: int, eager: torch.Tensor, before: list[torch.Tensor]
    ) -> str | None:
        """Capture the bucket's graph and replay it once on the step just run eagerly, from the
        same state (the cache entries it writes are rewritten with the same values; the edit
        totals it adds to are put back as they were before the eager run); what is wrong, or
        None. Either way the step's effects are left as the eager run made them."""
        accumulators = self.steering.slots.accumulators()
        expected, after = eager.clone(), [t.clone() for t in accumulators]
        try:
            if self.capture:
                self._record(graph, keys)
            for buffer, value in zip(accumulators, before, strict=True):
                buffer.copy_(value)
            graph.replay()
        except Exception as exc:  # any capture failure: the eager path still serves
            problem: str | None = (
                f"capture of bucket ({graph.ids.shape[0]} rows, {keys} keys) failed: {exc}"
            )
        else:
            assert graph.logits is not None
            problem = replay_mismatch(expected, graph.logits)
            if problem is None and not all(map(torch.equal, accumulators, after)):
                problem = "the replayed step counts other edit receipts than the eager one"
        if problem is not None:
            for buffer, value in zip(accumulators, after, strict=True):
                buffer.copy_(value)
        return problem

    def _give_up(self, problem: str) -> None:
        self.fallback = problem
        self._graphs.clear()
        log.warning("CUDA graphs off, decoding eagerly: %s", problem)

    def _record(self, graph: _Graph, keys: int) -> None:
        cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cuda_graph, pool=self._pool):
            graph.logits, graph.tables = Decoder.__call__(self, graph.ids, graph.positions, keys)
        graph.replay = cuda_graph.replay

    def _fill(self, graph: _Graph, ids: torch.Tensor, positions: torch.Tensor) -> None:
        n, rows = ids.shape[0], graph.ids.shape[0]
        graph.ids[:n].copy_(ids)
        graph.ids[n:].fill_(PAD_ID)
        graph.positions[:n].copy_(positions)
        parked = self.cache.parked[n:rows]  # the padding rows' slots: free, or mid-prompt
        if any(parked):
            graph.positions[n:].copy_(torch.tensor(parked, dtype=torch.long))
        else:
            graph.positions[n:].zero_()


def replay_mismatch(eager: torch.Tensor, replayed: torch.Tensor) -> str | None:
    """How a replayed step's logits (rows, V) differ from the eager ones, or None if they agree:
    the same greedy token in every row and every logit within GRAPH_TOLERANCE of the scale."""
    if not torch.equal(eager.argmax(dim=-1), replayed.argmax(dim=-1)):
        return "the replayed step picks other greedy tokens than the eager one"
    scale = float(eager.abs().max()) + 1.0
    error = float((eager - replayed).abs().max())
    if not error <= GRAPH_TOLERANCE * scale:  # NaN fails too
        return f"replayed logits differ from the eager ones by {error:.3g} (scale {scale:.3g})"
    return None


def _first_rows(tables: StepTables | None, n: int) -> StepTables | None:
    """The tables of a forward over a bucket of rows, cut to its first n (the real ones)."""
    if tables is None or tables.slots is None:
        return tables
    step = tables.slots
    if step.n == n:
        return tables
    out: dict[str, object] = {
        k: v[:n] if isinstance(v, torch.Tensor) else v for k, v in tables.out.items()
    }
    sliced = SlotStep(step.tables, n, step.widths, step.latch[:n])
    steerable = tables.steerable[:n] if tables.steerable is not None else None
    return StepTables(steerable=steerable, out=out, slots=sliced)
