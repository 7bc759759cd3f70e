"""The generation engine: iteration-level scheduling of many steered requests on one model.

Synchronous: it owns the model, its steering hooks and the running batch, and speaks token ids
only. `add`, `abort` and `finish` may be called from any thread; `step` (or `run`) from one
engine thread. A step applies aborts, decodes the running batch by one token, then prefills
within a budget (`prefill_tokens_per_step` tokens at the start of a prompt, counted in cost; see
steering.engine.chunks): the next chunk of each prompt already being prefilled, then waiting
requests, first come first served. A prompt is cut into chunks by its own positions only (a chunk
deeper in a long prompt holds fewer tokens, as each attends over more keys), so where its chunks
end depends on the request alone, and each chunk is one forward of that row alone at its own
shape (never padded to another prompt), so one long prompt holds the running rows up by one
chunk's cost per step at most. A prompt whose last chunk is in joins the batch with its first token;
rows that finish leave at once. Each running request holds one slot of a static KV cache,
allocated at startup for `max_active_rows` requests of the longest prompt and generation the
limits allow.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

import torch

from steering.engine.batch import Batch, prefill_chunk
from steering.engine.channel import OutputChannel
from steering.engine.chunks import ChunkCosts
from steering.engine.decoder import ContextDecoder, Decoder, FixedDecoder, GraphedDecoder
from steering.engine.forward import Forward, Steering
from steering.engine.logprobs import Logprobs, queue_logprobs, read_logprobs
from steering.engine.row import Row
from steering.engine.sampling import RowSampler
from steering.engine.slot_cache import CacheShape, SlotCache
from steering.engine.stats import EngineSnapshot, FinishedRequest, StepStats
from steering.errors import EngineClosedError, InvalidRequestError, QueueFullError
from steering.models.gemma import LoadedModel
from steering.requests import FinishReason, GenerationRequest, Limits, validate_request
from steering.steer.hooks import SaeAttachment, install_steering
from steering.steer.plan import Plan, Readback, RowResult
from steering.steer.slot_tables import SlotTables

log = logging.getLogger(__name__)

DecodeShapes = Literal["batch", "context", "fixed"]
T = TypeVar("T")


@dataclass(frozen=True)
class EngineConfig:
    limits: Limits = field(default_factory=Limits)
    # The prompt tokens one step computes at most at the start of a prompt, and the size of a
    # prompt's first chunk; deeper chunks hold fewer tokens at the same cost (ChunkCosts). A
    # longer prompt is prefilled over several steps, so no step's prefill stalls decoding longer.
    prefill_tokens_per_step: int = 512
    # Replay decode steps from CUDA graphs (a CUDA model only); see steering.engine.decoder.
    cuda_graphs: bool = False
    # The decode's shapes: "batch" (the batch's rows and its longest row's keys), "context"
    # (every slot's whole context read, rows by batch: ContextDecoder) or "fixed" (all
    # max_active_rows rows and the whole context: FixedDecoder). CUDA graphs replay buckets.
    decode_shapes: DecodeShapes = "batch"


@dataclass(eq=False)
class _Prompt:
    """A running row whose prompt is being prefilled into its slot, one chunk per forward; its
    plan (tables, rule latch, receipt totals) and its inspect readings span all the chunks."""

    row: Row
    slot: int
    plan: Plan | None = None
    done: int = 0  # positions of the prompt in its slot
    named: list[tuple[float, ...]] = field(default_factory=list)
    top: list[dict[str, list[tuple[int, int | float]]]] = field(default_factory=list)
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    logprobs: list[float] = field(default_factory=list)  # of the scored tokens read so far

    def scored(self, start: int, size: int) -> tuple[int, tuple[int, ...]] | None:
        """What the chunk of `size` tokens from `start` scores (as `prefill_chunk` takes it):
        the positions p from InspectSpec.score_from - 1 on, each with the token at p + 1."""
        spec, ids = self.row.request.inspect, self.row.request.prompt_ids
        if spec is None or not spec.score_from:
            return None
        first, end = max(start, spec.score_from - 1), min(start + size, len(ids) - 1)
        if first >= end:
            return None
        return first - start, ids[first + 1 : end + 1]

    def read(self, result: RowResult | None) -> RowResult | None:
        """Add a chunk's readings: those of the prompt so far, with the chunk's own watched
        values and fired rules."""
        if result is None:
            return RowResult((), logprobs=tuple(self.logprobs)) if self.logprobs else None
        self.named += result.named
        self.top += result.top
        for sae, sums in result.sums.items():
            self.sums[sae] = self.sums[sae] + sums if sae in self.sums else sums
        return RowResult(
            result.watched,
            result.fired,
            tuple(self.named),
            tuple(self.top),
            dict(self.sums),
            tuple(self.logprobs),
        )


def _wants_logprobs(row: Row) -> bool:
    return row.request.sampling.top_logprobs is not None and row.request.inspect is None


@dataclass(frozen=True)
class RequestHandle:
    key: int  # the engine's own key: pass it to `abort` / `finish`
    channel: OutputChannel


class Engine:
    def __init__(
        self,
        model: Any,
        *,
        special_ids: Sequence[int],
        eos_ids: Sequence[int],
        attachments: Sequence[SaeAttachment] = (),
        config: EngineConfig = EngineConfig(),
        on_step: Callable[[StepStats], None] | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self.on_step = on_step
        self.device = next(model.parameters()).device
        self._chunks = ChunkCosts.for_model(model.config, config.prefill_tokens_per_step)
        self.hooks = install_steering(model, attachments)
        ids = torch.tensor(sorted(set(special_ids)), dtype=torch.long, device=self.device)
        self.eos_ids = frozenset(eos_ids)
        self.context_length = int(model.config.get_text_config().max_position_embeddings)
        self._static_decode(ids)
        self.vocab_size = int(model.get_input_embeddings().num_embeddings)
        self.d_sae_of = {a.name: a.sae.d_sae for a in attachments}
        self._cond = threading.Condition()
        self._waiting: deque[Row] = deque()
        self._finish_requests: dict[int, FinishReason] = {}
        self._running: dict[int, Row] = {}
        self._reserved = 0  # discovery calls in flight (see `reserve`)
        self._prompts: list[_Prompt] = []  # running rows still prefilling, first come first
        self._batch: Batch | None = None
        self._keys = itertools.count()
        self._closed = False
        self._stopping = False
        self._steps = 0
        self._rules_fired = {"apply": 0, "stop": 0}  # in the current step, by action
        self._tasks: deque[tuple[Callable[[], Any], Future[Any]]] = deque()  # see `call`

    def _static_decode(self, special_ids: torch.Tensor) -> None:
        """Allocate what decoding keeps for the engine's life: the per-slot steering tables,
        the slot KV cache (every request the limits admit fits its slot: a prompt and all it
        may generate), and the decoder over them."""
        limits = self.config.limits
        self._slots = SlotTables(
            self.hooks.saes,
            limits.max_active_rows,
            features=limits.max_edits_per_sae,
            reads=limits.max_watched_features + limits.max_rules_per_request,
            rules=limits.max_rules_per_request,
        )
        self._steering = Steering(self.hooks, special_ids, self._slots)
        most_new = max(limits.max_new_tokens, limits.default_max_new_tokens)
        self.slot_context = min(self.context_length, limits.max_prompt_tokens + most_new)
        shape = CacheShape.of(self.model, limits.max_active_rows, self.slot_context)
        self._cache = SlotCache(shape)
        decoder: type[Decoder] = Decoder
        if self.config.cuda_graphs:
            decoder = GraphedDecoder
        elif self.config.decode_shapes == "context":
            decoder = ContextDecoder
        elif self.config.decode_shapes == "fixed":
            decoder = FixedDecoder
        self._decoder = decoder(self.model, self._steering, self._cache)
        log.info(
            "KV cache: %d slots of %d positions (sliding layers: %s), %.1f MiB of %s",
            shape.slots,
            shape.context,
            shape.ring or "no ring",
            shape.nbytes / 2**20,
            shape.dtype,
        )

    @classmethod
    def from_loaded(
        cls,
        loaded: LoadedModel,
        attachments: Sequence[SaeAttachment] = (),
        config: EngineConfig = EngineConfig(),
    ) -> Engine:
        """An engine for a loaded model; EOS ids from its generation config and tokenizer."""
        eos = loaded.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        tokenizer = loaded.tokenizer
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        if "<end_of_turn>" in tokenizer.get_vocab():
            eos_ids.add(tokenizer.convert_tokens_to_ids("<end_of_turn>"))
        return cls(
            loaded.model,
            special_ids=loaded.special_ids.tolist(),
            eos_ids=sorted(eos_ids),
            attachments=attachments,
            config=config,
        )

    # ---- any thread ---------------------------------------------------------------------------

    def add(
        self,
        request: GenerationRequest,
        notify: Callable[[], None] | None = None,
        *,
        reserved: bool = False,
    ) -> RequestHandle:
        """Queue a request; raises InvalidRequestError, QueueFullError or EngineClosedError.

        `reserved`: a text of a discovery call (a prefill-only read, or one of a Sweep's
        generations) that `reserve` counted already; it does not count again, and waits its
        turn for the discovery rows' share."""
        limits = self.limits
        validate_request(request, limits, self.d_sae_of)
        self._check_token_ids(request.prompt_ids)
        wanted = request.sampling.max_new_tokens or limits.default_max_new_tokens
        budget = min(wanted, self.slot_context - len(request.prompt_ids))
        row = Row(next(self._keys), request, OutputChannel(notify), budget, time.monotonic())
        row.reserved = reserved
        with self._cond:
            if self._closed:
                raise EngineClosedError("the server is shutting down and takes no new requests")
            if not row.reserved:
                self._check_capacity()
            self._waiting.append(row)
            self._cond.notify_all()
        return RequestHandle(row.key, row.channel)

    def reserve(self) -> None:
        """Count one discovery call (an Inspect or a Score, or a Contrast or a Sweep of any
        number of texts) as one request in flight until `release`; raises QueueFullError at
        capacity, or EngineClosedError. Its texts are then added with `reserved=True`."""
        with self._cond:
            if self._closed:
                raise EngineClosedError("the server is shutting down and takes no new requests")
            self._check_capacity()
            self._reserved += 1

    def release(self) -> None:
        """A call that `reserve` counted has ended."""
        with self._cond:
            self._reserved -= 1

    def _check_capacity(self) -> None:
        """Raise QueueFullError if `max_active_rows + max_queued_requests` requests are in
        flight: requests added unreserved, and the discovery calls reserved (under the lock)."""
        limits = self.config.limits
        capacity = limits.max_active_rows + limits.max_queued_requests
        rows = itertools.chain(self._waiting, self._running.values())
        if sum(not row.reserved for row in rows) + self._reserved >= capacity:
            raise QueueFullError(
                f"the server is at capacity ({capacity} requests in flight); retry later"
            )

    @property
    def discovery_rows(self) -> int:
        """The most rows discovery texts (reserved) hold at once: half the rows, at least one,
        so that generation always has rows of its own beside any number of discovery calls."""
        return max(1, self.config.limits.max_active_rows // 2)

    @property
    def limits(self) -> Limits:
        """The limits in force: the configured ones, a prompt within the model's context."""
        limits = self.config.limits
        longest = min(limits.max_prompt_tokens, self.context_length - 1)
        return replace(limits, max_prompt_tokens=longest)

    def abort(self, key: int) -> None:
        """Stop a queued or running request, freeing what it holds; harmless if already done."""
        self.finish(key, FinishReason.ABORTED)

    def finish(self, key: int, reason: FinishReason = FinishReason.STOP) -> None:
        """End a request at the next step boundary with `reason` (STOP: a stop string was found)."""
        with self._cond:
            self._finish_requests.setdefault(key, reason)
            self._cond.notify_all()

    def call(self, work: Callable[[], T]) -> Future[T]:
        """Run `work` on the engine thread between two steps (model work off the batch: the
        device is the engine's alone, and a CUDA graph being captured must not see another
        thread's kernels); its result or exception in the future. Keep it short: the running
        rows wait for it. Raises EngineClosedError once closed."""
        future: Future[T] = Future()
        with self._cond:
            if self._closed or self._stopping:
                raise EngineClosedError("the server is shutting down and takes no new requests")
            self._tasks.append((work, future))
            self._cond.notify_all()
        return future

    def _run_tasks(self) -> None:
        """Run the work `call` queued, each to its future."""
        while True:
            with self._cond:
                if not self._tasks:
                    return
                work, future = self._tasks.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(work())
            except Exception as exc:  # the caller's to raise, not the engine's
                future.set_exception(exc)

    def close(self) -> None:
        """Take no new requests; those in flight carry on."""
        with self._cond:
            self._closed = True

    def stop(self) -> None:
        """Make `run` return after its current step; whatever is left is aborted."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def snapshot(self) -> EngineSnapshot:
        with self._cond:
            return EngineSnapshot(
                waiting=len(self._waiting),
                running=len(self._running),
                steps=self._steps,
                cuda_graphs=self.cuda_graphs == "on",
            )

    @property
    def cuda_graphs(self) -> str:
        """How decode runs: "on" (replayed from CUDA graphs), "off", or "fallback: <why>" when
        a graph failed its check against the eager step (see `decoder`)."""
        decoder = self._decoder
        if not isinstance(decoder, GraphedDecoder):
            return "off"
        return "on" if decoder.fallback is None else f"fallback: {decoder.fallback}"

    @property
    def dtype(self) -> torch.dtype:
        """What the model computes in."""
        dtype: torch.dtype = next(self.model.parameters()).dtype
        return dtype

    @property
    def batch_invariance(self) -> str:
        """What keeps a request's results independent of what shares its batch: prefill is
        always one row per forward at chunk boundaries of the prompt alone; decode as
        `decode_shapes` says (buckets of rows and keys under CUDA graphs)."""
        if self.cuda_graphs == "on":
            decode = "rows and keys by batch bucket"
        else:
            decode = {
                "batch": "rows and keys by batch",
                "context": "every slot's whole context, rows by batch",
                "fixed": "fixed rows and context",
            }[self.config.decode_shapes]
        return f"prefill: one row per forward, chunks by the prompt alone; decode: {decode}"

    @property
    def kv_cache_bytes(self) -> int:
        """The static KV cache's size, fixed at startup."""
        return self._cache.shape.nbytes

    @property
    def idle(self) -> bool:
        """Nothing queued, running, or held: no rows, no cache."""
        with self._cond:
            return (
                not (self._waiting or self._running or self._finish_requests)
                and self._batch is None
            )

    # ---- the engine thread --------------------------------------------------------------------

    def run(self) -> None:
        """Step until `stop()`, sleeping while there is nothing to do."""
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping or self._has_work() or self._tasks)
                if self._stopping:
                    break
                work = self._has_work()
            self._run_tasks()
            if not work:
                continue
            try:
                self.step()
            except Exception:  # a bug, not a model fault: fail what is in flight, keep serving
                log.exception("engine step failed; failing every request in flight")
                self._finish_all(FinishReason.ERROR, "internal error in the engine")
        self._finish_all(FinishReason.ABORTED)
        self._drop_tasks()

    def _drop_tasks(self) -> None:
        """Fail the work `call` queued that never ran (the engine stopped first)."""
        with self._cond:
            tasks, self._tasks = list(self._tasks), deque()
        for _, future in tasks:
            if future.set_running_or_notify_cancel():
                future.set_exception(EngineClosedError("the server shut down before it ran"))

    def _finish_all(self, reason: FinishReason, error: str | None = None) -> None:
        with self._cond:
            rows = list(self._waiting) + list(self._running.values())
            self._waiting.clear()
        for row in rows:
            self._finish(row, reason, [], error)
        self._retire()
        self._set_batch(None)

    def step(self) -> StepStats:
        """One iteration: aborts, one decode step of the running batch, then prefill chunks."""
        start, hook_start = time.perf_counter(), self.hooks.seconds
        on_step = self.on_step  # read once: a callback set mid-step starts with the next step
        finished: list[FinishedRequest] = []
        self._rules_fired = {"apply": 0, "stop": 0}
        self._apply_finish_requests(finished)
        batch = self._batch
        decoded = self._decode(finished)
        admitted, prefill_tokens, first_tokens = self._admit(finished)
        with self._cond:
            self._steps += 1
        stats = StepStats(
            seconds=time.perf_counter() - start,
            batch_size=len(batch) if batch else 0,
            prefill_requests=admitted,
            prefill_tokens=prefill_tokens,
            generated_tokens=decoded + first_tokens,
            steered_rows=batch.steered_rows if batch else 0,
            hook_seconds=self.hooks.seconds - hook_start,
            rules_fired=dict(self._rules_fired),
            finished=tuple(finished),
        )
        if on_step is not None:
            on_step(stats)
        return stats

    def _has_work(self) -> bool:
        return bool(self._waiting or self._running or self._finish_requests)

    def _check_token_ids(self, prompt: Sequence[int]) -> None:
        # Its length is the limits' to check: the prompt limit in force is within the context.
        if not all(0 <= t < self.vocab_size for t in prompt):
            raise InvalidRequestError("prompt", f"token ids must be in [0, {self.vocab_size})")

    def _apply_finish_requests(self, finished: list[FinishedRequest]) -> None:
        with self._cond:
            requests, self._finish_requests = self._finish_requests, {}
            queued = [row for row in self._waiting if row.key in requests]
            for row in queued:
                self._waiting.remove(row)
        running = [self._running[key] for key in requests if key in self._running]
        for row in queued + running:
            self._finish(row, requests[row.key], finished)
        self._retire()

    def _decode(self, finished: list[FinishedRequest]) -> int:
        if self._batch is None:
            return 0
        rows = [self._running[key] for key in self._batch.keys]
        try:
            logits, done = self._batch.decode(self._decoder, [row.generated[-1] for row in rows])
        except Exception:
            log.exception("decode step failed; failing its %d requests", len(rows))
            for row in rows:
                self._finish(
                    row, FinishReason.ERROR, finished, "internal error in the model's forward pass"
                )
            self._set_batch(None)
            return 0
        generated = self._emit(rows, logits, done, finished)
        self._retire()
        return generated

    def _admit(self, finished: list[FinishedRequest]) -> tuple[int, int, int]:
        """Prefill within the step's token budget: the next chunk of each prompt under way, then
        waiting requests into free rows, in order of arrival (a chunk that does not fit in what
        is left waits for the next step, and so does everything after it); (requests admitted,
        prompt tokens computed, first tokens)."""
        self._apply_finish_requests(finished)  # aborts that came during the decode: never prefill
        left = self._chunks.per_step
        admitted = tokens = generated = 0
        under_way = iter(list(self._prompts))
        while True:
            prompt = next(under_way, None)
            if prompt is None:
                prompt = self._start(left)
                if prompt is None:
                    break
                admitted += 1
            size = self._chunk(prompt)
            cost = self._chunks.cost(size, prompt.done)
            if cost > left:
                break
            left -= cost
            tokens += size
            generated += self._prefill(prompt, size, finished)
        return admitted, tokens, generated

    def _chunk(self, prompt: _Prompt) -> int:
        """The size of a prompt's next chunk, from its own positions only (see ChunkCosts)."""
        return self._chunks.chunk(prompt.done, len(prompt.row.request.prompt_ids) - prompt.done)

    def _start(self, left: int) -> _Prompt | None:
        """The next waiting request, given a free row and slot, if its first chunk fits."""
        with self._cond:
            if not self._waiting or len(self._running) >= self.config.limits.max_active_rows:
                return None
            head: Row | None = self._waiting[0]
            if head is not None and head.reserved and self._discovery_full():
                # Discovery texts wait for their share; generation behind them goes first.
                head = next((r for r in self._waiting if not r.reserved), None)
            if head is None:
                return None
            row = head
            first = self._chunks.chunk(0, len(row.request.prompt_ids))
            if self._chunks.cost(first, 0) > left:
                return None
            self._waiting.remove(row)
            self._running[row.key] = row
        row.admitted_at = time.monotonic()
        row.sampler = RowSampler.create(row.request.sampling, self.device)
        held = {p.slot for p in self._prompts}
        held.update(self._batch.slots if self._batch is not None else ())
        # The lowest free slot: decode steps run over slots 0..n-1.
        slot = next(slot for slot in range(self._cache.shape.slots) if slot not in held)
        prompt = _Prompt(row, slot)
        self._prompts.append(prompt)
        return prompt

    def _discovery_full(self) -> bool:
        return sum(row.reserved for row in self._running.values()) >= self.discovery_rows

    def _prefill(self, prompt: _Prompt, size: int, finished: list[FinishedRequest]) -> int:
        """Run a prompt's next chunk of `size` tokens; after its last, the row joins the batch
        with its first token. The tokens emitted (0 or 1)."""
        row, ids = prompt.row, prompt.row.request.prompt_ids
        start = prompt.done
        try:
            if prompt.plan is None:  # the latch as the row came: rules fired before it
                prompt.plan = self._steering.plan([row.ask])
            logits, done = prefill_chunk(
                self.model,
                self._steering,
                self._cache,
                prompt.slot,
                ids[start : start + size],
                start,
                prompt.plan,
                prompt.scored(start, size),
            )
        except Exception:
            log.exception("prefill failed for a request of %d prompt tokens", len(ids))
            self._finish(
                row, FinishReason.ERROR, finished, "internal error while reading the prompt"
            )
            self._retire()
            return 0
        prompt.done = start + size
        self._cache.parked[prompt.slot] = prompt.done
        if prompt.done < len(ids):
            self._emit([row], None, done, finished, prompt)
            self._retire()
            return 0
        self._prompts.remove(prompt)
        self._cache.parked[prompt.slot] = 0
        generated = self._emit([row], logits, done, finished, prompt)
        if row.key in self._running:
            self._slots.write(prompt.slot, row.ask)
            joined = Batch([row.key], [row.ask], [prompt.slot], [len(ids)])
            self._set_batch(Batch.concatenate([b for b in (self._batch, joined) if b is not None]))
        return generated

    def _emit(
        self,
        rows: list[Row],
        logits: torch.Tensor | None,
        done: Forward,
        finished: list[FinishedRequest],
        prompt: _Prompt | None = None,
    ) -> int:
        """Sample each row's next token from logits (B, V); send it with what the forward read;
        finish rows that are done (a prefill-only row with its readings). No logits: a chunk of
        a prompt (one row, `prompt`) before its last, which only reads."""
        # One device-to-host copy per step: each row's next token (argmax or its draw), whether
        # its logits are finite, the log-probabilities rows asked for, and what the hooks read
        # (edit counts so far, watched features, rules fired, inspections).
        readback = Readback()
        failed: set[int] = set()  # rows whose draw raised
        asked = [b for b, row in enumerate(rows) if _wants_logprobs(row)]
        tops = [rows[b].request.sampling.top_logprobs or 0 for b in asked]
        if logits is not None:
            usable = torch.isfinite(logits).all(dim=-1)
            chosen, failed = self._choose(rows, logits, usable)
            readback.add("chosen", chosen)
            readback.add("finite", usable)
            if asked:
                queue_logprobs(readback, logits, chosen, asked, max(tops))
        done.queue(readback)
        if done.scored is not None:
            readback.add("scored", done.scored)
        readback.fetch()
        tokens, finite = (readback.get(n)[0] if n in readback else [] for n in ("chosen", "finite"))
        logprobs: dict[int, Logprobs] = {}
        if asked and logits is not None:
            logprobs = dict(zip(asked, read_logprobs(readback, tops), strict=True))
        if prompt is not None and "scored" in readback:
            prompt.logprobs += readback.get("scored")[0]
        results = done.results(readback)
        now, emitted = time.monotonic(), 0
        for b, row in enumerate(rows):
            assert row.sampler is not None
            if logits is not None and not finite[b]:
                self._finish(
                    row, FinishReason.ERROR, finished, "non-finite values in the model's output"
                )
                continue
            result = results[b]
            row.seen(done.source, done.at[b], readback)
            if prompt is not None:
                result = prompt.read(result)
            if logits is None:  # a prompt's chunk before its last: record the rules that fired
                if result is not None and result.fired:
                    self._fire(row, result.fired, finished, end=False)
                continue
            if row.request.inspect is not None:
                self._finish(row, FinishReason.PREFILLED, finished, readings=result)
                continue
            fired = result is not None and (result.fired or row.fired)
            if fired and self._fire(row, result.fired if result else (), finished):
                continue  # a stop rule: the token of this forward is not emitted
            if b in failed:
                self._finish(row, FinishReason.ERROR, finished, "internal error while sampling")
                continue
            token = int(tokens[b])
            row.generated.append(token)
            row.first_token_at = row.first_token_at or now
            emitted += 1
            watched = [result.watched] if result is not None and row.request.watch else []
            scored = [logprobs[b]] if b in logprobs else []
            reason = self._stop_reason(row, token)
            if reason is None:
                self._push(row, [token], watched=watched, logprobs=scored)
            else:
                self._finish(
                    row, reason, finished, tokens=[token], watched=watched, logprobs=scored
                )
        return emitted

    @staticmethod
    def _choose(
        rows: list[Row], logits: torch.Tensor, finite: torch.Tensor
    ) -> tuple[torch.Tensor, set[int]]:
        """Each row's next token as a (B,) tensor on the device, without a sync: the argmax of
        a greedy row, the draw of a sampled one; and the rows whose draw raised (their argmax
        stands in, never emitted). A row whose logits are not finite draws from zeros instead
        (it fails once the copy says so), so a broken row cannot fault the device."""
        chosen = logits.argmax(dim=-1)
        drawn: list[int] = []
        draws: list[torch.Tensor] = []
        failed: set[int] = set()
        for b, row in enumerate(rows):
            if row.sampler is None or row.sampler.greedy or row.request.inspect is not None:
                continue
            try:
                draws.append(row.sampler.sample(torch.where(finite[b], logits[b], 0.0)))
                drawn.append(b)
            except Exception:
                log.exception("sampling failed for request %r", row.request.request_id)
                failed.add(b)
        if draws:
            index = torch.tensor(drawn, device=logits.device)
            chosen = chosen.index_put((index,), torch.cat(draws))
        return chosen, failed

    def _fire(
        self, row: Row, rules: tuple[int, ...], finished: list[FinishedRequest], end: bool = True
    ) -> bool:
        """Record rules that fired; True if a stop rule has fired (with `end`: the request is
        finished). A prompt's chunks read it whole, as one forward would (its receipts count
        every position), and its rules switch on after it: a rule that fires in a chunk may
        fire again in the next one, and counts once."""
        new = [i for i in rules if i not in row.fired]
        row.fired.update(new)
        for i in new:
            self._rules_fired["stop" if row.request.rules[i].stop else "apply"] += 1
        if end and any(row.request.rules[i].stop for i in row.fired):
            self._finish(row, FinishReason.CONDITION, finished)
            return True
        return False

    def _stop_reason(self, row: Row, token: int) -> FinishReason | None:
        if token in self.eos_ids and not row.request.sampling.ignore_eos:
            return FinishReason.EOS
        if len(row.generated) >= row.budget:
            return FinishReason.LENGTH
        return None

    def _push(self, row: Row, tokens: list[int], **more: Any) -> None:
        row.channel.push(
            tokens,
            completion_tokens=len(row.generated),
            prompt_tokens=len(row.request.prompt_ids),
            seed=row.sampler.seed if row.sampler else (row.request.sampling.seed or 0),
            **more,
        )

    def _finish(
        self,
        row: Row,
        reason: FinishReason,
        finished: list[FinishedRequest],
        error: str | None = None,
        tokens: list[int] | None = None,
        watched: list[tuple[float, ...]] | None = None,
        readings: RowResult | None = None,
        logprobs: list[Logprobs] | None = None,
    ) -> None:
        self._push(
            row,
            tokens or [],
            finish_reason=reason,
            error=error,
            watched=watched or [],
            logprobs=logprobs or [],
            receipts=row.receipts(),
            readings=readings,
        )
        with self._cond:
            self._running.pop(row.key, None)
        finished.append(
            FinishedRequest(
                request_id=row.request.request_id,
                finish_reason=reason,
                prompt_tokens=len(row.request.prompt_ids),
                completion_tokens=len(row.generated),
                queued_at=row.queued_at,
                admitted_at=row.admitted_at,
                first_token_at=row.first_token_at,
                finished_at=time.monotonic(),
            )
        )

    def _retire(self) -> None:
        """Drop finished rows from the batch (and the padding only they needed) and from the
        prompts under way (their slots free)."""
        for prompt in [p for p in self._prompts if p.row.key not in self._running]:
            self._prompts.remove(prompt)
            self._cache.parked[prompt.slot] = 0
        if self._batch is not None:
            self._set_batch(self._batch.filter(set(self._running)))

    def _set_batch(self, batch: Batch | None) -> None:
        """Make `batch` the running one; the slots it no longer holds are cleared."""
        kept = set(batch.slots) if batch is not None else set()
        for slot in self._batch.slots if self._batch is not None else ():
            if slot not in kept:
                self._slots.clear(slot)
        self._batch = batch
