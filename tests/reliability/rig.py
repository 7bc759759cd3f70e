"""A server under test with the bookkeeping the reliability scenarios check after each run.

`Rig` wraps the in-process `ServerThread`: every call made through it lands in a ledger of the
outcomes clients observed (to compare with the server's counters), solo greedy references are
cached, a `gate` freezes the engine thread inside a forward, and `check_idle` asserts the idle
invariant: no rows, empty queue, gauges 0, hooks as installed, memory near its baseline,
counters equal to the ledger, and no unexpected error logged.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import re
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import grpc

from steering.engine.stats import FinishedRequest, StepStats
from steering_proto.v1 import steering_pb2 as pb
from tests.server.harness import ServerThread, request

SET, ADD, SCALE, ABLATE = (
    pb.EDIT_MODE_SET,
    pb.EDIT_MODE_ADD,
    pb.EDIT_MODE_SCALE,
    pb.EDIT_MODE_ABLATE,
)

PAGE = os.sysconf("SC_PAGE_SIZE")
MiB = 1024 * 1024


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of a process, from /proc (no psutil)."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def settled_rss() -> int:
    """This process's resident memory once garbage is collected and freed heap returned."""
    gc.collect()
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed heap otherwise
    return rss_bytes()


# What a request holds on the server: none may outlive the requests once the server is idle.
PER_REQUEST = ("Row", "OutputChannel", "RequestHandle", "RowSampler", "TextStream", "Batch")


# gRPC keeps the exception of the last call that ended in an error (its traceback holds that
# request's frames): a request or two may linger; a leak grows with the traffic (after 50
# refused calls, one `Row` is left, not 50).
LINGERING = 2


def live_per_request_objects() -> Counter[str]:
    gc.collect()
    return Counter(n for o in gc.get_objects() if (n := type(o).__name__) in PER_REQUEST)


def hook_count(model: Any) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def gen(prompt: str | None = None, *, rid: str = "", **kwargs: Any) -> pb.GenerateRequest:
    """`tests.server.harness.request` with a request id."""
    message = request(prompt, **kwargs)
    message.request_id = rid
    return message


def outcome_of(code: grpc.StatusCode) -> str:
    return "ok" if code == grpc.StatusCode.OK else code.name.lower()


@dataclass
class Result:
    """One Generate call as a client saw it."""

    outcome: str
    chunks: list[pb.GenerateResponse]
    details: str = ""
    seconds: float = 0.0

    @property
    def ids(self) -> list[int]:
        return [t for c in self.chunks for t in c.token_ids]

    @property
    def text(self) -> str:
        return "".join(c.text for c in self.chunks)

    @property
    def finals(self) -> int:
        """Messages that carry a finish reason (exactly one, the last, for a complete call)."""
        return sum(c.finish_reason != pb.FINISH_REASON_UNSPECIFIED for c in self.chunks)


def read(
    call: Any, *, on_chunk: Callable[[int, pb.GenerateResponse], None] | None = None
) -> Result:
    """Read a Generate call to its end (or its error status)."""
    start, chunks = time.monotonic(), []
    try:
        for i, chunk in enumerate(call):
            chunks.append(chunk)
            if on_chunk is not None:
                on_chunk(i, chunk)
        result = Result("ok", chunks)
    except grpc.RpcError as err:
        result = Result(outcome_of(err.code()), chunks, err.details() or "")
    result.seconds = time.monotonic() - start
    return result


def _release_frames(tb: TracebackType | None) -> None:
    """Drop the locals of a logged traceback's finished frames (and of the finished callers
    above it): pytest keeps log records for a test phase, and their frames would keep the failed
    requests' rows alive that long, which `check_idle` would take for a leak."""
    if tb is None:
        return
    traceback.clear_frames(tb)
    frame = tb.tb_frame.f_back
    while frame is not None:
        try:
            frame.clear()
        except RuntimeError:  # still executing: it and its callers are live code, not garbage
            return
        frame = frame.f_back


class LogCapture(logging.Handler):
    """Keeps the ERROR records of every logger in this process while `active` (while the
    reliability suite runs: other tests log the failures they inject on purpose)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []
        self.active = False
        self._lock_records = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if not self.active:
            return
        with self._lock_records:
            self.records.append(record)

    def drain(self) -> list[logging.LogRecord]:
        with self._lock_records:
            out, self.records = self.records, []
        return out


@dataclass
class Gate:
    """Holds the engine thread inside its next forward until `open()` (or a safety timeout)."""

    opened: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)
    timeout: float = 60.0

    def hook(self, *_: Any) -> None:
        if self.opened.is_set():
            return
        self.entered.set()
        self.opened.wait(self.timeout)

    def open(self) -> None:
        self.opened.set()

    def wait_entered(self, timeout: float = 10.0) -> None:
        assert self.entered.wait(timeout), "the engine never reached a forward"


class Client:
    """Generate calls read to their end, with a ledger of the outcomes their clients observed
    (to hold against the server's counters) and cached solo references."""

    def __init__(self, stub: Any) -> None:
        self.stub = stub
        self.ledger: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._references: dict[bytes, Result] = {}

    def wait_idle(self) -> None:
        raise NotImplementedError

    def record(self, outcome: str) -> None:
        with self._lock:
            self.ledger[outcome] += 1

    def call(self, request: pb.GenerateRequest, **kwargs: Any) -> Result:
        """One Generate call read to its end; its outcome goes to the ledger."""
        return self.consume(self.stub.Generate(request, **kwargs))

    def consume(
        self,
        call: Any,
        *,
        on_chunk: Callable[[int, pb.GenerateResponse], None] | None = None,
    ) -> Result:
        result = read(call, on_chunk=on_chunk)
        self.record(result.outcome)
        return result

    def start(
        self, pool: Executor, request: pb.GenerateRequest, **kwargs: Any
    ) -> tuple[Any, Future[Result]]:
        """Start a call read to its end in `pool`: the call (to cancel) and its result."""
        call = self.stub.Generate(request, **kwargs)
        return call, pool.submit(self.consume, call)

    def reference(self, request: pb.GenerateRequest) -> Result:
        """The request's output when it runs alone (greedy: the same whatever else runs)."""
        key = request.SerializeToString(deterministic=True)
        if key not in self._references:
            self.wait_idle()
            result = self.call(request)
            assert result.outcome == "ok", result.details
            self._references[key] = result
        return self._references[key]


class Rig(Client):
    def __init__(self, srv: ServerThread, logs: LogCapture, memory_bound: int = 64 * MiB) -> None:
        super().__init__(srv.stub)
        self.srv = srv
        self.logs = logs
        self.memory_bound = memory_bound
        self.finished: list[FinishedRequest] = []
        self._expected_errors: list[str] = []
        self._carried_errors: list[str] = []
        engine = srv.engine
        on_step = engine.on_step

        def record(stats: StepStats) -> None:
            if on_step is not None:
                on_step(stats)
            with self._lock:
                self.finished.extend(stats.finished)

        engine.on_step = record
        self.counters_at_start = self._counters()
        self.hooks_at_start = hook_count(engine.model)
        self.rss_baseline = 0
        self.objects_baseline: Counter[str] = Counter()
        self.tasks_baseline = 0
        self.final: tuple[Counter[str], Counter[str]] | None = None  # (counted, seen) at close

    def wait_idle(self) -> None:
        self.srv.wait_idle()

    # ---- engine introspection ---------------------------------------------------------------

    @property
    def engine(self) -> Any:
        return self.srv.engine

    def where(self, request_id: str) -> str | None:
        """'waiting' or 'running' while the engine holds the request, else None."""
        engine = self.engine
        with engine._cond:
            if any(r.request.request_id == request_id for r in engine._waiting):
                return "waiting"
            if any(r.request.request_id == request_id for r in engine._running.values()):
                return "running"
        return None

    def abort_pending(self, request_id: str) -> bool:
        """True while the engine holds the request and has been told to abort it."""
        engine = self.engine
        with engine._cond:
            rows = list(engine._waiting) + list(engine._running.values())
            keys = [r.key for r in rows if r.request.request_id == request_id]
            return bool(keys) and keys[0] in engine._finish_requests

    @contextmanager
    def slowed(self, seconds: float) -> Iterator[None]:
        """Every forward takes at least `seconds` longer inside the block."""
        handle = self.engine.model.register_forward_hook(lambda *_: time.sleep(seconds))
        try:
            yield
        finally:
            handle.remove()

    def held(self) -> int:
        """Requests the engine holds, waiting or running."""
        snapshot = self.engine.snapshot()
        return int(snapshot.waiting + snapshot.running)

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < end, "timed out waiting for the server"
            time.sleep(0.005)

    def finished_of(self, request_id: str) -> list[FinishedRequest]:
        with self._lock:
            return [f for f in self.finished if f.request_id == request_id]

    def finished_one(
        self, request_id: str, since: float = 0.0, timeout: float = 10.0
    ) -> FinishedRequest:
        """The engine's record of the one request with this id (queued after `since`), once
        it has finished."""

        def found() -> list[FinishedRequest]:
            return [f for f in self.finished_of(request_id) if f.queued_at >= since]

        self.wait_until(lambda: bool(found()), timeout)
        (done,) = found()
        return done

    def finished_since(self, monotonic: float) -> list[FinishedRequest]:
        """Requests queued since `monotonic` that the engine has finished (in any way)."""
        with self._lock:
            return [f for f in self.finished if f.queued_at >= monotonic]

    @contextmanager
    def gate(self) -> Iterator[Gate]:
        """Freeze the engine at its next forward; opened (and removed) when the block ends."""
        gate = Gate()
        handle = self.engine.model.register_forward_pre_hook(gate.hook)
        try:
            yield gate
        finally:
            gate.open()
            handle.remove()

    @contextmanager
    def expect_errors(self, *patterns: str) -> Iterator[None]:
        """Error log records matching one of `patterns` are expected inside the block."""
        self._expected_errors.extend(patterns)
        try:
            yield
        finally:
            self._unexpected_errors()  # sorted now, while the patterns still apply
            del self._expected_errors[-len(patterns) :]

    # ---- the invariant ----------------------------------------------------------------------

    def _counters(self) -> Counter[str]:
        metrics = self.srv.metrics()
        out: Counter[str] = Counter()
        for key, value in metrics.items():
            if m := re.fullmatch(r'steering_requests_total\{outcome="(\w+)"\}', key):
                out[m.group(1)] = int(value)
        return out

    def counters(self) -> Counter[str]:
        """Requests by outcome since the rig started, as the server counted them."""
        now = self._counters()
        now.subtract(self.counters_at_start)
        return +now

    def _unexpected_errors(self) -> list[str]:
        lines = []
        for record in self.logs.drain():
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
                _release_frames(record.exc_info[2])
            if not any(re.search(p, text) for p in self._expected_errors):
                lines.append(f"{record.name}: {text}")
        self._carried_errors += lines
        return lines

    def close(self) -> None:
        """Check the invariant a last time, keep the final counts, stop the server. (Memory
        is not checked here: a session-wide server closes after unrelated tests ran.)"""
        try:
            self.check_idle(memory=False)
        finally:
            self.final = (self.counters(), +self.ledger)
            self.srv.close()

    def before_scenario(self) -> None:
        self.set_memory_baseline()

    def set_memory_baseline(self) -> None:
        """Memory now is the baseline of `check_idle` (taken before each scenario: the test
        process also holds the clients, whose memory, hypothesis's above all, is not the
        server's)."""
        self.rss_baseline = settled_rss()
        self.objects_baseline = live_per_request_objects()
        self.tasks_baseline = self.server_tasks()

    def server_tasks(self) -> int:
        """asyncio tasks alive on the server's event loop."""

        async def count() -> int:
            return len(asyncio.all_tasks())

        return int(self.srv.run(count()))

    def check_idle(self, timeout: float = 15.0, *, memory: bool = True) -> None:
        """The idle invariant: assert the server is back where it started."""
        srv, engine = self.srv, self.engine
        frontend = srv.app.frontend
        assert frontend is not None
        self.wait_until(lambda: engine.idle and frontend.in_flight == 0, timeout)
        snapshot = engine.snapshot()
        assert (snapshot.running, snapshot.waiting) == (0, 0), snapshot
        metrics = srv.metrics()
        assert metrics["steering_requests_running"] == 0
        assert metrics["steering_requests_waiting"] == 0
        assert hook_count(engine.model) == self.hooks_at_start, "a hook was left behind"
        assert engine.hooks.installed
        assert frontend.running, "the engine thread died"
        # A handler counts its outcome as it ends, just after its client saw the status.
        with suppress(AssertionError):
            self.wait_until(lambda: self.counters() == +self.ledger, 5.0)
        counted, seen = dict(self.counters()), dict(+self.ledger)
        assert counted == seen, f"the server counted {counted}, clients saw {seen}"
        self._unexpected_errors()
        errors, self._carried_errors = self._carried_errors, []
        assert not errors, "errors logged:\n" + "\n".join(errors)
        if memory and self.rss_baseline:
            with suppress(AssertionError):  # handler tasks end just after their streams
                self.wait_until(lambda: self.server_tasks() <= self.tasks_baseline, 5.0)
            assert self.server_tasks() <= self.tasks_baseline, "asyncio tasks left behind"
            left = live_per_request_objects() - self.objects_baseline
            assert all(n <= LINGERING for n in left.values()), f"left behind: {dict(left)}"
            grown = settled_rss() - self.rss_baseline
            assert grown < self.memory_bound, f"memory grew by {grown / MiB:.1f} MiB"
