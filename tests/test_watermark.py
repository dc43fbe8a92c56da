"""The watermark per partition: the slowest active partition sets it, idle ones are left out."""

from __future__ import annotations

import pytest

from monitor.core.batches import Batch
from monitor.core.events import Event, decode
from monitor.scoring.pipeline import Stats, score_batch
from monitor.scoring.policy import Policy
from monitor.scoring.scorer import Scorer
from monitor.scoring.state import NEVER, Watermark
from tests.builders import T0, encode, event, tick

S = 1_000_000


def test_the_slowest_active_partition_sets_the_watermark() -> None:
    wm = Watermark(lateness_us=120 * S, skew_us=600 * S)
    wm.maxima.update({0: 1000 * S, 1: 400 * S})
    assert wm.advance() == 280 * S
    assert wm.advance(active={0}) == 880 * S  # partition 1 went idle
    assert wm.advance(active={0, 1}) == 880 * S  # and it never goes back


def test_an_assigned_partition_that_delivered_nothing_holds_the_watermark() -> None:
    wm = Watermark(lateness_us=0, skew_us=600 * S)
    wm.maxima[0] = 1000 * S
    assert wm.advance(active={0, 1}) == NEVER
    wm.maxima[1] = 10 * S
    assert wm.advance(active={0, 1}) == 10 * S


def _batch(partition: int, events: list[dict[str, object]], active: set[int] | None) -> Batch:
    return Batch([(partition, encode(events))], active=active)


def test_a_fast_partition_does_not_make_a_slow_ones_events_late() -> None:
    scorer, stats = Scorer(Policy()), Stats()
    score_batch(_batch(0, [tick(3600)], {0, 1}), scorer, stats)
    ghost = [
        event("auth_request", 0, ref="R1"),
        event("auth_declined", 1, ref="R1", response_code="05"),
        event("debit_posted", 300, ref="R1"),
    ]
    score_batch(_batch(1, ghost, {0, 1}), scorer, stats)
    assert scorer.late == 0
    alerts, _ = score_batch(_batch(1, [tick(3000, ref="t1")], {0, 1}), scorer, stats)
    assert [a.detector for a in alerts] == ["failed_then_debited"]


def test_when_every_partition_is_idle_the_due_decisions_are_taken() -> None:
    scorer, stats = Scorer(Policy()), Stats()
    ghost = [
        event("auth_request", 0, ref="R1"),
        event("auth_declined", 1, ref="R1", response_code="05"),
        event("debit_posted", 300, ref="R1"),
        tick(1300),
    ]
    alerts, _ = score_batch(_batch(0, ghost, {0}), scorer, stats)
    assert alerts == []  # the watermark is at 1300 - 120 s, before the decision at 1200 + grace
    alerts, _ = score_batch(Batch([], active=set()), scorer, stats)
    assert [a.detector for a in alerts] == ["failed_then_debited"]


# -- clocks ahead: `Watermark.ahead`, the rare path of the scorer (docs/detectors.md, "Time") ----

SKEW = 600 * S
Q = Watermark.QUORUM


def _one(body: dict[str, object]) -> Event:
    decoded = decode(encode([body])[0])
    assert isinstance(decoded, Event)
    return decoded


def _ahead(wm: Watermark, frontier: int, events: list[tuple[int, str]], partition: int = 0) -> int:
    """Feed events (seconds, terminal) ahead of the partition's frontier as the scorer does."""
    for t, terminal in events:
        if t * S - frontier > wm.skew:
            frontier = wm.ahead(partition, frontier, t * S, terminal)
        else:
            frontier = max(frontier, t * S)
    return frontier


def test_one_terminal_ahead_does_not_move_the_frontier_however_often() -> None:
    wm = Watermark(lateness_us=0, skew_us=SKEW)
    frontier = _ahead(wm, 1000 * S, [(1000 + 3600 + i, "T-BAD") for i in range(50)])
    assert frontier == 1000 * S
    assert wm.future == 50


def test_a_quorum_of_terminals_ahead_moves_the_frontier_to_where_they_all_are() -> None:
    wm = Watermark(lateness_us=0, skew_us=SKEW)
    resumed = [(8000 + i, f"T-{i}") for i in range(Q - 1)]
    assert _ahead(wm, 1000 * S, resumed) == 1000 * S  # not yet
    # A clock in 2099 among them stays ahead; the fifth terminal back moves time on.
    frontier = _ahead(wm, 1000 * S, [(4_000_000_000, "T-2099"), (8100, "T-last")])
    assert frontier == 8100 * S
    assert wm.future == Q - 1 + 1
    assert _ahead(wm, frontier, [(4_000_000_001, "T-2099")]) == frontier


def test_a_jump_goes_only_as_far_as_a_quorum_of_terminals_has_gone() -> None:
    wm = Watermark(lateness_us=0, skew_us=SKEW)
    far = [(10**6 + i * 10**5, f"T-far-{i}") for i in range(Q - 1)]  # a few bad clocks, spread
    assert _ahead(wm, 0, [*far, (7200, "T-back")]) == 7200 * S
    assert wm.future == Q - 1


def test_terminals_ahead_long_ago_do_not_add_up_to_a_quorum() -> None:
    """A terminal counts as ahead until the frontier moves on by the skew without it: bad clocks
    spread over a day of moving traffic never make a jump."""
    wm = Watermark(lateness_us=0, skew_us=SKEW)
    frontier = 0
    for hour in range(24):
        base = hour * 3600
        traffic = [(base + m * 60, "T-ok") for m in range(60)]
        frontier = _ahead(wm, frontier, [*traffic, (base + 40 * 3600, f"T-bad-{hour}")])
        assert frontier == (base + 59 * 60) * S
    assert wm.future == 24


def test_terminals_still_ahead_after_a_jump_count_towards_the_next() -> None:
    wm = Watermark(lateness_us=0, skew_us=SKEW)
    first = [(2000, "T-a"), *((9000 + i, f"T-{i}") for i in range(Q - 1))]
    frontier = _ahead(wm, 0, first)
    assert frontier == 2000 * S  # the fifth-newest was the 2000 s terminal
    # Those at 9000 s are still ahead; the jump did not make them stale: one more is a quorum.
    assert _ahead(wm, frontier, [(9100, "T-b")]) == 9100 * S


def test_a_partition_without_a_frontier_compares_with_the_others() -> None:
    wm = Watermark(lateness_us=0, skew_us=SKEW)
    assert (
        wm.ahead(0, NEVER, 4_000_000_000 * S, "T-2099") == 4_000_000_000 * S
    )  # nothing to compare
    wm = Watermark(lateness_us=0, skew_us=SKEW)
    wm.maxima.update({0: 1000 * S, 1: 900 * S})
    assert wm.ahead(2, NEVER, 4_000_000_000 * S, "T-2099") == 1000 * S  # the newest stands in
    assert wm.future == 1
    assert wm.ahead(2, NEVER, 1500 * S, "T-ok") == 1500 * S


def test_close_moves_to_the_frontier_never_to_a_clock_ahead() -> None:
    scorer = Scorer(Policy())
    scorer.process_many(
        [
            _one(event("auth_request", 0, ref="R0")),
            _one(event("auth_request", 25 * 3600, ref="R1", terminal="T-BAD")),
            _one(event("auth_request", 60, ref="R2")),
        ]
    )
    scorer.close()
    assert scorer.watermark.value == (int(T0.timestamp()) + 60) * S
    assert scorer.watermark.future == 1


@pytest.mark.parametrize("per_event", [True, False], ids=["advance per event", "close only"])
def test_what_stays_ahead_does_not_depend_on_the_order_within_the_lateness(
    per_event: bool,
) -> None:
    """In time order each event is within the skew of the one before; arriving 100 s early,
    the last is ahead of everything seen, until the one before it arrives."""
    times = [(0, "R0"), (590, "R1"), (690, "R2")]
    watermarks = []
    for order in (times, [times[0], times[2], times[1]]):
        scorer = Scorer(Policy())
        for at, ref in order:
            scorer.process(_one(event("auth_request", at, ref=ref)))
            if per_event:
                scorer.advance()
        if per_event:  # within a batch it may differ; from its end on it does not
            watermarks.append(scorer.watermark.value)
        scorer.close()
        watermarks.append(scorer.watermark.value)
    end = (int(T0.timestamp()) + 690) * S
    assert watermarks == ([end - 120 * S, end] if per_event else [end]) * 2
