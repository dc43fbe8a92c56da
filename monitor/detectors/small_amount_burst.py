"""`small_amount_burst`: card testing, many small attempts by one card in a few minutes.

Counted in event-time order behind the watermark (see `episodes`). The optional terminal-level
rule counts a terminal's small attempts the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from monitor.alerts import Incident, alert_id, minutes, money, short_card
from monitor.config import SmallAmountBurst as Settings
from monitor.config import us
from monitor.detectors.episodes import Episodes
from monitor.events import Event
from monitor.state import Reorder, WindowLog

NAME: Final = "small_amount_burst"


class SmallAmountBurst:
    def __init__(
        self, settings: Settings, *, lateness_us: int, cap: int, max_evidence: int
    ) -> None:
        self.settings = settings
        self.window = us(settings.window)
        self.max_evidence = max_evidence
        keep = self.window + lateness_us
        self._held: Reorder[Event] = Reorder()
        self._cards: WindowLog[Event] = WindowLog(keep, cap)
        self._card_episodes = Episodes(self.window, cap)
        self._terminals: WindowLog[Event] = WindowLog(keep, cap)
        self._terminal_episodes = Episodes(self.window, cap)

    def __len__(self) -> int:
        return len(self._held)

    def record(self, ev: Event) -> None:
        """A small attempt arrived: log it now, count it once the watermark passes it."""
        self._cards.append(ev.card_id, ev.t, ev.event_id, ev)
        if self.settings.terminal_min_attempts is not None:
            self._terminals.append(ev.terminal_id, ev.t, ev.event_id, ev)
        self._held.push(ev.t, ev.event_id, ev)

    def release(self, watermark: int, *, inclusive: bool) -> Iterator[Incident]:
        terminal_min = self.settings.terminal_min_attempts
        for _t, _event_id, ev in self._held.release(watermark, inclusive=inclusive):
            card = self._count(ev, by_card=True, min_attempts=self.settings.min_attempts)
            if card is not None:
                yield card
            if terminal_min is not None:
                terminal = self._count(ev, by_card=False, min_attempts=terminal_min)
                if terminal is not None:
                    yield terminal

    def _count(self, ev: Event, *, by_card: bool, min_attempts: int) -> Incident | None:
        """The small attempt `ev`, released in event-time order: does it make (or grow) a burst?"""
        key, log, episodes = (
            (ev.card_id, self._cards, self._card_episodes)
            if by_card
            else (ev.terminal_id, self._terminals, self._terminal_episodes)
        )
        records = log.window(key, ev.t - self.window, ev.t)
        if len(records) < min_attempts:
            return None

        def open_incident(first: tuple[int, str, Event]) -> Incident:
            scope_key = (ev.card_id,) if by_card else ("terminal", ev.terminal_id)
            return Incident(
                alert_id=alert_id(NAME, *scope_key, first[1]),
                detector=NAME,
                severity=self.settings.severity,
                terminal_id=first[2].terminal_id,
                merchant_id=first[2].merchant_id,
                card_id=ev.card_id if by_card else None,
                first_seen=first[0],
                last_seen=first[0],
                max_evidence=self.max_evidence,
                count=0,
                details={
                    "scope": "card" if by_card else "terminal",
                    "max_amount_minor": self.settings.max_amount_minor,
                    "min_attempts": min_attempts,
                    "window_s": self.settings.window,
                    "currency": ev.currency,
                    "amounts_minor": [],
                    "terminals": [],
                },
            )

        incident, fresh = episodes.qualify(key, ev.t, records, open_incident)
        if not fresh:
            return None
        incident.count += len(fresh)
        amounts = incident.details["amounts_minor"]
        terminals = incident.details["terminals"]
        assert isinstance(amounts, list) and isinstance(terminals, list)
        for t, event_id, attempt in fresh:
            incident.add_evidence(t, event_id)
            if len(amounts) < self.max_evidence:
                amounts.append(attempt.amount_minor)
            if attempt.terminal_id not in terminals and len(terminals) < 100:
                terminals.append(attempt.terminal_id)
        who = f"Card {short_card(ev.card_id)}" if by_card else f"Terminal {ev.terminal_id}"
        where = (
            f"at {len(terminals)} terminals of merchant {incident.merchant_id}"
            if len(terminals) > 1
            else f"at terminal {incident.terminal_id}"
        )
        incident.summary = (
            f"{who} made {incident.count} attempts of at most"
            f" {money(self.settings.max_amount_minor, ev.currency)} within"
            f" {minutes(self.settings.window)} {where}: likely card testing"
        )
        return incident

    def advance(self, watermark: int) -> None:
        self._cards.advance(watermark)
        self._terminals.advance(watermark)

    def sweep(self, watermark: int) -> None:
        self._cards.sweep()
        self._terminals.sweep()
        self._card_episodes.expire(watermark)
        self._terminal_episodes.expire(watermark)
