"""The alert on the wire (docs/contract.md, "Alert"): its fields and its deterministic identity.

The scorer's detectors grow incidents (`monitor.scoring.incident`) and turn each changed one into
an `Alert` at the end of a batch. The same incident always gets the same `alert_id`, so a replay,
a restart or a redelivery can never page twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from monitor.core.pans import mask_pans, mask_tree

Severity = Literal["info", "warning", "critical"]
Detector = Literal[
    "failed_then_debited",
    "duplicate_debit",
    "missing_reversal",
    "small_amount_burst",
    "terminal_failure_spike",
    "large_amount",
    "stale_preauth",
    "model_outlier",
]
DETECTORS: tuple[str, ...] = Detector.__args__  # type: ignore[attr-defined]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]


class Alert(BaseModel):
    """One alert as every consumer sees it (alerts topic, replay output, channel adapters).

    `amount_at_risk_minor` and `currency` carry the money of the rules that find customers'
    money taken in error (ghost and duplicate debits); `currency` is also set wherever the
    incident is about amounts of one currency. Consumers read money from these two fields,
    never from `details`, whose keys belong to each detector.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    alert_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    detector: Detector
    severity: Severity
    terminal_id: str
    merchant_id: str
    card_id: str | None
    first_seen: AwareDatetime
    last_seen: AwareDatetime
    event_ids: list[str]
    count: Annotated[int, Field(ge=1)]
    summary: str
    details: dict[str, object]
    score: float | None = None
    model_version: str | None = None
    amount_at_risk_minor: Annotated[int, Field(ge=0)] | None = None
    currency: Currency | None = None
    # Grows with every version of the incident (the watermark it was taken at, raised by one
    # where needed): of two versions of one alert_id, the higher revision is the newer, whatever
    # order they arrive in (0: written before posmon gave revisions).
    revision: Annotated[int, Field(ge=0)] = 0

    # Every alert read is masked (`Incident.to_alert` masks the alerts it builds): a card number
    # that slipped past the guard at decode still cannot reach a topic, a channel, a report or a
    # console.
    @field_validator("terminal_id", "merchant_id", "card_id", "summary")
    @classmethod
    def _mask_text(cls, value: str | None) -> str | None:
        return None if value is None else mask_pans(value)

    @field_validator("event_ids", "details")
    @classmethod
    def _mask_tree(cls, value: object) -> object:
        return mask_tree(value)


def alert_id(detector: str, *key: str) -> str:
    """The deterministic id: the first 32 hex digits of SHA-256 over detector and incident key."""
    material = "\x1f".join((detector, *key)).encode()
    return hashlib.sha256(material).hexdigest()[:32]


def is_newer(alert: Alert, than: Alert | None) -> bool:
    """Whether `alert` replaces `than`, an earlier-received version of the same alert_id: a
    version with a lower revision is an older state (a stalled former owner of its partition
    published it late, or a monitor rebuilding its state met it again) and is kept out; an
    equal revision is taken as the same state said again, and the later one is kept."""
    return than is None or alert.revision >= than.revision


def newest(alerts: Iterable[Alert]) -> dict[str, Alert]:
    """Each alert_id's newest version, of alerts in the order they were received."""
    final: dict[str, Alert] = {}
    for alert in alerts:
        if is_newer(alert, final.get(alert.alert_id)):
            final[alert.alert_id] = alert
    return final


def alert_json_schema() -> dict[str, object]:
    return Alert.model_json_schema()
