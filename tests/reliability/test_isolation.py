"""Scenario 9: steering isolation. A canary's greedy output is unchanged by requests that share
its batch with extreme (valid) edits, whatever their order, timing and prompt lengths."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steering_proto.v1 import steering_pb2 as pb
from tests.reliability.conftest import Scale
from tests.reliability.rig import SCALE, SET, Rig, gen
from tests.server.harness import edit

WIDTHS = {"res": 128, "deep": 96}
CAP = 1e4  # the server's max_abs_edit_value
WORDS = [
    "the",
    "sea",
    "was",
    "calm",
    "and",
    "blue",
    "and",
    "the",
    "boats",
    "drifted",
    "slowly",
    "toward",
    "the",
    "harbour",
]
CANARIES = [
    gen("Tell me about the sea", rid="iso-canary", max_new_tokens=48, ignore_eos=True),
    gen(
        "Tell me about the sea",
        rid="iso-canary-steered",
        edits=[edit("res", 5, SET, 30.0), edit("deep", 7, SCALE, 4.0, active=True)],
        max_new_tokens=48,
        ignore_eos=True,
    ),
]

EXTREME_EDIT = st.builds(
    lambda sae, feature, mode, value, active: edit(sae, feature % WIDTHS[sae], mode, value, active),
    st.sampled_from(sorted(WIDTHS)),
    st.integers(0, 127),
    st.integers(1, 4),
    st.sampled_from([CAP, -CAP, CAP / 2, -CAP / 3, 0.0, 1e-30]),
    st.booleans(),
)


@st.composite
def noise(draw: st.DrawFn) -> tuple[pb.GenerateRequest, float]:
    """A request with extreme edits and a prompt of 2 to ~300 tokens; a delay before it."""
    edits = draw(
        st.lists(EXTREME_EDIT, min_size=1, max_size=64, unique_by=lambda e: (e.sae, e.feature))
    )
    words = draw(st.integers(1, 150))  # up to ~300 tokens: within the context with 40 more
    prompt = " ".join(WORDS[i % len(WORDS)] for i in range(words))
    message = gen(prompt, edits=edits, max_new_tokens=draw(st.integers(1, 40)), ignore_eos=True)
    return message, draw(st.floats(0.0, 0.02))


def test_a_canary_is_unchanged_by_extreme_neighbours(rig: Rig, scale: Scale) -> None:
    references = [rig.reference(c) for c in CANARIES]

    @settings(
        max_examples=scale.isolation_examples,
        deadline=None,
        derandomize=scale.name == "small",
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        which=st.integers(0, len(CANARIES) - 1),
        before=st.lists(noise(), max_size=5),
        after=st.lists(noise(), max_size=5),
    )
    def one(which: int, before: list, after: list) -> None:
        with ThreadPoolExecutor(12) as pool:
            futures = []
            for message, delay in before:
                futures.append(pool.submit(rig.call, message))
                time.sleep(delay)
            canary = pool.submit(rig.call, CANARIES[which])
            for message, delay in after:
                time.sleep(delay)
                futures.append(pool.submit(rig.call, message))
            result = canary.result(120)
            neighbours = [f.result(120) for f in futures]
        assert result.outcome == "ok", result.details
        assert result.ids == references[which].ids and result.text == references[which].text
        assert all(n.outcome == "ok" for n in neighbours), [n.details for n in neighbours]

    one()
