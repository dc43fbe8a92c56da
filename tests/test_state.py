"""The bounded event-time stores, directly."""

from __future__ import annotations

from monitor.scoring.state import SeenIds

S = 1_000_000


def test_seen_ids_remember_an_id_for_at_least_the_horizon() -> None:
    seen = SeenIds(horizon_us=60 * S, cap=1000)
    assert seen.add("a", 0)
    assert not seen.add("a", 10 * S)  # a redelivery
    assert seen.add("b", 61 * S)  # rotates: "a" moves to the previous generation
    assert not seen.add("a", 62 * S)  # still remembered
    assert seen.add("c", 122 * S)  # rotates again: "a" is forgotten, 122 s after it was added
    assert seen.add("a", 123 * S)
    assert seen.evicted == 0


def test_seen_ids_rotate_early_at_the_cap_and_count_what_they_push_out() -> None:
    seen = SeenIds(horizon_us=3600 * S, cap=4)  # two generations of two
    for event_id in "abcd":
        assert seen.add(event_id, 0)
    assert len(seen) == 4
    assert seen.add("e", 0)  # the current generation is full: "a" and "b" go
    assert seen.evicted == 2
    assert seen.add("a", 0)
    assert not seen.add("e", 0)
