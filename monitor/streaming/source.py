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
from collections.abc import Callable, Iterable

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition  # type: ignore[import-untyped]
from kafka.errors import CommitFailedError, KafkaError  # type: ignore[import-untyped]
from kafka.structs import OffsetAndMetadata  # type: ignore[import-untyped]

from monitor.core.batches import Batch
from monitor.streaming.client import client_config
from monitor.streaming.settings import KafkaSettings

log = logging.getLogger("posmon.kafka")

Clock = Callable[[], float]


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Tells the source about rebalances. Runs on kafka-python's IO thread: must not block."""

    def __init__(self, source: KafkaSource) -> None:
        self._source = source

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._source._assigned_by_rebalance()


class KafkaSource:
    """A consumer-group member reading `settings.topic` as `Batch`es (a `pipeline.Source`).

    `poll`, `commit` and `close` belong to one thread (the scoring loop). `lag()`,
    `assignment()`, `rebalances` and `rebuilding` are snapshots taken at the last poll, safe to
    read from another thread (a metrics collector, /readyz). `clock` only times idleness.
    """

    def __init__(self, settings: KafkaSettings, *, clock: Clock = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._held: frozenset[int] = frozenset()  # the assignment as of the last rebalance
        self._new: set[int] = set()  # newly assigned, committed offsets not read yet
        self._committed: dict[int, int] = {}  # highest offset the group committed, per partition
        self._rebuild_until: dict[int, int] = {}  # partition -> committed offset at assignment
        self._last_record: dict[int, float] = {}  # clock at the last record (or the assignment)
        self._lag: dict[int, int] = {}
        self._rebalances = 0
        self._known: frozenset[int] = frozenset()  # the assignment as the polling thread knows it
        self._consumer = KafkaConsumer(**client_config(settings, "consumer"))
        self._consumer.subscribe([settings.topic], listener=_Listener(self))
        self._closed = False

    @property
    def rebalances(self) -> int:
        """How many assignments this member received (the first one included)."""
        return self._rebalances

    @property
    def rebuilding(self) -> bool:
        """True while some partition is still below the offset committed when it was assigned."""
        return bool(self._rebuild_until)

    def assignment(self) -> set[int]:
        """The partitions this member holds."""
        return set(self._held)

    def lag(self) -> dict[int, int]:
        """Messages behind the high watermark per partition (unknown ones are left out)."""
        return dict(self._lag)

    def _assigned_by_rebalance(self) -> None:
        """Called on the IO thread: note the new partitions, seek them to the beginning if asked.

        `seek_to_beginning` only flags the partitions for an offset reset, so it is safe here;
        reading the committed offsets blocks, so `poll` does it on the polling thread.
        """
        held = frozenset(tp.partition for tp in self._consumer.assignment())
        with self._lock:
            new = held - self._held
            self._held = held
            self._new = (self._new | new) & held
            self._rebalances += 1
        log.info("assigned %s of %s (new: %s)", sorted(held), self._settings.topic, sorted(new))
        if new and self._settings.rebuild == "beginning":
            self._consumer.seek_to_beginning(*self._partitions(new))

    def _partitions(self, partitions: Iterable[int]) -> list[TopicPartition]:
        return [TopicPartition(self._settings.topic, p) for p in sorted(partitions)]

    def poll(self) -> Batch:
        """One `consumer.poll`: its messages by partition (tombstones as b""), never None."""
        s = self._settings
        records = self._consumer.poll(timeout_ms=s.poll_timeout_ms, max_records=s.max_poll_records)
        now = self._clock()
        with self._lock:
            new, self._new = self._new, set()
            held = self._held
        if new or held != self._known:
            self._on_assigned(new, held, now)
        chunks: list[tuple[int, list[bytes]]] = []
        position: dict[int, int] = {}
        for tp, messages in records.items():
            chunks.append(
                (tp.partition, [m.value if m.value is not None else b"" for m in messages])
            )
            position[tp.partition] = messages[-1].offset + 1
            self._last_record[tp.partition] = now
        return Batch(chunks, position, self._observe(held, now))

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

    def _observe(self, held: frozenset[int], now: float) -> frozenset[int] | None:
        """Update lag and rebuild progress; return the partitions that are not idle.

        Idle means caught up (position at the high watermark) and no record for
        `idle_partition_s`: such a partition must not hold the others' watermark back. With no
        partition assigned (before the first join, or all revoked) the answer is None, never an
        empty set: an empty set means "all idle", which moves the watermark to the newest event
        time, and would take decisions on state whose partitions are now read by another member.
        """
        lag: dict[int, int] = {}
        active: set[int] = set()
        for tp in self._partitions(held):
            p = tp.partition
            try:
                position = self._consumer.position(tp, timeout_ms=0)  # known: no I/O
            except KafkaError:
                position = None
            highwater = self._consumer.highwater(tp)
            if position is not None and highwater is not None:
                lag[p] = max(highwater - position, 0)
            if position is not None and position >= self._rebuild_until.get(p, 0):
                self._rebuild_until.pop(p, None)
            quiet = now - self._last_record.get(p, now) >= self._settings.idle_partition_s
            if not (quiet and lag.get(p) == 0):
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
        for tp, meta in offsets.items():
            self._committed[tp.partition] = meta.offset

    def close(self) -> None:
        """Leave the group cleanly, committing nothing more. Idempotent."""
        if not self._closed:
            self._closed = True
            self._consumer.close(autocommit=False)
