"""The reliability suite: a tiny Gemma 2 served on loopback, and the idle invariant after each test.

`STEERING_RELIABILITY_SCALE=small` (the default, what `make test` and CI run) keeps counts low;
`full` (`make test-reliability`) runs the counts the scenarios are specified with.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from steering import save_sae
from steering.demo.toy import random_sae
from tests.reliability.process import ProcessRig
from tests.reliability.rig import ADD, SET, LogCapture, Rig
from tests.server.harness import ServerThread, edit, request

# Hypothesis keeps caches on disk: in the temporary folder, not in the checkout.
os.environ.setdefault(
    "HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "steering-hypothesis")
)


@dataclass(frozen=True)
class Scale:
    name: str
    storm_streams: int  # concurrent streams in one cancel-storm round
    storm_rounds: int
    fuzz_examples: int
    isolation_examples: int
    deadline_calls: int
    slow_reader_interval_s: float


SCALES = {
    "small": Scale("small", 30, 1, 200, 4, 12, 0.25),
    "full": Scale("full", 100, 5, 10_000, 40, 60, 1.0),
}


@pytest.fixture(scope="session")
def scale() -> Scale:
    name = os.environ.get("STEERING_RELIABILITY_SCALE", "small")
    if name not in SCALES:
        raise pytest.UsageError(f"STEERING_RELIABILITY_SCALE must be one of {sorted(SCALES)}")
    return SCALES[name]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the suite `reliability`; the metrics-truth check runs after every other scenario."""
    here = Path(__file__).parent
    ours = [item for item in items if here in Path(item.path).parents]
    for item in ours:
        item.add_marker(pytest.mark.reliability)
    last = [item for item in ours if Path(item.path).name == "test_metrics_truth.py"]
    if not last:
        return
    rest = [item for item in items if item not in last]
    end = max((i for i, item in enumerate(rest) if item in ours), default=len(rest) - 1)
    items[:] = rest[: end + 1] + last + rest[end + 1 :]


D_MODEL = 64


@pytest.fixture(scope="session")
def sae_specs_reliability(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = tmp_path_factory.mktemp("reliability-saes")
    res = save_sae(random_sae(D_MODEL, 128, seed=1, threshold=0.02), root / "res", "gemma_scope_2")
    deep = save_sae(random_sae(D_MODEL, 96, seed=2, threshold=0.02), root / "deep", "gemma_scope_1")
    return [f"res={res}@1", f"deep={deep}@2"]


CAPTURE = LogCapture()


@pytest.fixture(scope="session")
def logs() -> Iterator[LogCapture]:
    logging.getLogger().addHandler(CAPTURE)
    yield CAPTURE
    logging.getLogger().removeHandler(CAPTURE)


RIGS: list[Rig | ProcessRig] = []  # every server of the session, for the metrics-truth check


def start_rig(
    logs: LogCapture,
    model: Path,
    saes: list[str],
    metadata: list[tuple[str, str]] | None = None,
    **settings: object,
) -> Rig:
    srv = ServerThread(model=model, sae=saes, **settings)
    rig = Rig(srv, logs)
    RIGS.append(rig)
    # Warm every path once (steered and not, both SAEs) before the memory baseline.
    for edits in ([], [edit("res", 3, SET, 8.0), edit("deep", 5, ADD, -4.0)]):
        message = request("Warm up the sea", edits=edits, max_new_tokens=8)
        result = rig.call(message, metadata=metadata)
        assert result.outcome == "ok", result.details
    rig.check_idle()
    rig.set_memory_baseline()
    return rig


@pytest.fixture(scope="session")
def rig(
    logs: LogCapture, model_folders: dict[str, Path], sae_specs_reliability: list[str]
) -> Iterator[Rig]:
    """The shared server: 8 rows, room for 128 more in the queue."""
    rig = start_rig(
        logs,
        model_folders["gemma2"],
        sae_specs_reliability,
        max_active_rows=8,
        max_queued_requests=128,
        max_new_tokens=480,
        default_max_new_tokens=16,
    )
    yield rig
    rig.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    """Errors are logged on purpose by other tests: the capture listens to this suite only
    (its fixtures' setup and teardown included)."""
    CAPTURE.active = Path(__file__).parent in Path(item.path).parents
    try:
        return (yield)
    finally:
        CAPTURE.active = False


@pytest.fixture(autouse=True)
def idle_invariant(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each scenario: every server it used is back to idle (see `Rig.check_idle`)."""
    rigs = [
        request.getfixturevalue(name)
        for name in request.fixturenames
        if name == "rig" or name.endswith("_rig")
    ]
    for rig in rigs:
        rig.before_scenario()
    yield
    for rig in rigs:
        rig.check_idle()
