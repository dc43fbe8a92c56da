"""`small_amount_burst`: card testing, many small attempts by one card in a few minutes.

Counted in event-time order behind the watermark (see `episodes`). The optional terminal-level
rule counts a terminal's small attempts the same way.
"""

from __future__ import annotations

from typing import Final

from monitor.alerts import Incident, alert_id, minutes, money, short_card
from monitor.config import SmallAmountBurst as Settings
from monitor.config import us
from monitor.detectors.episodes import Episodes
from monitor.events import Event
from monitor.state import WindowLog

NAME: Final = "small_amount_burst"


class SmallAmountBurst:
    def __init__(self, settings: Settings, *, cap: int, max_evidence: int) -> None:
        self.settings = settings
        self.window = us(settings.window)
        self.max_evidence = max_evidence
        self._cards = WindowLog(cap)
        self._card_episodes = Episodes(self.window, cap)
        self._terminals = WindowLog(cap)
        self._terminal_episodes = Episodes(self.window, cap)

    def is_small(self, ev: Event) -> bool:
        return ev.amount_minor <= self.settings.max_amount_minor

    def record(self, ev: Event) -> None:
        """A small attempt arrived: log it now, count it when released."""
        self._cards.append(ev.card_id, ev.t, ev.event_id)
        if self.settings.terminal_min_attempts is not None:
            self._terminals.append(ev.terminal_id, ev.t, ev.event_id)

    def release(self, ev: Event) -> list[Incident]:
        grown = []
        card = self._count(
            ev, ev.card_id, self._cards, self._card_episodes, self.settings.min_attempts
        )
        if card is not None:
            grown.append(card)
        if self.settings.terminal_min_attempts is not None:
            terminal = self._count(
                ev, ev.terminal_id, self._terminals, self._terminal_episodes,
                self.settings.terminal_min_attempts,
            )  # fmt: skip
            if terminal is not None:
                grown.append(terminal)
        return grown

    def _count(
        self, ev: Event, key: str, log: WindowLog, episodes: Episodes, min_attempts: int
    ) -> Incident | None:
        records = log.window(key, ev.t - self.window, ev.t)
        if len(records) < min_attempts:
            return None
        by_card = log is self._cards

        def open_incident(first: tuple[int, str, bool]) -> Incident:
            scope_key = (ev.card_id,) if by_card else ("terminal", ev.terminal_id)
            return Incident(
                alert_id=alert_id(NAME, *scope_key, first[1]),
                detector=NAME,
                severity=self.settings.severity,
                terminal_id=ev.terminal_id,
                merchant_id=ev.merchant_id,
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
        for t, event_id, _ in fresh:
            incident.add_evidence(t, event_id)
        amounts = incident.details["amounts_minor"]
        terminals = incident.details["terminals"]
        assert isinstance(amounts, list) and isinstance(terminals, list)
        if len(amounts) < self.max_evidence:
            amounts.append(ev.amount_minor)
        if ev.terminal_id not in terminals and len(terminals) < 100:
            terminals.append(ev.terminal_id)
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

    def sweep(self, watermark: int, lateness_us: int) -> None:
        cutoff = watermark - lateness_us - self.window
        self._cards.sweep(cutoff)
        self._terminals.sweep(cutoff)
        self._card_episodes.expire(watermark)
        self._terminal_episodes.expire(watermark)
