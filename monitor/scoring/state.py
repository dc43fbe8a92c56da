"""Event-time state: the watermark, timers, dedup of redeliveries, and bounded keyed stores.

Every store here has a horizon in event time and a hard cap, so memory depends on how many keys
are active, not on how many events went by. Nothing here reads the wall clock: time is the
watermark the caller passes in. Times are epoch microseconds.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Collection, Iterator
from typing import Generic, TypeVar

V = TypeVar("V")
P = TypeVar("P")

NEVER = -(2**62)

# Where a timer stands among all detectors' timers: (deadline, rank, key, sequence).
Order = tuple[int, int, str, int]


class Watermark:
    """Per partition, the largest event time seen; the watermark is the smallest of those over
    the active partitions, minus the allowed lateness. It never goes back.

    A partition the source reports idle (no message for a while, nothing left to read) is left
    out, so a quiet partition cannot hold every other partition's decisions back forever.

    A partition's largest time is its frontier: an event more than `skew` ahead of it and of
    the other partitions' (a terminal with a wrong clock) does not move it. `ahead` takes those
    events, off the hot path: it holds each terminal's newest such time, and once `QUORUM`
    terminals are ahead together (all traffic resuming after a real gap), the frontier jumps
    to the time they have reached. A held time the frontier comes within `skew` of is taken
    in, at the latest when the watermark moves, as if it arrived then.
    """

    __slots__ = ("_held", "future", "lateness", "maxima", "skew", "value")

    # Distinct terminals ahead of a frontier that make it jump: more than a few bad clocks at
    # once, far fewer than the terminals of a partition that resumes after a gap.
    QUORUM = 5

    def __init__(self, lateness_us: int, skew_us: int) -> None:
        self.lateness = lateness_us
        self.skew = skew_us
        self.maxima: dict[int, int] = {}
        self.value = NEVER
        self.future = 0  # events held back: more than `skew` ahead of their frontier
        # Per partition, terminal -> (its newest time ahead, the frontier when it came).
        self._held: dict[int, dict[str, tuple[int, int]]] = {}

    def ahead(self, partition: int, own: int, t: int, terminal: str) -> int:
        """An event at `t` more than `skew` past `own`, its partition's frontier (NEVER: none
        yet: the other partitions' newest time stands in, if any, and becomes its frontier).
        Returns the partition's new frontier: `t` or later unless the event is held back."""
        # The rest of the traffic counts too: a partition of a few quiet merchants whose next
        # event comes after a gap is not ahead when the other partitions are already there.
        frontier = max(
            own, max((m for p, m in self.maxima.items() if p != partition), default=NEVER)
        )
        if frontier == NEVER or t - frontier <= self.skew:
            return t
        skew, held = self.skew, self._held.setdefault(partition, {})
        own = max(own, self._settle(held, frontier))
        frontier = max(frontier, own)
        if t - frontier <= skew:
            return max(own, t)
        newest = held.get(terminal, (t, 0))[0]
        held[terminal] = (max(newest, t), frontier)
        if len(held) < self.QUORUM:
            self.future += 1
            return frontier if own == NEVER else own
        times = sorted(at for at, _ in held.values())
        jumped = times[-self.QUORUM]  # QUORUM terminals have reached it
        for at in times:  # and on over the times ahead within `skew` of it: traffic too
            if at - jumped <= skew:
                jumped = max(jumped, at)
        # Those still ahead stay held, as ahead of the new frontier.
        self._held[partition] = {
            name: (at, jumped) for name, (at, _) in held.items() if at > jumped
        }
        if t > jumped:
            self.future += 1
        return jumped

    def _settle(self, held: dict[str, tuple[int, int]], frontier: int) -> int:
        """Take in the times ahead that `frontier` has come within `skew` of, oldest first (each
        raises it for the next), as if they arrived now, so that what stays ahead does not
        depend on the arrival order within the lateness. Forget the terminals it moved `skew`
        plus the lateness past since they were last ahead: bad clocks among moving traffic, not
        traffic resuming. Returns the newest time taken in (NEVER: none)."""
        taken, stale = NEVER, frontier - self.skew - self.lateness
        for name, (at, since) in sorted(held.items(), key=_newest):
            if since < stale:
                del held[name]
            elif at - max(frontier, taken) <= self.skew:
                taken = at
                del held[name]
        return taken

    def _catch_up(self) -> None:
        """`_settle` every partition that holds times ahead, against its frontier now."""
        maxima = self.maxima
        for partition, held in self._held.items():
            if held:
                own = maxima.get(partition, NEVER)
                others = (m for p, m in maxima.items() if p != partition)
                taken = self._settle(held, max(own, max(others, default=NEVER)))
                if taken > own:
                    maxima[partition] = taken

    def advance(self, active: Collection[int] | None = None) -> int:
        """Recompute from the maxima of the `active` partitions (None: every partition seen).

        An active partition that has delivered nothing yet holds the watermark where it is:
        its first events may be older than every other partition's.
        """
        self._catch_up()
        maxima = self.maxima
        if active is None:
            candidates = list(maxima.values())
        elif all(p in maxima for p in active):
            candidates = [maxima[p] for p in active]
        else:
            candidates = []
        if candidates:
            value = min(candidates) - self.lateness
            if value > self.value:
                self.value = value
        return self.value

    def close(self) -> None:
        """End of input: move the watermark to the largest frontier (never to an event held
        back ahead of it; docs/detectors.md, "Time")."""
        self._catch_up()
        if self.maxima:
            self.value = max(self.value, *self.maxima.values())


def _newest(entry: tuple[str, tuple[int, int]]) -> int:
    return entry[1][0]


class Timers(Generic[P]):
    """A deadline detector's decisions waiting for the watermark to pass their deadline, with
    their typed payloads.

    Due timers come out ordered by (deadline, rank, key): never by arrival order, so any
    arrival order within the lateness takes the same decisions in the same order. The rank (the
    detector's place in the registry) orders the decisions of different detectors due at once.
    """

    __slots__ = ("_heap", "_seq", "rank")

    def __init__(self, rank: int = 0) -> None:
        self.rank = rank
        self._heap: list[tuple[int, int, str, int, P]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, deadline: int, key: str, payload: P) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self.rank, key, self._seq, payload))

    def due(self, watermark: int) -> Iterator[tuple[Order, P]]:
        """Pop every timer whose deadline the watermark has passed, with its place in the order:
        ((deadline, rank, key, sequence), payload)."""
        heap = self._heap
        while heap and heap[0][0] < watermark:
            deadline, rank, key, seq, payload = heapq.heappop(heap)
            yield (deadline, rank, key, seq), payload


# What Python's `hash` of an event depends on besides its content: the process's string-hash
# secret and the address of None. Fingerprints made under another salt (a scorer restored from a
# snapshot another process wrote) cannot be compared with this process's.
HASH_SALT = hash(("posmon", None))


class SeenIds:
    """Remembers event ids for at least `horizon` of event time, in two generations, each with
    a fingerprint of its event's content (the caller's: the scorer hashes the `Event`), so a
    second event with a known id tells a redelivery (same content) from a conflict.

    A lookup checks the current and the previous generation; when the watermark has moved
    `horizon` past the start of the current one, the previous is dropped. If the current
    generation reaches `cap` ids it is rotated early and the ids it pushes out are counted.
    Restored from another process (a snapshot), its fingerprints are not comparable until both
    generations were filled here: until then a known id counts as a redelivery, as it always did.
    """

    __slots__ = (
        "_cap",
        "_current",
        "_foreign",
        "_horizon",
        "_previous",
        "_rotate_at",
        "_salt",
        "evicted",
    )

    def __init__(self, horizon_us: int, cap: int) -> None:
        self._horizon = horizon_us
        self._cap = max(1, cap // 2)
        self._current: dict[str, int] = {}
        self._previous: dict[str, int] = {}
        self._rotate_at = NEVER
        self._salt = HASH_SALT  # the salt its fingerprints were made under
        self._foreign = 0  # generations still holding fingerprints of another salt
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def add(self, event_id: str, watermark: int, fingerprint: int = 0) -> bool:
        """Record `event_id` with its content's `fingerprint`; False when it was already seen
        (then `fingerprint_of` tells a redelivery from a conflict)."""
        current = self._current
        if event_id in current or event_id in self._previous:
            return False
        if watermark >= self._rotate_at or len(current) >= self._cap:
            current = self._rotate(watermark)
        current[event_id] = fingerprint
        return True

    def fingerprint_of(self, event_id: str) -> int | None:
        """The fingerprint `event_id` was first recorded with; None when it is not remembered
        or its fingerprint cannot be compared (made by another process)."""
        self._adopt()
        if self._foreign:
            return None
        found = self._current.get(event_id)
        return self._previous.get(event_id) if found is None else found

    def _adopt(self) -> None:
        """Once restored from another process: its two generations hold foreign fingerprints."""
        if self._salt != HASH_SALT:
            self._salt, self._foreign = HASH_SALT, 2

    def _rotate(self, watermark: int) -> dict[str, int]:
        self._adopt()
        self._foreign = max(0, self._foreign - 1)
        if len(self._current) >= self._cap:
            self.evicted += len(self._previous)
        self._previous = self._current
        self._current = {}
        self._rotate_at = watermark + self._horizon
        return self._current


class Expiring(Generic[V]):
    """A keyed store whose entries go once the watermark is `ttl` past their last use.

    `touch` marks use; entries are checked for expiry in the order they were created, so a
    sweep costs only the entries it removes or keeps alive. At `cap` entries the oldest go first,
    counted in `evicted`.
    """

    __slots__ = ("_cap", "_entries", "_order", "_ttl", "evicted")

    def __init__(self, ttl_us: int, cap: int) -> None:
        self._ttl = ttl_us
        self._cap = cap
        self._entries: dict[str, tuple[V, list[int]]] = {}
        self._order: deque[tuple[int, str]] = deque()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> V | None:
        entry = self._entries.get(key)
        return None if entry is None else entry[0]

    def get_or_create(self, key: str, t: int, create: Callable[[], V]) -> V:
        entry = self._entries.get(key)
        if entry is not None:
            last = entry[1]
            if t > last[0]:
                last[0] = t
            return entry[0]
        return self.create(key, t, create())

    def create(self, key: str, t: int, value: V) -> V:
        """Store a new entry under `key` (which must be absent)."""
        if len(self._entries) >= self._cap:
            self._evict_oldest()
        self._entries[key] = (value, [t])
        self._order.append((t, key))
        return value

    def touch(self, key: str, t: int) -> V | None:
        """The entry under `key`, marked as used at `t`; None when absent."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        last = entry[1]
        if t > last[0]:
            last[0] = t
        return entry[0]

    def put(self, key: str, t: int, value: V) -> None:
        """Store `value` under `key`, replacing any entry, as used at `t`."""
        if key not in self._entries:
            if len(self._entries) >= self._cap:
                self._evict_oldest()
            self._order.append((t, key))
        self._entries[key] = (value, [t])

    def values(self) -> Iterator[V]:
        return (entry[0] for entry in self._entries.values())

    def expire(self, watermark: int) -> None:
        cutoff = watermark - self._ttl
        order, entries = self._order, self._entries
        while order and order[0][0] < cutoff:
            _, key = order.popleft()
            entry = entries.get(key)
            if entry is None:
                continue
            last = entry[1][0]
            if last < cutoff:
                del entries[key]
            else:
                order.append((last, key))

    def _evict_oldest(self) -> None:
        while self._order:
            _, key = self._order.popleft()
            if self._entries.pop(key, None) is not None:
                self.evicted += 1
                return


class Reorder(Generic[P]):
    """Holds events back until the watermark passes them, then yields them in event-time order."""

    __slots__ = ("_heap",)

    def __init__(self) -> None:
        self._heap: list[tuple[int, str, P]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, t: int, event_id: str, payload: P) -> None:
        heapq.heappush(self._heap, (t, event_id, payload))

    def release(self, watermark: int, *, inclusive: bool = False) -> Iterator[tuple[int, str, P]]:
        """Events strictly older than the watermark (or at it, once the input has ended), as
        (time, event_id, payload) in (time, event_id) order."""
        heap = self._heap
        while heap and (heap[0][0] < watermark or (inclusive and heap[0][0] == watermark)):
            yield heapq.heappop(heap)


class WindowLog(Generic[P]):
    """Per key, the recent (time, event_id, payload) records, for counting over a time window.

    Records are appended in arrival order. After `advance(watermark)` (called once the events
    the watermark passed were released), no event still to be counted is older than that
    watermark, so records older than `watermark - keep` can go: a key's log drops them whenever a
    record is appended to it, and `sweep` drops them for keys that went quiet. Counting filters
    by time, so arrival order does not change a count. `keep` must cover the window.
    """

    __slots__ = ("_cap", "_cutoff", "_keep", "_logs", "evicted")

    def __init__(self, keep_us: int, cap: int) -> None:
        self._keep = keep_us
        self._cutoff = NEVER
        self._cap = cap
        self._logs: dict[str, deque[tuple[int, str, P]]] = {}
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._logs)

    def append(self, key: str, t: int, event_id: str, payload: P) -> None:
        log = self._logs.get(key)
        if log is None:
            if len(self._logs) >= self._cap:
                self._logs.pop(next(iter(self._logs)))
                self.evicted += 1
            log = self._logs[key] = deque()
        else:
            cutoff = self._cutoff
            while log and log[0][0] < cutoff:
                log.popleft()
        log.append((t, event_id, payload))

    def window(self, key: str, start: int, end: int) -> list[tuple[int, str, P]]:
        """Records with `start < t <= end`, sorted by (time, event_id)."""
        log = self._logs.get(key)
        if not log:
            return []
        return sorted(r for r in log if start < r[0] <= end)

    def advance(self, watermark: int) -> None:
        """Every event older than `watermark` has been counted."""
        self._cutoff = watermark - self._keep

    def sweep(self) -> None:
        """Drop the old records of keys that went quiet, and the keys left empty."""
        cutoff = self._cutoff
        empty = []
        for key, log in self._logs.items():
            while log and log[0][0] < cutoff:
                log.popleft()
            if not log:
                empty.append(key)
        for key in empty:
            del self._logs[key]
