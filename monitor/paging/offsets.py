"""Which alert messages the dispatcher has settled, and how far each partition may be committed.

A message is settled once every group it joined has been flushed with it, firing or resolved
(delivered, parked, inhibited, or found already said); a message that joined no group (invalid,
or a resolve) is settled on receipt. A partition is committed just past its longest settled
prefix, so a crash re-reads every unsettled alert and the ledger turns what was already paged
into "duplicate".
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection

Where = tuple[int, int]  # (partition, offset)


class Offsets:
    def __init__(self) -> None:
        self._received: dict[int, list[int]] = defaultdict(list)  # offsets in order of arrival
        self._waiting: dict[Where, set[str]] = {}  # unsettled message -> groups still to flush
        self._since: dict[Where, float] = {}  # unsettled message -> when it arrived
        self._by_alert: dict[str, set[Where]] = defaultdict(set)

    def received(self, where: Where) -> None:
        self._received[where[0]].append(where[1])

    def wait(self, where: Where, alert_id: str, groups: Collection[str], now: float) -> None:
        """The message at `where` (a version of `alert_id`) waits for these groups' flushes."""
        self._waiting[where] = set(groups)
        self._since[where] = now
        self._by_alert[alert_id].add(where)

    def settle(self, alert_id: str, group: str) -> None:
        """`group` flushed `alert_id`: its messages no longer wait for that group."""
        for where in list(self._by_alert.get(alert_id, ())):
            waiting = self._waiting.get(where)
            if waiting is not None:
                waiting.discard(group)
                if not waiting:
                    del self._waiting[where]
                    self._since.pop(where, None)
                    self._by_alert[alert_id].discard(where)
        if not self._by_alert.get(alert_id):
            self._by_alert.pop(alert_id, None)

    def pending(self, alert_id: str) -> bool:
        """Does a message of `alert_id` still wait for a group's flush (no channel has heard of
        that version yet)?"""
        return alert_id in self._by_alert

    def oldest(self, now: float) -> float:
        """Seconds since the oldest unsettled message arrived (0 when none)."""
        since = list(self._since.values())  # a copy: the scrape thread reads it too
        return now - min(since) if since else 0.0

    def committable(self) -> dict[int, int]:
        """Per partition, the next offset to commit: just past the longest settled prefix."""
        positions = {}
        for partition, offsets in self._received.items():
            settled = 0
            for offset in offsets:
                if (partition, offset) in self._waiting:
                    break
                settled += 1
            if settled:
                positions[partition] = offsets[settled - 1] + 1
                del offsets[:settled]
        return positions
