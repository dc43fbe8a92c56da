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
    """

    __slots__ = ("lateness", "maxima", "value")

    def __init__(self, lateness_us: int) -> None:
        self.lateness = lateness_us
        self.maxima: dict[int, int] = {}
        self.value = NEVER

    def advance(self, active: Collection[int] | None = None) -> int:
        """Recompute from the maxima of the `active` partitions (None: every partition seen).

        An active partition that has delivered nothing yet holds the watermark where it is:
        its first events may be older than every other partition's.
        """
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
        """End of input: move the watermark to the largest event time (docs/detectors.md)."""
        if self.maxima:
            self.value = max(self.value, *self.maxima.values())


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


class SeenIds:
    """Remembers event ids for at least `horizon` of event time, in two generations.

    A lookup checks the current and the previous generation; when the watermark has moved
    `horizon` past the start of the current one, the previous is dropped. If the current
    generation reaches `cap` ids it is rotated early and the ids it pushes out are counted.
    """

    __slots__ = ("_cap", "_current", "_horizon", "_previous", "_rotate_at", "evicted")

    def __init__(self, horizon_us: int, cap: int) -> None:
        self._horizon = horizon_us
        self._cap = max(1, cap // 2)
        self._current: set[str] = set()
        self._previous: set[str] = set()
        self._rotate_at = NEVER
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def add(self, event_id: str, watermark: int) -> bool:
        """Record `event_id`; False when it was already seen (a redelivery)."""
        current = self._current
        if event_id in current or event_id in self._previous:
            return False
        if watermark >= self._rotate_at or len(current) >= self._cap:
            current = self._rotate(watermark)
        current.add(event_id)
        return True

    def _rotate(self, watermark: int) -> set[str]:
        if len(self._current) >= self._cap:
            self.evicted += len(self._previous)
        self._previous = self._current
        self._current = set()
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
