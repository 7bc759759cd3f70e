"""Sweep's arithmetic without a model: repeated 3-grams and the recommendation rule."""

from __future__ import annotations

from steering.discovery.dose import SweepPoint, recommend, repeat_share


def _point(strength: float, concept: float, logprob: float) -> SweepPoint:
    return SweepPoint(strength, strength * 10, concept, logprob, 0.0, ())


def test_repeat_share_counts_three_grams_seen_before() -> None:
    assert repeat_share([1, 2]) == 0.0
    assert repeat_share([1, 2, 3, 4]) == 0.0
    assert repeat_share([1, 2, 3, 1, 2, 3]) == 1 / 4  # (1,2,3) again; (2,3,1) and (3,1,2) new
    assert repeat_share([7] * 6) == 3 / 4


def test_the_smallest_strength_with_half_the_gain_and_fluent_text_is_recommended() -> None:
    points = [_point(0, 1.0, -2.0), _point(1, 2.0, -2.2), _point(2, 6.0, -2.5), _point(4, 9.0, -4)]
    # Largest gain 8 (strength 4, too costly in log-probability); half of it: 4 -> strength 2.
    got = recommend(points)
    assert (got.found, got.strength, got.value) == (True, 2, 20)
    assert "-2.500" in got.reason and "(-2.000)" in got.reason


def test_nothing_is_recommended_without_a_gain_or_within_one_nat() -> None:
    flat = recommend([_point(0, 1.0, -2.0), _point(1, 1.0, -2.0), _point(2, 0.5, -2.0)])
    assert not flat.found and "above strength 0" in flat.reason
    broken = recommend([_point(0, 1.0, -2.0), _point(1, 1.2, -2.1), _point(2, 5.0, -3.5)])
    assert not broken.found and "1 nat" in broken.reason


def test_the_baseline_may_come_anywhere_and_ties_go_to_the_smaller_size() -> None:
    points = [_point(2, 5.0, -2.0), _point(0, 1.0, -2.0), _point(-1, 5.0, -2.0)]
    assert recommend(points).strength == -1
