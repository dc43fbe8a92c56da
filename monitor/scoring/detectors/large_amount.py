"""`large_amount`: an attempt at or above the currency's threshold. Decided on arrival."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Final

from pydantic import Field

from monitor.core.alerts import Currency, alert_id
from monitor.core.durations import PositiveInt
from monitor.core.events import Event
from monitor.core.text import money, short_card
from monitor.scoring.detectors.base import (
    Amounts,
    DetectorSettings,
    Found,
    Hooks,
    OnArrival,
    Shared,
)
from monitor.scoring.incident import Incident
from monitor.scoring.state import Expiring

NAME: Final = "large_amount"


class Settings(DetectorSettings):
    large_amount_minor: Annotated[int, Field(gt=0)] = 1_000_000
    per_currency: dict[Currency, PositiveInt] = Field(default_factory=dict)

    def threshold(self, currency: str) -> int:
        return self.per_currency.get(currency, self.large_amount_minor)

    def build(self, shared: Shared, rank: int) -> LargeAmount:
        return LargeAmount(self, shared)


@dataclass(slots=True, kw_only=True)
class LargeAttempt(Incident):
    """One purchase attempt (`txn_ref`) at or above the threshold; its retransmitted requests
    grow it, kept in time order so the final alert does not depend on arrival order."""

    txn_ref: str
    amount_minor: int  # the largest amount requested
    threshold_minor: int
    requests: list[tuple[int, str]] = field(default_factory=list)  # (time, event_id)

    def details(self) -> dict[str, object]:
        return {
            "txn_ref": self.txn_ref,
            "amount_minor": self.amount_minor,
            "currency": self.currency,
            "threshold_minor": self.threshold_minor,
        }


class LargeAmount(OnArrival):
    def __init__(self, settings: Settings, shared: Shared) -> None:
        self.settings = settings
        self.max_evidence = shared.max_evidence
        # Below the smallest threshold of any currency nothing needs a closer look.
        self._from = min([settings.large_amount_minor, *settings.per_currency.values()])
        self._open: Expiring[LargeAttempt] = Expiring(shared.attempt_ttl_us, shared.cap)

    def hooks(self) -> Hooks:
        return Hooks(on_event={"auth_request": Amounts(self.on_request, at_least=self._from)})

    def on_request(self, ev: Event) -> Found:
        if ev.amount_minor < self.settings.threshold(ev.currency):
            return None
        incident = self._open.get_or_create(ev.txn_ref, ev.t, lambda: self._open_incident(ev))
        requests = incident.requests
        requests.append((ev.t, ev.event_id))
        requests.sort()
        incident.event_ids = [event_id for _, event_id in requests][: self.max_evidence]
        incident.first_seen, incident.last_seen = requests[0][0], requests[-1][0]
        incident.count = len(requests)
        incident.amount_minor = max(ev.amount_minor, incident.amount_minor)
        return (incident,)

    def _open_incident(self, ev: Event) -> LargeAttempt:
        threshold = self.settings.threshold(ev.currency)
        return LargeAttempt(
            alert_id=alert_id(NAME, ev.txn_ref),
            detector=NAME,
            severity=self.settings.severity,
            terminal_id=ev.terminal_id,
            merchant_id=ev.merchant_id,
            card_id=ev.card_id,
            first_seen=ev.t,
            last_seen=ev.t,
            max_evidence=self.max_evidence,
            summary=(
                f"Card {short_card(ev.card_id)} attempted {money(ev.amount_minor, ev.currency)}"
                f" at terminal {ev.terminal_id}, at or above the"
                f" {money(threshold, ev.currency)} large-amount threshold"
            ),
            currency=ev.currency,
            txn_ref=ev.txn_ref,
            amount_minor=ev.amount_minor,
            threshold_minor=threshold,
        )

    def sweep(self, watermark: int) -> None:
        self._open.expire(watermark)
