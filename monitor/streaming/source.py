"""`KafkaSource`: a consumer-group member reading the input topic as `Batch`es.

Offsets are committed by hand, after the sink has the batch's alerts and dead letters
(`monitor.scoring.pipeline.run`), so a crash re-reads the uncommitted batch: nothing is lost,
and deterministic alert ids keep a re-read from paging twice.

State rebuild. The scorer's state (attempts, windows, timers) lives in memory. With
`rebuild="beginning"` (the default) a source seeks each partition it newly receives back to the
beginning of the topic, so the scorer rebuilds that partition's event-time state from everything
retained before it catches up; alerts re-emitted on the way keep their ids, so the alerts topic
may carry duplicates but never misses one. Partitions a member keeps across a rebalance go on
where they were. Offsets at or below the group's committed offset are never committed, so a
restart during a rebuild never moves the group back, and `rebuilding` stays true until every
partition has passed the offset committed when it was assigned (/readyz: "not ready"). This
reads the whole retention on every start: right for the demo and short retention; with long
retention production wants a snapshot on a compacted changelog topic, or a replay from
`offsets_for_times(now - horizon)` (docs/streaming.md, "Restarts and rebalances").
`rebuild="committed"` resumes at the committed offsets with empty state (tests, stateless tools).

Tansu (0.6.0) quirks this module works around: `end_offsets()` can be wrong (101 for a partition
whose high watermark was 110, after batched sends), so lag and "read to the end" use the high
watermark of fetch responses (`consumer.highwater`); a group join takes about half of
`session_timeout_ms`; a `fetch_max_wait_ms` of 500 adds that much latency to every quiet poll
(hence 10); commit metadata is not kept; `read_committed` also returns aborted records, so nothing
here relies on transactions. kafka-python 3.0.12 drops a group join that completes while no
`poll()` is waiting for it and joins again (`coordinator/base.py`, `join_group_async`), so every
member must keep polling from a thread of its own (two members polled in turn from one thread
failed to settle within 40 s in 3 runs of 9).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition  # type: ignore[import-untyped]
from kafka.errors import CommitFailedError, KafkaError  # type: ignore[import-untyped]
from kafka.metrics.measurable_stat import AbstractMeasurableStat  # type: ignore[import-untyped]
from kafka.structs import OffsetAndMetadata  # type: ignore[import-untyped]

from monitor.core.batches import Batch
from monitor.streaming.client import client_config
from monitor.streaming.settings import KafkaSettings

log = logging.getLogger("posmon.kafka")

Clock = Callable[[], float]
# Where to start reading the held partitions after an assignment, given the group's committed
# offsets: the offsets a state snapshot covers, or None to read them from the beginning.
StartAt = Callable[[frozenset[int], Mapping[int, int]], Mapping[int, int] | None]

# kafka-python 3.0.12 closes its connections from the calling thread while its IO thread may be
# reading the answer to a fetch still in flight (every poll leaves one), and logs that as an ERROR
# with a traceback: `close` gives the last fetch's answer `fetch_max_wait_ms` (at most 0.2 s) and
# this to arrive.
_SETTLE_S = 0.05
_SETTLE_MAX_S = 0.2  # a stop must not wait out a long `fetch_max_wait_ms`

# Without a fetch answered for this long (beyond `fetch_max_wait_ms`, which a fetch may take on a
# quiet topic) the broker counts as unreachable: /readyz answers 503.
SILENT_AFTER_S = 5.0


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Tells the source about rebalances. Runs on kafka-python's IO thread: must not block."""

    def __init__(self, source: KafkaSource) -> None:
        self._source = source

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._source._assigned_by_rebalance()


class _LastAnswer(AbstractMeasurableStat):  # type: ignore[misc]
    """When the broker last answered a fetch: a statistic on kafka-python's `fetch-latency`
    sensor, which records every fetch response (on its IO thread, in monotonic milliseconds)."""

    def __init__(self) -> None:
        self.at_ms: float | None = None

    def record(self, config: object, value: float, time_ms: float) -> None:
        self.at_ms = time_ms

    def measure(self, config: object, now: float) -> float:
        return (now - self.at_ms) / 1000 if self.at_ms is not None else float("inf")


class KafkaSource:
    """A consumer-group member reading `settings.topic` as `Batch`es (a `pipeline.Source`).

    `poll`, `commit` and `close` belong to one thread (the scoring loop). `lag()`,
    `assignment()`, `rebalances` and `rebuilding` are snapshots taken at the last poll, safe to
    read from another thread (a metrics collector, /readyz). `clock` only times idleness.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        clock: Clock = time.monotonic,
        start_at: StartAt | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self.start_at = start_at
        self._lock = threading.Lock()
        self._held: frozenset[int] = frozenset()  # the assignment as of the last rebalance
        self._new: set[int] = set()  # newly assigned, committed offsets not read yet
        self._pending = False  # an assignment the polling thread has not acted on yet
        self._handed_on: dict[int, int] = {}  # committed offsets when the state was restarted
        self._caught_up_since: dict[int, float] = {}  # clock since a partition was seen caught up
        self._observed_at: float | None = None  # clock at the last `_observe`
        self._committed: dict[int, int] = {}  # highest offset the group committed, per partition
        self._rebuild_until: dict[int, int] = {}  # partition -> committed offset at assignment
        self._last_record: dict[int, float] = {}  # clock at the last record (or the assignment)
        self._lag: dict[int, int] = {}
        self._rebalances = 0
        self._known: frozenset[int] = frozenset()  # the assignment as the polling thread knows it
        config = client_config(settings, "consumer")
        if settings.group_instance_id is not None:  # a group member only, not `read_topic`'s
            config["group_instance_id"] = settings.group_instance_id
        self._consumer = KafkaConsumer(**config)
        self._consumer.subscribe([settings.topic], listener=_Listener(self))
        self._polled_at = 0.0  # time.monotonic() after the last poll: a fetch is in flight
        self._closed = False
        # kafka-python reconnects through an outage by itself and says nothing; a fetch answer
        # is what proves the broker reachable (`connected`). Its registry has no public getter.
        metrics = self._consumer._metrics
        self._answered = _LastAnswer()
        metrics.get_sensor("fetch-latency").add(
            metrics.metric_name(
                "last-fetch-answer-seconds-ago",
                "posmon",
                "Seconds since the broker last answered a fetch",
            ),
            self._answered,
        )

    @property
    def connected(self) -> bool:
        """Whether the broker answered a fetch in the last `SILENT_AFTER_S` (beyond
        `fetch_max_wait_ms`); false before the first answer. Safe from any thread."""
        at_ms = self._answered.at_ms
        silent_s = time.monotonic() - at_ms / 1000 if at_ms is not None else float("inf")
        return silent_s <= SILENT_AFTER_S + self._settings.fetch_max_wait_ms / 1000

    @property
    def rebalances(self) -> int:
        """How many assignments this member received (the first one included)."""
        return self._rebalances

    @property
    def rebuilding(self) -> bool:
        """True from a new assignment until every held partition has been read up to the offset
        the group had committed when it was assigned (set on the rebalance itself, so /readyz
        never answers from the state of an earlier assignment)."""
        return self._pending or bool(self._rebuild_until)

    def covered(self) -> dict[int, int] | None:
        """Per held partition, the offset below which every message has been scored and
        committed (on the polling thread, after a commit): what a state snapshot taken now
        covers. None while an assignment is pending or a partition is still being rebuilt."""
        if self._pending or self._rebuild_until:
            return None
        return {p: self._committed.get(p, 0) for p in self._known}

    def assignment(self) -> set[int]:
        """The partitions this member holds."""
        return set(self._held)

    def lag(self) -> dict[int, int]:
        """Messages behind the high watermark per partition (unknown ones are left out)."""
        return dict(self._lag)

    def _assigned_by_rebalance(self) -> None:
        """Called on the IO thread: note the assignment; with `rebuild="beginning"` flag every
        held partition for a read from the beginning (a snapshot may move them on in `poll`).

        `seek_to_beginning` only flags the partitions for an offset reset, so it is safe here;
        reading the committed offsets blocks, so `poll` does it on the polling thread.
        """
        held = frozenset(tp.partition for tp in self._consumer.assignment())
        with self._lock:
            new = held - self._held
            self._held = held
            self._new = (self._new | new) & held
            self._pending = True
            self._rebalances += 1
        log.info("assigned %s of %s (new: %s)", sorted(held), self._settings.topic, sorted(new))
        if held and self._settings.rebuild == "beginning":
            self._consumer.seek_to_beginning(*self._partitions(held))

    def partitions(self) -> int:
        """How many partitions the topic has, as the consumer's metadata says (0: not known)."""
        return len(self._consumer.partitions_for_topic(self._settings.topic) or ())

    def _partitions(self, partitions: Iterable[int]) -> list[TopicPartition]:
        return [TopicPartition(self._settings.topic, p) for p in sorted(partitions)]

    def poll(self) -> Batch:
        """One `consumer.poll`: its messages by partition (tombstones as b""), never None."""
        s = self._settings
        records = self._consumer.poll(timeout_ms=s.poll_timeout_ms, max_records=s.max_poll_records)
        self._polled_at = time.monotonic()
        now = self._clock()
        with self._lock:
            new, self._new = self._new, set()
            held, pending = self._held, self._pending
        if s.rebuild == "beginning" and pending:
            return self._restart(held, now)
        if new or held != self._known:
            self._on_assigned(new, held, now)
        chunks: list[tuple[int, list[bytes]]] = []
        position: dict[int, int] = {}
        offsets: dict[int, list[int]] = {}
        append_ms: dict[int, int] = {}
        for tp, messages in records.items():
            p = tp.partition
            chunks.append((p, [m.value if m.value is not None else b"" for m in messages]))
            offsets[p] = [m.offset for m in messages]
            append_ms[p] = max(m.timestamp for m in messages)
            position[p] = messages[-1].offset + 1
            self._last_record[p] = now
        handed_on = self._handed_on if self._rebuild_until else None
        return Batch(
            chunks,
            position,
            self._observe(held, records, now),
            offsets,
            append_ms,
            handed_on=handed_on,
            held=held,
        )

    def _restart(self, held: frozenset[int], now: float) -> Batch:
        """After any change of assignment (rebuild="beginning"): the scorer's state spans every
        partition, so all of it starts anew. Each held partition is read again from the offset
        a snapshot covers (`start_at`) or from the beginning, up to the offset the group had
        committed (`rebuilding` until then). Records this poll returned are dropped: they are
        read again from the new positions. Returns an empty `fresh` batch."""
        committed: dict[int, int] = {}
        try:
            for tp in self._partitions(held):
                committed[tp.partition] = self._consumer.committed(tp) or 0
        except KafkaError as exc:  # an outage in the middle of a rebalance: try again next poll
            log.warning("cannot read the committed offsets (%s); trying again", exc)
            return Batch([], {}, None)
        self._known = held
        start = self.start_at(held, committed) if self.start_at is not None else None
        if start is not None:
            for tp in self._partitions(held):
                self._consumer.seek(tp, start[tp.partition])
        elif held:  # flagged by the rebalance already; again, in case a snapshot was refused late
            # (never with none held: kafka-python reads no partitions as all of them)
            self._consumer.seek_to_beginning(*self._partitions(held))
        begin = start or {}
        self._committed = committed
        self._handed_on = committed
        self._rebuild_until = {p: c for p, c in committed.items() if c > begin.get(p, 0)}
        self._last_record = dict.fromkeys(held, now)
        self._caught_up_since = {}
        self._lag = {}
        with self._lock:
            if self._held == held:
                self._pending = False
        if self._rebuild_until:
            origin = "a snapshot" if start is not None else "the beginning"
            log.info("rebuilding state from %s up to %s", origin, self._rebuild_until)
        return Batch([], {}, None, fresh=True)

    def _on_assigned(self, new: set[int], held: frozenset[int], now: float) -> None:
        """After a rebalance, on the polling thread: forget revoked partitions, read the
        committed offsets of the new ones (the floor for commits and for `rebuilding`)."""
        for p in self._known - held:  # revoked: the next owner starts from the committed offset
            self._committed.pop(p, None)
            self._last_record.pop(p, None)
            self._rebuild_until.pop(p, None)
        self._known = held
        for tp in self._partitions(new):
            committed = self._consumer.committed(tp)
            self._committed[tp.partition] = committed or 0
            self._last_record[tp.partition] = now
            if self._settings.rebuild == "beginning" and committed:
                self._rebuild_until[tp.partition] = committed
        if self._rebuild_until:
            log.info("rebuilding state from the beginning up to %s", self._rebuild_until)

    def _observe(
        self, held: frozenset[int], records: Mapping[TopicPartition, object], now: float
    ) -> frozenset[int] | None:
        """Update lag and rebuild progress; return the partitions that are not idle.

        Idle means seen caught up (position at the high watermark, no record) at every poll for
        `idle_partition_s`: such a partition must not hold the others' watermark back. A poll
        that comes later than half that after the previous one starts the count again: after a
        stalled loop the high watermarks are old news, and a partition the loop could not read
        is not a quiet one. With no
        partition assigned (before the first join, or all revoked) the answer is None, never an
        empty set: an empty set means "all idle", which moves the watermark to the newest event
        time, and would take decisions on state whose partitions are now read by another member.
        """
        idle_after = self._settings.idle_partition_s
        stalled = self._observed_at is None or now - self._observed_at > idle_after / 2
        self._observed_at = now
        lag: dict[int, int] = {}
        active: set[int] = set()
        for tp in self._partitions(held):
            p = tp.partition
            try:
                position = self._consumer.position(tp, timeout_ms=0)  # known: no I/O
                highwater = self._consumer.highwater(tp)
            except KafkaError:  # revoked by a rebalance during this poll: the next one restarts
                position = highwater = None
            if position is not None and highwater is not None:
                lag[p] = max(highwater - position, 0)
            if position is not None and position >= self._rebuild_until.get(p, 0):
                self._rebuild_until.pop(p, None)
            if lag.get(p) != 0 or tp in records:
                self._caught_up_since.pop(p, None)
            elif stalled or p not in self._caught_up_since:
                self._caught_up_since[p] = now
            quiet = now - self._last_record.get(p, now) >= idle_after
            if not (quiet and now - self._caught_up_since.get(p, now) >= idle_after):
                active.add(p)
        self._lag = lag
        return frozenset(active) if held else None

    def commit(self, batch: Batch) -> None:
        """Commit `batch.position` synchronously, per partition only when it moves forward.

        Partitions revoked since the poll are skipped (their new owner re-reads them), and a
        commit refused because the group rebalanced meanwhile is logged, not raised: the batch
        is redelivered to the partition's next owner, so nothing is lost.
        """
        if not isinstance(batch.position, dict):
            raise TypeError(f"not a KafkaSource batch position: {batch.position!r}")
        offsets = {
            TopicPartition(self._settings.topic, p): OffsetAndMetadata(offset, "", -1)
            for p, offset in batch.position.items()
            if p in self._held and offset > self._committed.get(p, 0)
        }
        if not offsets:
            return
        try:
            self._consumer.commit(offsets)
        except CommitFailedError as exc:
            log.warning("commit refused after a rebalance, the batch will be re-read: %s", exc)
            return
        except KafkaError as exc:  # the broker unreachable: the next commit covers these offsets
            log.warning("commit failed, to be covered by the next one: %s", exc)
            return
        for tp, meta in offsets.items():
            self._committed[tp.partition] = meta.offset

    def close(self) -> None:
        """Leave the group cleanly, committing nothing more. Idempotent. A broker that does not
        answer gets a quarter of a second (not `request_timeout_ms`): a stop must not wait."""
        if not self._closed:
            self._closed = True
            wait_s = min(self._settings.fetch_max_wait_ms / 1000, _SETTLE_MAX_S) + _SETTLE_S
            settle = self._polled_at + wait_s - time.monotonic()
            if settle > 0:
                time.sleep(settle)
            self._consumer.close(autocommit=False, timeout_ms=250)
