"""Bad clocks: one terminal whose clock is wrong cannot move event time for everyone, while a real
gap in all traffic still lets time move on (docs/detectors.md, "Time").

Each case replays a simulated two-hour file with and without a disturbance and compares every
alert, ids and content. Without the rule, the +25 h and 2099 events settle everybody's pending
decisions at once, and the +1 h 25 min one, one event at a time, fires near misses.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

from monitor.core.alerts import Alert
from monitor.core.batches import Batch
from monitor.scoring.metrics import Metrics
from monitor.scoring.pipeline import MemorySink, Stats, replay_messages, run, score_batch
from monitor.scoring.policy import Policy
from monitor.scoring.scorer import Scorer
from monitor.simulation.simulator import Simulation, SimulationSpec
from tests.builders import T0, encode, event, final_states, states

BAD = "T-BADCLOCK"
# Far enough for any clock in these files: the rule switched off, as it was before. Beyond the
# 31 days a configuration may set, so the copy skips validation.
NO_RULE = Policy().model_copy(update={"max_future_skew": 100 * 365 * 86400.0})


@pytest.fixture(scope="module")
def lines() -> list[bytes]:
    """`posmon simulate --hours 2 --seed 3`: incidents, near misses, late and malformed lines."""
    return list(Simulation(SimulationSpec(hours=2, seed=3)).lines())


def _time(line: bytes) -> datetime | None:
    try:
        return datetime.fromisoformat(json.loads(line)["event_time"])
    except (ValueError, KeyError, TypeError):
        return None  # a malformed line of the file


def _bad_clock(at: str) -> bytes:
    """A large purchase from a terminal, merchant and card seen nowhere else, dated `at`."""
    body = event(
        "auth_request",
        0,
        ref="BAD-1",
        card="tok_badclock_0001",
        terminal=BAD,
        merchant="M-BADCLOCK",
        amount=2_000_000,
        event_id="bad-clock-1",
    )
    return json.dumps({**body, "event_time": at}).encode()


def _others(alerts: Sequence[Alert]) -> list[Alert]:
    return [a for a in alerts if a.terminal_id != BAD]


def _final(alerts: Sequence[Alert]) -> dict[str, Alert]:
    return final_states(alerts)


AHEAD = {"+1h25": timedelta(hours=1, minutes=25), "+25h": timedelta(hours=25), "2099": None}


@pytest.mark.parametrize("batch_size", [1, 1000])
@pytest.mark.parametrize("ahead", list(AHEAD))
def test_one_bad_clock_changes_no_other_alert(
    lines: list[bytes], ahead: str, batch_size: int
) -> None:
    middle = len(lines) // 2
    now = next(t for t in map(_time, lines[middle:]) if t is not None)
    shift = AHEAD[ahead]
    at = "2099-01-01T00:00:00Z" if shift is None else (now + shift).isoformat()
    before_scorer = Scorer(Policy())
    before, _ = replay_messages(lines, before_scorer, batch_size)
    scorer = Scorer(Policy())
    after, _ = replay_messages(
        [*lines[:middle], _bad_clock(at), *lines[middle:]], scorer, batch_size
    )

    assert states(_others(after.alerts)) == states(before.alerts)  # every version, in order
    assert _final(_others(after.alerts)) == _final(before.alerts)
    assert scorer.watermark.value == before_scorer.watermark.value  # close ignored it too
    assert scorer.watermark.future == 1
    # It was applied to its own keys: its large amount is an alert on arrival.
    assert [a.detector for a in after.alerts if a.terminal_id == BAD] == ["large_amount"]
    assert before.alerts  # the file has alerts to lose


def _shifted(lines: list[bytes], at: int, gap: timedelta) -> Iterator[bytes]:
    """The file with every event from line `at` on moved `gap` later: a gap in all traffic."""
    yield from lines[:at]
    for line in lines[at:]:
        t = _time(line)
        if t is None:
            yield line
            continue
        body = json.loads(line)
        body["event_time"] = (t + gap).isoformat()
        yield json.dumps(body).encode()


@pytest.mark.parametrize("batch_size", [1, 1000])
def test_a_gap_in_all_traffic_still_lets_time_move_on(lines: list[bytes], batch_size: int) -> None:
    """Two quiet hours, then everybody resumes: the alerts are those of a watermark that follows
    every event (the rule off), decisions due after the gap included."""
    gapped = list(_shifted(lines, len(lines) // 2, timedelta(hours=2)))
    scorer = Scorer(Policy())
    sink, _ = replay_messages(gapped, scorer, batch_size)
    free = Scorer(NO_RULE)
    expected, _ = replay_messages(gapped, free, batch_size)

    assert _final(sink.alerts) == _final(expected.alerts)
    assert scorer.watermark.value == free.watermark.value  # it reached the end of the file
    resumed = min(t for t in map(_time, gapped[len(lines) // 2 :]) if t is not None)
    after_gap = [a for a in sink.final_alerts().values() if a.last_seen >= resumed]
    assert after_gap  # decisions due after the gap were taken
    assert 0 < scorer.watermark.future < 10  # the first terminals back waited for a quorum


class _Partitioned:
    """The file split by terminal over `partitions`, `per_batch` lines a batch: a stream."""

    def __init__(self, lines: list[bytes], partitions: int, per_batch: int = 300) -> None:
        self._batches: list[Batch] = []
        for start in range(0, len(lines), per_batch):
            chunks: dict[int, list[bytes]] = {p: [] for p in range(partitions)}
            for line in lines[start : start + per_batch]:
                chunks[_partition(line, partitions)].append(line)
            self._batches.append(Batch(list(chunks.items()), active=set(range(partitions))))

    def add(self, index: int, partition: int, message: bytes) -> None:
        """Deliver `message` on `partition` in batch `index`, after that chunk's messages."""
        batch = self._batches[index]
        chunks = dict(batch.chunks)
        chunks[partition] = [*chunks.get(partition, []), message]
        active = {*(batch.active or ()), partition}
        self._batches[index] = Batch(list(chunks.items()), active=active)

    def poll(self) -> Batch | None:
        return self._batches.pop(0) if self._batches else None

    def commit(self, batch: Batch) -> None:
        pass


def _partition(line: bytes, partitions: int) -> int:
    try:
        terminal = str(json.loads(line)["terminal_id"])
    except (ValueError, KeyError, TypeError):
        return 0
    return zlib.crc32(terminal.encode()) % partitions


def _stream(source: _Partitioned) -> tuple[MemorySink, Scorer]:
    sink, scorer = MemorySink(), Scorer(Policy())
    run(source, sink, scorer, Stats())
    return sink, scorer


@pytest.mark.parametrize("where", ["a busy partition", "a partition with no events yet"])
def test_a_bad_clock_on_one_partition_moves_no_partition(lines: list[bytes], where: str) -> None:
    """Per partition: the frontier of a partition is its own newest time; a partition with none
    yet compares with the other partitions' newest."""
    before, before_scorer = _stream(_Partitioned(lines, 2))
    source = _Partitioned(lines, 2)
    middle = len(lines) // 600
    partition = 1 if where == "a busy partition" else 2
    source.add(middle, partition, _bad_clock("2099-01-01T00:00:00Z"))
    after, scorer = _stream(source)

    assert states(_others(after.alerts)) == states(before.alerts)
    assert scorer.watermark.value == before_scorer.watermark.value
    assert scorer.watermark.future == 1
    assert before.alerts


def test_the_watermark_metric_counts_events_ahead() -> None:
    scorer, stats = Scorer(Policy()), Stats()
    metrics = Metrics(CollectorRegistry())
    ahead = encode([event("auth_request", 0, ref="R0"), event("auth_request", 3600, ref="R1")])
    score_batch(Batch([(0, ahead)]), scorer, stats)
    metrics.observe_scorer(scorer, stats, seconds=0.0)
    assert metrics.registry.get_sample_value("posmon_events_future_total") == 1


def test_while_streaming_an_event_ahead_of_the_broker_clock_is_a_dead_letter() -> None:
    """`append_ms` is the broker's newest append time of the chunk: an event more than the skew
    past it is refused as `future`, and not scored; one within the skew is scored."""
    scorer, stats = Scorer(Policy()), Stats()
    now_ms = int(T0.timestamp() * 1000)
    messages = encode(
        [
            event("auth_request", 0, ref="R0"),
            event("auth_request", 599, ref="R1"),  # within max_future_skew of the broker
            event("auth_request", 601, ref="R2"),
        ]
    )
    batch = Batch([(3, messages)], offsets={3: [40, 41, 42]}, append_ms={3: now_ms})
    _, rejected = score_batch(batch, scorer, stats)
    assert [(r.reason, r.partition, r.offset) for r in rejected] == [("future", 3, 42)]
    assert '"R2"' in rejected[0].raw
    assert stats.rejected["future"] == 1
    assert scorer.consumed["auth_request"] == 2
    assert scorer.watermark.future == 0  # refused, not held: it was not scored

    replayed, replay_stats = Scorer(Policy()), Stats()  # a replay has no broker clock
    _, rejected = score_batch(Batch([(0, messages)]), replayed, replay_stats)
    assert rejected == [] and replayed.consumed["auth_request"] == 3
