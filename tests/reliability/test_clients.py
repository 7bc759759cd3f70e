"""Scenarios 6 and 7: a client killed mid-stream, and a client that reads very slowly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.reliability.conftest import Scale
from tests.reliability.rig import ADD, SET, Result, Rig, gen
from tests.server.harness import edit

ROOT = Path(__file__).resolve().parents[2]


def test_a_killed_client_frees_its_row(rig: Rig) -> None:
    rid = "killed-client"
    with rig.slowed(0.01):  # 400 tokens take seconds: the client dies mid-stream
        client = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.stream_client", rig.srv.target, rid, "400"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert client.stdout is not None
            assert client.stdout.readline().strip() == "first"
            assert rig.where(rid) == "running"
            os.kill(client.pid, signal.SIGKILL)
            killed = time.monotonic()
            rig.wait_until(lambda: rig.where(rid) is None, timeout=10)
            freed_after = time.monotonic() - killed
        finally:
            client.kill()
            client.wait(10)
    rig.record("cancelled")  # what the server must count: the client cannot report it
    done = rig.finished_one(rid)
    assert done.finish_reason.value == "aborted" and done.completion_tokens < 400
    assert freed_after < 2.0, f"the row was freed {freed_after:.2f} s after the kill"


OTHERS = [
    gen("Tell me about the sea", rid="other-0", max_new_tokens=48, ignore_eos=True),
    gen(
        "Hi",
        rid="other-1",
        edits=[edit("res", 5, SET, 30.0)],
        max_new_tokens=48,
        ignore_eos=True,
    ),
    gen(
        "A small bird sang",
        rid="other-2",
        edits=[edit("deep", 3, ADD, 20.0)],
        max_new_tokens=48,
        ignore_eos=True,
    ),
    gen("Once upon a time", rid="other-3", max_new_tokens=48, ignore_eos=True),
]


def _run_others(rig: Rig) -> tuple[float, list[Result]]:
    start = time.monotonic()
    with ThreadPoolExecutor(len(OTHERS)) as pool:
        results = list(pool.map(rig.call, OTHERS))
    return time.monotonic() - start, results


def test_a_slow_reader_does_not_slow_the_others(rig: Rig, scale: Scale) -> None:
    references = [rig.reference(m) for m in OTHERS]
    slow_message = gen("The slow reader", rid="slow-reader", max_new_tokens=64, ignore_eos=True)
    slow_reference = rig.reference(slow_message)
    alone, _ = _run_others(rig)
    slow_reads = 6  # messages read one per interval; the rest at once
    read_at: list[float] = []

    def slowly(i: int, chunk: object) -> None:
        read_at.append(time.monotonic())
        if i < slow_reads:
            time.sleep(scale.slow_reader_interval_s)

    start = time.monotonic()
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(rig.consume, rig.stub.Generate(slow_message), on_chunk=slowly)
        rig.wait_until(lambda: len(read_at) >= 1)
        together, results = _run_others(rig)
        # The engine is done with the slow request while its reader is still at its first
        # messages: the engine never waits for a reader, and what is held for it is the tokens
        # in transit (at most its max_new_tokens), never a row.
        engine_done = rig.finished_one("slow-reader", since=start).finished_at
        assert len(read_at) <= slow_reads, "the engine waited for the slow reader"
        assert engine_done < read_at[0] + slow_reads * scale.slow_reader_interval_s
        slow_result = slow.result(60)
    assert slow_result.outcome == "ok" and slow_result.ids == slow_reference.ids
    assert slow_result.text == slow_reference.text and slow_result.finals == 1
    for r, ref in zip(results, references, strict=True):
        assert r.outcome == "ok" and r.ids == ref.ids
    assert together < 2 * alone + 0.5, f"others took {together:.2f} s, {alone:.2f} s alone"
