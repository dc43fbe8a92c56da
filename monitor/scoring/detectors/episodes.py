"""Episodes of a counting rule over an event-time window (bursts, spikes).

A key is *in* an episode while qualifying events keep coming within `window` of each other; the
first qualifying event opens the episode with every event of its window as evidence, later ones
add the window's events not yet counted. Events reach an episode in event-time order (the
scorer releases them behind the watermark), so the episodes do not depend on arrival order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from monitor.scoring.incident import Incident
from monitor.scoring.state import Expiring

I = TypeVar("I", bound=Incident)  # noqa: E741 - the incident type of the rule
R = TypeVar("R")


@dataclass(slots=True)
class Episode(Generic[I]):
    incident: I
    last_qualifying: int
    last_added: tuple[int, str]


class Episodes(Generic[I]):
    def __init__(self, window_us: int, cap: int) -> None:
        self.window = window_us
        self._open: Expiring[Episode[I]] = Expiring(window_us, cap)

    def __len__(self) -> int:
        return len(self._open)

    def qualify(
        self,
        key: str,
        t: int,
        records: list[tuple[int, str, R]],
        open_incident: Callable[[tuple[int, str, R]], I],
    ) -> tuple[I, list[tuple[int, str, R]]]:
        """A qualifying event at `t` with its window's `records` (sorted); returns the incident
        and the records newly added to it as evidence."""
        episode = self._open.get(key)
        if episode is None or t - episode.last_qualifying > self.window:
            episode = Episode(open_incident(records[0]), t, (records[0][0], records[0][1]))
            self._open.put(key, t, episode)
            fresh = records
        else:
            fresh = [r for r in records if (r[0], r[1]) > episode.last_added]
            self._open.get_or_create(key, t, lambda: episode)
        episode.last_qualifying = t
        if fresh:
            episode.last_added = (fresh[-1][0], fresh[-1][1])
        return episode.incident, fresh

    def expire(self, watermark: int) -> None:
        self._open.expire(watermark)
