"""Fixtures of the client tests: a fake steering server on a loopback port, one per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.client.fake_server import FakeSteering, serve


@pytest.fixture
def fake() -> FakeSteering:
    return FakeSteering()


@pytest.fixture
def target(fake: FakeSteering) -> Iterator[str]:
    with serve(fake) as address:
        yield address
