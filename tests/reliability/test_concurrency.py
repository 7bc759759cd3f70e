"""Scenario 2: as many streams as the server has rows, steered and not, all at once."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from steering_proto.v1 import steering_pb2 as pb
from tests.reliability.rig import ABLATE, ADD, SCALE, SET, Rig, gen
from tests.server.harness import edit

PROMPTS = [
    "Tell me about the sea",
    "Hi",
    "The forest was tall and the moss was green and the air was cold",
    "A small bird sang",
]
EDITS = [
    [],
    [edit("res", 5, SET, 30.0)],
    [edit("deep", 3, ADD, 20.0), edit("res", 9, ABLATE)],
    [edit("res", 7, SCALE, 8.0, active=True)],
]


def test_max_active_streams_each_get_exactly_their_tokens(rig: Rig) -> None:
    rows = rig.engine.config.limits.max_active_rows
    calls = [
        gen(
            PROMPTS[i % len(PROMPTS)],
            edits=EDITS[(i // 2) % len(EDITS)] if i % 2 else [],
            max_new_tokens=24 + 7 * i,
            ignore_eos=True,
            rid=f"concurrent-{i}",
        )
        for i in range(rows)
    ]
    references = [rig.reference(c) for c in calls]
    began = time.monotonic()
    with rig.gate() as gate, ThreadPoolExecutor(rows) as pool:
        running = [pool.submit(rig.call, c) for c in calls]
        rig.wait_until(lambda: rig.held() == rows)  # all in, none started
        gate.open()
        results = [r.result(60) for r in running]
    # They ran together: every one was admitted before the first of them finished.
    rig.wait_until(lambda: len(rig.finished_since(began)) == rows)
    ours = rig.finished_since(began)
    assert max(f.admitted_at or 0 for f in ours) < min(f.finished_at for f in ours)
    for call, result, reference in zip(calls, results, references, strict=True):
        assert result.outcome == "ok", result.details
        assert len(result.ids) == call.sampling.max_new_tokens
        assert result.finals == 1 and result.chunks[-1].finish_reason == pb.FINISH_REASON_LENGTH
        assert result.chunks[-1].usage.completion_tokens == call.sampling.max_new_tokens
        assert result.ids == reference.ids and result.text == reference.text
