"""`small_amount_burst`: card testing, many small attempts by one card in a few minutes.

Counted in event-time order behind the watermark (see `episodes`). The optional terminal-level
rule counts a terminal's small attempts the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Final, Literal

from pydantic import Field

from monitor.core.alerts import alert_id
from monitor.core.durations import PositiveInt, Seconds, us
from monitor.core.events import Event
from monitor.core.text import minutes, money, short_card
from monitor.scoring.detectors.base import (
    Amounts,
    DetectorSettings,
    Found,
    Hooks,
    Ordered,
    Shared,
    Stage,
)
from monitor.scoring.detectors.episodes import Episodes
from monitor.scoring.incident import Incident
from monitor.scoring.state import Reorder, WindowLog

NAME: Final = "small_amount_burst"
_MAX_TERMINALS = 100  # terminals listed in an alert's details


class Settings(DetectorSettings):
    max_amount_minor: Annotated[int, Field(ge=0)] = 500
    min_attempts: PositiveInt = 5
    window: Seconds = 600.0
    terminal_min_attempts: PositiveInt | None = None

    def build(self, shared: Shared, rank: int) -> SmallAmountBurst:
        return SmallAmountBurst(self, shared)

    def stages(self) -> frozenset[Stage]:
        """The card-level rule follows a card across merchants; the terminal-level one stays
        within a merchant's events."""
        return frozenset({"card", "merchant"} if self.terminal_min_attempts else {"card"})


@dataclass(slots=True, kw_only=True)
class Burst(Incident):
    """A card's (or a terminal's) small attempts while the burst goes on."""

    scope: Literal["card", "terminal"]
    max_amount_minor: int
    min_attempts: int
    window_s: float
    amounts_minor: list[int] = field(default_factory=list)
    terminals: list[str] = field(default_factory=list)

    def details(self) -> dict[str, object]:
        return {
            "scope": self.scope,
            "max_amount_minor": self.max_amount_minor,
            "min_attempts": self.min_attempts,
            "window_s": self.window_s,
            "currency": self.currency,
            "amounts_minor": list(self.amounts_minor),
            "terminals": list(self.terminals),
        }


class SmallAmountBurst(Ordered):
    def __init__(self, settings: Settings, shared: Shared) -> None:
        self.settings = settings
        self.window = us(settings.window)
        self.max_evidence = shared.max_evidence
        keep, cap = self.window + shared.lateness_us, shared.cap
        self._held: Reorder[Event] = Reorder()
        self._cards: WindowLog[Event] = WindowLog(keep, cap)
        self._card_episodes: Episodes[Burst] = Episodes(self.window, cap)
        self._terminals: WindowLog[Event] = WindowLog(keep, cap)
        self._terminal_episodes: Episodes[Burst] = Episodes(self.window, cap)
        self.small_attempts = 0  # every attempt at or below the small amount
        # The scopes this stage counts (docs/streaming.md, "Scale-out").
        self._by_card = shared.stage != "merchant"
        self._by_terminal = settings.terminal_min_attempts is not None and shared.stage != "card"

    def __len__(self) -> int:
        return len(self._held)

    def hooks(self) -> Hooks:
        small = Amounts(self.on_request, at_most=self.settings.max_amount_minor)
        return Hooks(on_event={"auth_request": small})

    def on_request(self, ev: Event) -> Found:
        """A small attempt arrived: log it now, count it once the watermark passes it."""
        if self._by_card:
            self.small_attempts += 1  # counted once, where cards are counted
            self._cards.append(ev.card_id, ev.t, ev.event_id, ev)
        if self._by_terminal:
            self._terminals.append(ev.terminal_id, ev.t, ev.event_id, ev)
        self._held.push(ev.t, ev.event_id, ev)
        return None

    def release(self, watermark: int, *, inclusive: bool) -> Iterator[Burst]:
        terminal_min = self.settings.terminal_min_attempts
        by_card, by_terminal = self._by_card, self._by_terminal
        for _t, _event_id, ev in self._held.release(watermark, inclusive=inclusive):
            if by_card:
                card = self._count(ev, by_card=True, min_attempts=self.settings.min_attempts)
                if card is not None:
                    yield card
            if by_terminal and terminal_min is not None:
                terminal = self._count(ev, by_card=False, min_attempts=terminal_min)
                if terminal is not None:
                    yield terminal

    def _count(self, ev: Event, *, by_card: bool, min_attempts: int) -> Burst | None:
        """The small attempt `ev`, released in event-time order: does it make (or grow) a burst?"""
        key, log, episodes = (
            (ev.card_id, self._cards, self._card_episodes)
            if by_card
            else (ev.terminal_id, self._terminals, self._terminal_episodes)
        )
        records = log.window(key, ev.t - self.window, ev.t)
        if len(records) < min_attempts:
            return None

        def open_incident(first: tuple[int, str, Event]) -> Burst:
            scope_key = (ev.card_id,) if by_card else ("terminal", ev.terminal_id)
            return Burst(
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
                currency=ev.currency,
                scope="card" if by_card else "terminal",
                max_amount_minor=self.settings.max_amount_minor,
                min_attempts=min_attempts,
                window_s=self.settings.window,
            )

        incident, fresh = episodes.qualify(key, ev.t, records, open_incident)
        if not fresh:
            return None
        incident.count += len(fresh)
        amounts, terminals = incident.amounts_minor, incident.terminals
        for t, event_id, attempt in fresh:
            incident.add_evidence(t, event_id)
            if len(amounts) < self.max_evidence:
                amounts.append(attempt.amount_minor)
            if attempt.terminal_id not in terminals and len(terminals) < _MAX_TERMINALS:
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

    def sizes(self) -> dict[str, int]:
        return {"held_back": len(self._held)}

    def tallies(self) -> dict[str, int]:
        return {"small_attempts": self.small_attempts}

    def sweep(self, watermark: int) -> None:
        self._cards.sweep()
        self._terminals.sweep()
        self._card_episodes.expire(watermark)
        self._terminal_episodes.expire(watermark)
