"""Scenario 12: after every other scenario (this module runs last), the servers' request
counters equal, outcome by outcome, what their clients observed."""

from __future__ import annotations

from collections import Counter

from tests.reliability.conftest import RIGS


def test_counters_equal_what_clients_observed() -> None:
    counted_all: Counter[str] = Counter()
    seen_all: Counter[str] = Counter()
    for rig in RIGS:
        counted, seen = rig.final if rig.final is not None else (rig.counters(), +rig.ledger)
        assert counted == seen, f"the server counted {dict(counted)}, clients saw {dict(seen)}"
        counted_all.update(counted)
        seen_all.update(seen)
    print(f"Generate calls by outcome over {len(RIGS)} servers: {dict(sorted(seen_all.items()))}")
    assert sum(seen_all.values()) > 0 or not RIGS
