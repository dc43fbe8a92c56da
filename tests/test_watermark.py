"""The watermark per partition: the slowest active partition sets it, idle ones are left out."""

from __future__ import annotations

from monitor.core.batches import Batch
from monitor.scoring.pipeline import Stats, score_batch
from monitor.scoring.policy import Policy
from monitor.scoring.scorer import Scorer
from monitor.scoring.state import NEVER, Watermark
from tests.builders import encode, event, tick

S = 1_000_000


def test_the_slowest_active_partition_sets_the_watermark() -> None:
    wm = Watermark(lateness_us=120 * S)
    wm.maxima.update({0: 1000 * S, 1: 400 * S})
    assert wm.advance() == 280 * S
    assert wm.advance(active={0}) == 880 * S  # partition 1 went idle
    assert wm.advance(active={0, 1}) == 880 * S  # and it never goes back


def test_an_assigned_partition_that_delivered_nothing_holds_the_watermark() -> None:
    wm = Watermark(lateness_us=0)
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
