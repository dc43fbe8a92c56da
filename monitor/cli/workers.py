"""`posmon replay --workers N`: the partitioned design of docs/streaming.md ("Scale-out") run by N
local processes, so that a backtest uses more than one core (docs/workers.md).

The merchant stage is cut into `SHARDS` shards by merchant, whatever N: a line's shard is the
CRC-32 of its `merchant_id` modulo `SHARDS`, found by a pattern on the raw bytes (decoding only
the rare line the pattern cannot settle), and a line with no merchant goes to shard
`line number % SHARDS`, so that its dead letter is written once. Each shard is a
`Scorer(stage="merchant")` whose watermark is its own frontier, as one Kafka partition's; shard
k is scored by worker `k % N`. The input is cut into chunks of `CHUNK_LINES` lines: per chunk,
each worker scores its shards' lines and sends back their alerts and dead letters, their
frontiers and the accepted events the card stage takes (`Scorer.wanted`). The parent runs the
card stage (`Scorer(stage="card")`, with the model, the labels and the feature log) on those
events in input order, follows the shards' frontiers, and writes the chunk's alerts and dead
letters in a canonical order.

One clock for all shards: a shard judges a terminal's clock too far ahead (`max_future_skew`)
against the frontier of all the traffic, not only its own, and ends the input at the newest
time of all, as one scorer does; otherwise a shard of a few quiet merchants would hold back
the first events after a pause as bad clocks, and end before the input does. Once its shards
have decoded a chunk, a worker sends the time and terminal of each event in it; the parent
computes from them the frontier one scorer would have at the chunk's end (`Clock`) and sends
it back, and the shards score the chunk with it. A worker decodes the next chunk before it
waits for that answer, so that it waits little for the others.

Nothing that is written depends on N: the shards, the chunks, the clock and the order of the
output are fixed, so `--workers 1`, `--workers 2` and `--workers 3` write the same bytes. A
worker reads the input file itself (cheaper than receiving its lines); from stdin a thread of
the parent reads each chunk once and sends it to every worker.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice
from multiprocessing.connection import Connection, wait
from multiprocessing.context import ForkContext, SpawnContext
from multiprocessing.process import BaseProcess
from typing import Final, Protocol
from zlib import crc32

from monitor.core.alerts import Alert
from monitor.core.durations import us
from monitor.core.events import KINDS, Event, Rejection, decode, refusal
from monitor.scoring.pipeline import Stats
from monitor.scoring.policy import Policy
from monitor.scoring.scorer import Scorer
from monitor.scoring.state import NEVER, Watermark
from monitor.streaming.files import STDIN, read_messages

# Lines per chunk, whatever the number of workers: a chunk is a batch of every shard, so fewer,
# larger chunks cost less (4,096 lines: a tenth less than 1,000, measured), and what a chunk
# holds decides the intermediate versions, so it cannot depend on N.
CHUNK_LINES: Final = 4096
# Sixteen shards whatever the number of workers: what is written depends on the shards only, so
# it is the same for every N up to SHARDS.
SHARDS: Final = 16
# The partition under which a shard's watermark holds the frontier of all the traffic (`Clock`;
# no shard's own): it counts for the clock rule and the end of input, never for the watermark.
CLOCK: Final = SHARDS
_KEY: Final = b'"merchant_id"'
_COMPACT: Final = b'"merchant_id":"'
# The key's string value when it holds no escape: then its bytes are the merchant id's UTF-8.
_VALUE: Final = re.compile(rb'\s*:\s*"([^"\\]*)"')
# How much less CPU priority the workers take than the parent when the processes outnumber the
# cores: the parent's card stage is the path every chunk waits on (with the model, more than half
# of the work), and the workers can run ahead of it. Two workers on two cores with the model: a
# sixth less time than at equal priority (measured); with a core each, it would only make the
# workers yield to other programs.
_NICENESS: Final = 10
# Merchants whose shard `route` remembers (more distinct ones start it afresh: hostile input).
_REMEMBERED: Final = 100_000

# Per kind, the bands of amounts the card stage takes (`Scorer.wanted`).
Bands = Mapping[str, Sequence[tuple[int, float]]]
# An event forwarded to the card stage: its line number, its fields, its raw line.
Forwarded = tuple[int, tuple[object, ...], bytes]
_new_event = tuple.__new__  # an `Event` from its fields, without NamedTuple's Python `__new__`
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


class WorkerError(Exception):
    """A worker failed or died: the replay is abandoned and nothing is written."""


class Publisher(Protocol):
    def publish(self, alerts: Sequence[Alert], dead_letters: Sequence[Rejection]) -> None:
        """Hand alerts and dead letters on (the replay's `JsonlSink`)."""


def shard_of(raw: bytes, line: int) -> int:
    """The shard of one input line: by its merchant, or by its `line` number when it has none.

    A line that names its merchant once, without an escape (every line of a well-formed
    stream), is settled on its bytes; any other is decoded, so that an event whose merchant is
    written differently (escaped, or the key repeated) goes where the merchant's events go.
    """
    at = raw.find(_KEY)
    if at >= 0 and raw.find(_KEY, at + len(_KEY)) < 0:
        found = _VALUE.match(raw, at + len(_KEY))
        if found is not None:
            return crc32(found.group(1)) % SHARDS
    decoded = decode(raw)
    if type(decoded) is Event:
        return crc32(decoded.merchant_id.encode()) % SHARDS
    return line % SHARDS


def route(lines: Sequence[bytes], first_line: int, known: dict[bytes, int]) -> list[int]:
    """The shard of each line of a chunk, as `shard_of` gives it, for a fraction of its cost:
    every worker routes every line, so this is the loop that does not shrink with more of them.

    Lines written compactly (`"merchant_id":"M1"`) are settled by two searches and a lookup in
    `known` (merchant bytes -> shard); the whole chunk holding no more keys than lines so
    settled proves that each named the key once. Any other line is left to `shard_of`.
    """
    shards: list[int] = []
    append, get = shards.append, known.get
    for raw in lines:
        at = raw.find(_COMPACT)
        if at < 0:
            append(-1)
            continue
        start = at + len(_COMPACT)
        end = raw.find(b'"', start)
        value = raw[start:end]
        shard = get(value)
        if shard is None:
            if len(known) >= _REMEMBERED:
                known.clear()
            shard = known[value] = -1 if end < 0 or b"\\" in value else crc32(value) % SHARDS
        append(shard)
    if b"".join(lines).count(_KEY) != len(shards) - shards.count(-1):
        for i, raw in enumerate(lines):  # a key repeated somewhere: look line by line
            if shards[i] >= 0 and raw.count(_KEY) != 1:
                shards[i] = -1
    for i, shard in enumerate(shards):
        if shard < 0:
            shards[i] = shard_of(lines[i], first_line + i)
    return shards


@dataclass(frozen=True, slots=True)
class Plan:
    """What every worker is given: the merchant stage's policy, the card stage's bands, the
    number of workers and the bound of a dead letter's `raw`."""

    policy: Policy
    bands: Bands
    workers: int
    raw_bytes: int


@dataclass(slots=True)
class Counts:
    """The merchant stage's counts for the summary: events by kind, duplicates, late."""

    consumed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    duplicates: int = 0
    late: int = 0

    def add(self, consumed: Mapping[str, int], duplicates: int, late: int) -> None:
        for kind, n in consumed.items():
            self.consumed[kind] = self.consumed.get(kind, 0) + n
        self.duplicates += duplicates
        self.late += late


@dataclass(slots=True)
class Scored:
    """What one worker's shards made of one chunk, or of the end of the input (`counts`).

    Alerts carry their shard (the canonical order breaks ties by it) and whether they are new;
    dead letters carry their line number as offset; `forwarded` holds the line number, the
    fields and the raw line of each accepted event the card stage takes (its fields as a plain
    tuple: a third of the cost of an `Event` to pickle, a tenth of a decode to rebuild; the raw
    line for a dead letter, should the card stage refuse it); `spoken` the shards that scored
    events.
    """

    lines: int
    alerts: list[tuple[int, Alert, bool]] = field(default_factory=list)
    dead_letters: list[Rejection] = field(default_factory=list)
    frontiers: dict[int, int] = field(default_factory=dict)
    forwarded: list[Forwarded] = field(default_factory=list)
    spoken: list[int] = field(default_factory=list)
    counts: Counts | None = None


@dataclass(frozen=True, slots=True)
class Times:
    """A worker's shards have read a chunk: the (line, time, terminal) of its events. The
    parent answers with the traffic's frontier at the chunk's end (`Clock`)."""

    times: list[tuple[int, int, str]]


@dataclass(frozen=True, slots=True)
class Ended:
    """A worker has scored every chunk; the parent answers with the traffic's newest time, at
    which its shards close."""


@dataclass(frozen=True, slots=True)
class Failure:
    """A worker's exception, sent to the parent instead of a result."""

    error: str


@dataclass(slots=True)
class Read:
    """One chunk as a worker's shards read it, before they score it: per shard its events and
    their indexes in the chunk, the dead letters of lines that are no event, and the (line,
    time, terminal) of every event, for the `Clock`."""

    first_line: int
    lines: Sequence[bytes]
    events: dict[int, tuple[list[Event], list[int]]]
    dead_letters: list[Rejection]
    times: list[tuple[int, int, str]]


class Shards:
    """The merchant-stage shards one worker scores: those with `k % workers == index`."""

    def __init__(self, plan: Plan, index: int) -> None:
        self.plan = plan
        self.scorers: dict[int, Scorer] = {}
        for k in range(index, SHARDS, plan.workers):
            scorer = Scorer(plan.policy, None, stage="merchant")
            scorer.use_partition(k)  # its frontier is partition k's
            self.scorers[k] = scorer
        self._known: dict[bytes, int] = {}  # merchant -> shard (`route`)

    def read(self, first_line: int, lines: Sequence[bytes]) -> Read:
        """Decode the shards' lines of one chunk (`first_line`: the number of its first)."""
        routed: list[list[int] | None] = [[] if k in self.scorers else None for k in range(SHARDS)]
        for i, shard in enumerate(route(lines, first_line, self._known)):
            bucket = routed[shard]
            if bucket is not None:
                bucket.append(i)
        read = Read(first_line, lines, {}, [], [])
        raw_bytes, times = self.plan.raw_bytes, read.times
        for k, indexes in enumerate(routed):
            if indexes is None:
                continue
            events: list[Event] = []
            at: list[int] = []  # each event's index in the chunk
            for i in indexes:
                decoded = decode(lines[i])
                if type(decoded) is Event:
                    events.append(decoded)
                    at.append(i)
                    times.append((first_line + i, decoded.t, decoded.terminal_id))
                else:
                    assert isinstance(decoded, Rejection)
                    read.dead_letters.append(_located(decoded, first_line + i, raw_bytes))
            read.events[k] = (events, at)
        return read

    def score(self, read: Read, clock: int) -> Scored:
        """Score a chunk `read` before, the traffic's frontier at its end being `clock`: each
        shard's events in input order, then its watermark moves over its own partition, as
        after a batch."""
        self._hear(clock)
        first_line, lines = read.first_line, read.lines
        scored = Scored(len(lines), dead_letters=read.dead_letters)
        bands, raw_bytes = self.plan.bands, self.plan.raw_bytes
        letters, forwarded = scored.dead_letters, scored.forwarded
        for k, scorer in self.scorers.items():
            events, at = read.events[k]
            skip = set()
            for j, reason, error in scorer.process_many(events):
                skip.add(j)
                letter = refusal(reason, error, lines[at[j]])
                letters.append(_located(letter, first_line + at[j], raw_bytes))
            for j, ev in enumerate(events):
                wanted = bands.get(ev.kind)
                if wanted is not None and j not in skip:
                    amount = ev.amount_minor
                    for low, high in wanted:
                        if low <= amount <= high:
                            forwarded.append((first_line + at[j], ev[:], lines[at[j]]))
                            break
            if events:
                scored.spoken.append(k)
            scorer.advance((k,))
            _take(k, scorer, scored)
        return scored

    def close(self, clock: int) -> Scored:
        """End of input: every shard's watermark moves to the traffic's newest time, `clock`."""
        self._hear(clock)
        scored, counts = Scored(0), Counts()
        for k, scorer in self.scorers.items():
            scorer.close()
            _take(k, scorer, scored)
            counts.add(scorer.consumed, scorer.duplicates, scorer.late)
        scored.counts = counts
        return scored

    def _hear(self, clock: int) -> None:
        """The traffic's frontier (`Clock`) as the time of a partition each shard holds but
        never waits for (`CLOCK`): an event more than `max_future_skew` ahead of its shard's
        frontier but not of the traffic's is then no bad clock (`Watermark.ahead`), and the end
        of input moves every shard to the newest time of all (`Watermark.close`), as in one
        scorer."""
        if clock == NEVER:
            return
        for scorer in self.scorers.values():
            maxima = scorer.watermark.maxima
            if clock > maxima.get(CLOCK, NEVER):
                maxima[CLOCK] = clock


def _take(k: int, scorer: Scorer, scored: Scored) -> None:
    """Shard k's alerts since the last call, and its own frontier."""
    alerts, new = scorer.take_alerts()
    fresh = {id(a) for a in new}
    scored.alerts.extend((k, a, id(a) in fresh) for a in alerts)
    frontier = scorer.watermark.maxima.get(k)
    if frontier is not None:
        scored.frontiers[k] = frontier


def _located(rejection: Rejection, line: int, raw_bytes: int) -> Rejection:
    """A dead letter naming its line (as a replay's `MemorySource` does), `raw` bounded."""
    return rejection._replace(partition=0, offset=line).cut(raw_bytes)


def _chunks(lines: Iterator[bytes], size: int) -> Iterator[tuple[int, list[bytes]]]:
    """(first line number, lines) of consecutive chunks of `size` lines."""
    first = 1
    while chunk := list(islice(lines, size)):
        yield first, chunk
        first += len(chunk)


# -- a worker process ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Job:
    """One worker's part: its `index`; where its chunks come from (the file at `path`, or
    `inbox` when the parent reads stdin); the parent's `Clock` (`clock`: the traffic's frontier
    at the end of each chunk, then at the end of the input); where its results go (`outbox`);
    the pipe ends it inherited from a fork that are not its own (`inherited`: it closes them);
    whether it runs at a lower priority than the parent (`yielding`, `_NICENESS`)."""

    plan: Plan
    index: int
    chunk_lines: int
    path: str | None
    inbox: Connection | None
    clock: Connection
    outbox: Connection
    inherited: Sequence[Connection] = ()
    yielding: bool = False


def _work(job: Job) -> None:
    """A worker's life: its shards score every chunk, each result going to the parent; then,
    once told, they close. The other workers' pipe ends are closed first: a worker that dies
    then closes the only writing end of its pipe (the parent sees it at once), and a parent
    that dies leaves the worker's next send or receive failing rather than waiting."""
    for conn in job.inherited:
        conn.close()
    if job.yielding:
        os.nice(_NICENESS)
    gc.disable()  # as the parent (`commands._tune_gc`): the scoring path makes no cycles
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    outbox, clock = job.outbox, job.clock
    try:
        shards = Shards(job.plan, job.index)
        if job.path is not None:
            chunks = _chunks(read_messages(job.path), job.chunk_lines)
        else:
            assert job.inbox is not None
            chunks = _received(job.inbox)
        held: Read | None = None  # read, waiting for the clock at its end
        for first_line, lines in chunks:
            read = shards.read(first_line, lines)
            outbox.send(Times(read.times))
            if held is not None:  # the next chunk is read meanwhile: the others catch up
                outbox.send(shards.score(held, clock.recv()))
            held = read
        if held is not None:
            outbox.send(shards.score(held, clock.recv()))
        outbox.send(Ended())
        outbox.send(shards.close(clock.recv()))
    except (BrokenPipeError, EOFError):  # the parent is gone: nobody to tell
        return
    except BaseException as exc:
        traceback.print_exc(file=sys.stderr)
        with suppress(OSError):
            outbox.send(Failure(f"{type(exc).__name__}: {exc}"))


def _received(inbox: Connection) -> Iterator[tuple[int, list[bytes]]]:
    """The chunks the parent sends (stdin), until None."""
    while (chunk := inbox.recv()) is not None:
        yield chunk


# -- the parent ---------------------------------------------------------------------------------


class Clock:
    """The frontier one scorer holding every event would have, chunk by chunk: the chunk's
    event times, in input order, move it as `Scorer.process_many` moves a partition's (a time
    more than `max_future_skew` ahead goes to `Watermark.ahead`: a bad clock is held back,
    traffic resuming after a pause moves it), then the end of the chunk takes in what has come
    within reach, as `Scorer.advance` does after a batch."""

    def __init__(self, policy: Policy) -> None:
        self._mark = Watermark(us(policy.allowed_lateness), us(policy.max_future_skew))
        self.frontier = NEVER

    def take(self, times: Sequence[tuple[int, int, str]]) -> int:
        """Move it over one chunk's (line, time, terminal), in line order; returns it."""
        mark, frontier = self._mark, self.frontier
        for _, t, terminal in times:
            if t > frontier:
                frontier = mark.ahead(0, frontier, t, terminal) if t - frontier > mark.skew else t
        if frontier != NEVER:
            mark.maxima[0] = frontier
            mark.advance()
            frontier = mark.maxima[0]
        self.frontier = frontier
        return frontier


def _context() -> ForkContext | SpawnContext:
    """fork on Linux (the workers start at once, with the parent's imports and settings),
    spawn elsewhere (fork is unsafe on macOS)."""
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class Pool:
    """N worker processes and their pipes: the parent receives results (`receive`) and sends
    the clock (`tell`)."""

    def __init__(self, plan: Plan, chunk_lines: int, path: str) -> None:
        self.plan = plan
        context = _context()
        workers = range(plan.workers)
        from_stdin = path == STDIN
        results = [context.Pipe(duplex=False) for _ in workers]  # (parent's, worker's)
        clocks = [context.Pipe(duplex=False) for _ in workers]  # (worker's, parent's)
        chunks = [context.Pipe(duplex=False) for _ in workers] if from_stdin else []
        self.outboxes = [receive for receive, _ in results]
        self.clocks = [send for _, send in clocks]
        every = [end for pipe in (*results, *clocks, *chunks) for end in pipe]
        forking = context.get_start_method() == "fork"
        yielding = hasattr(os, "nice") and plan.workers + 1 > _cores()
        self.processes: list[BaseProcess] = []
        for index in workers:
            own = (results[index][1], clocks[index][0], *(chunks[index][:1] if chunks else ()))
            job = Job(
                plan,
                index,
                chunk_lines,
                None if from_stdin else path,
                chunks[index][0] if chunks else None,
                clocks[index][0],
                results[index][1],
                [end for end in every if all(end is not o for o in own)] if forking else (),
                yielding,
            )
            self.processes.append(
                context.Process(
                    target=_work, args=(job,), name=f"posmon-replay-{index}", daemon=True
                )
            )
        for process in self.processes:
            process.start()
        # The parent keeps only its own ends: a worker's death then closes its pipe for good.
        for conn in (*(w for _, w in results), *(w for w, _ in clocks), *(w for w, _ in chunks)):
            conn.close()
        self._feed = Feeder([feed for _, feed in chunks], chunk_lines) if from_stdin else None

    def receive(self, index: int) -> Times | Scored | Ended:
        """Worker `index`'s next message; raises `WorkerError` when it failed or died."""
        conn, process = self.outboxes[index], self.processes[index]
        while True:
            ready = wait([conn, process.sentinel])
            if conn in ready:
                try:
                    message = conn.recv()
                except EOFError:
                    raise self._died(index) from None
                if isinstance(message, Failure):
                    who = f"replay worker {index} of {self.plan.workers}"
                    raise WorkerError(f"{who} failed: {message.error}")
                assert isinstance(message, Times | Scored | Ended)
                return message
            if not conn.poll():
                raise self._died(index)

    def tell(self, clock: int) -> None:
        """Every worker: the traffic's frontier at the end of a chunk, or at the end."""
        for index, conn in enumerate(self.clocks):
            try:
                conn.send(clock)
            except OSError:  # gone: its results pipe says how
                self.receive(index)
                raise self._died(index) from None

    def _died(self, index: int) -> Exception:
        if self._feed is not None and self._feed.error is not None:
            return self._feed.error  # the input failed, not the worker
        process = self.processes[index]
        process.join(timeout=5)
        code = process.exitcode
        how = f"killed by {signal.Signals(-code).name}" if code and code < 0 else f"status {code}"
        return WorkerError(f"replay worker {index} of {self.plan.workers} died ({how})")

    def finish(self) -> None:
        """After the last result: the workers exit; raises what reading stdin raised."""
        for process in self.processes:
            process.join()
        if self._feed is not None:
            self._feed.finish()

    def stop(self) -> None:
        """End every worker still running (after a failure) and wait for them."""
        for process in self.processes:
            if process.is_alive():
                process.kill()
        for process in self.processes:
            process.join()
        for conn in (*self.outboxes, *self.clocks):
            conn.close()
        if self._feed is not None:
            self._feed.stop()


class Feeder:
    """Reads stdin once, chunk by chunk, and sends every chunk to every worker: a thread, so
    that the parent receives results meanwhile."""

    def __init__(self, inboxes: list[Connection], chunk_lines: int) -> None:
        self.error: OSError | None = None
        self._inboxes = inboxes
        self._chunk_lines = chunk_lines
        self._thread = threading.Thread(target=self._run, name="posmon-replay-stdin", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for chunk in _chunks(read_messages(STDIN), self._chunk_lines):
                for inbox in self._inboxes:
                    inbox.send(chunk)
            for inbox in self._inboxes:
                inbox.send(None)
        except BrokenPipeError:
            return  # a worker is gone: the parent reports it
        except OSError as exc:  # stdin failed: the workers stop, the parent raises it
            self.error = exc
            for inbox in self._inboxes:
                inbox.close()

    def finish(self) -> None:
        self._thread.join()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        for inbox in self._inboxes:
            inbox.close()
        self._thread.join(timeout=5)


def replay_sharded(
    path: str,
    *,
    plan: Plan,
    card: Scorer,
    sink: Publisher,
    stats: Stats,
    on_chunk: Callable[[], None] = lambda: None,
    chunk_lines: int | None = None,
) -> Counts:
    """Score `path` ('-': stdin) with `plan.workers` worker processes and the `card` stage here,
    in chunks of `chunk_lines` (None: `CHUNK_LINES`), publishing each chunk's alerts and dead
    letters to `sink` and calling `on_chunk` after it; returns the merchant stage's counts.
    Raises `WorkerError` when a worker fails or dies (every worker is then stopped)."""
    pool = Pool(plan, CHUNK_LINES if chunk_lines is None else chunk_lines, path)
    workers = range(plan.workers)
    frontiers: dict[int, int] = {}
    clock = Clock(plan.policy)
    try:
        while True:  # every worker sends the same kinds of message in the same order
            received = [pool.receive(index) for index in workers]
            if all(isinstance(m, Times) for m in received):
                times = [t for m in received if isinstance(m, Times) for t in m.times]
                times.sort()
                pool.tell(clock.take(times))
            elif all(isinstance(m, Scored) for m in received):
                results = [m for m in received if isinstance(m, Scored)]
                _publish(
                    results,
                    frontiers=frontiers,
                    card=card,
                    sink=sink,
                    stats=stats,
                    raw_bytes=plan.raw_bytes,
                    closing=False,
                )
                on_chunk()
            elif all(isinstance(m, Ended) for m in received):
                pool.tell(clock.frontier)
                if clock.frontier != NEVER:  # the card stage, too, ends at the newest time of all
                    frontiers[CLOCK] = clock.frontier
                results = [_closing(pool.receive(index)) for index in workers]
                _publish(
                    results,
                    frontiers=frontiers,
                    card=card,
                    sink=sink,
                    stats=stats,
                    raw_bytes=plan.raw_bytes,
                    closing=True,
                )
                on_chunk()
                break
            else:
                raise WorkerError("the replay workers went out of step")
        pool.finish()
    except BaseException:
        pool.stop()
        raise
    counts = Counts()
    for scored in results:
        assert scored.counts is not None
        counts.add(scored.counts.consumed, scored.counts.duplicates, scored.counts.late)
    return counts


def _closing(message: Times | Scored | Ended) -> Scored:
    if not isinstance(message, Scored) or message.counts is None:
        raise WorkerError("a replay worker did not close as told")
    return message


def _publish(
    results: Sequence[Scored],
    *,
    frontiers: dict[int, int],
    card: Scorer,
    sink: Publisher,
    stats: Stats,
    raw_bytes: int,
    closing: bool,
) -> None:
    """One chunk (or the end): the card stage takes the forwarded events and follows the
    shards' frontiers; every alert and dead letter goes out in the canonical order."""
    alerts: list[tuple[int, Alert, bool]] = []
    letters: list[Rejection] = []
    forwarded: list[Forwarded] = []
    spoken: list[int] = []
    stats.messages += results[0].lines  # every worker read the chunk's lines
    for scored in results:
        alerts.extend(scored.alerts)
        letters.extend(scored.dead_letters)
        forwarded.extend(scored.forwarded)
        frontiers.update(scored.frontiers)
        spoken.extend(scored.spoken)
    forwarded.sort(key=_first)
    letters.extend(_card_stage(card, forwarded, raw_bytes))
    card.follow(frontiers, None if closing else _active(spoken), closing=closing)
    taken, new = card.take_alerts()
    fresh = {id(a) for a in new}
    evidence = card.evidence  # a verdict on a shard's alert marks its events, as in one scorer
    for _, alert, _ in alerts:
        evidence.put(alert.alert_id, _microseconds(alert.last_seen), tuple(alert.event_ids))
    alerts.extend((SHARDS, a, id(a) in fresh) for a in taken)
    alerts.sort(key=_canonical)
    letters.sort(key=_line)
    _count(stats, alerts, letters)
    if alerts or letters:
        sink.publish([alert for _, alert, _ in alerts], letters)


def _active(spoken: Sequence[int]) -> set[int] | None:
    """The shards that hold the card stage's watermark after a chunk: those that scored events
    in it (as a Kafka source leaves idle partitions out); None (every shard that has spoken)
    when none did, never an empty set, which `follow` reads as the end of input."""
    return set(spoken) or None


def _card_stage(card: Scorer, forwarded: Sequence[Forwarded], raw_bytes: int) -> list[Rejection]:
    """Apply the forwarded events to the card stage in input order; its refusals (an event_id
    seen at another merchant with other content, a detector's exception) are dead letters."""
    events = [_new_event(Event, fields) for _, fields, _ in forwarded]
    letters = []
    for j, reason, error in card.process_many(events):
        line, _, raw = forwarded[j]
        letters.append(_located(refusal(reason, error, raw), line, raw_bytes))
    return letters


def _microseconds(at: datetime) -> int:
    """An alert's time as the scorer holds it (`to_datetime`'s inverse, exact)."""
    return (at - _EPOCH) // _MICROSECOND


def _first(entry: Forwarded) -> int:
    return entry[0]


def _canonical(entry: tuple[int, Alert, bool]) -> tuple[str, int, int]:
    """Alerts by id, then revision, then shard (the card stage last): the order N cannot
    change."""
    shard, alert, _ = entry
    return alert.alert_id, alert.revision, shard


def _line(rejection: Rejection) -> int:
    assert rejection.offset is not None
    return rejection.offset


def _count(
    stats: Stats, alerts: Sequence[tuple[int, Alert, bool]], letters: Sequence[Rejection]
) -> None:
    """What `pipeline.run` counts of a batch, for the summary."""
    stats.alerts_emitted += len(alerts)
    for _, alert, new in alerts:
        if new:
            stats.raised[alert.detector] += 1
        stats.latest[alert.detector] = alert
    for letter in letters:
        stats.rejected[letter.reason] += 1
        if letter.raw_length is not None:
            stats.truncated += 1
