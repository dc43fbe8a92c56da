"""The alert (CONTRACT section 3): deterministic identity, the evidence it grows, its wire form.

Detectors keep an `Incident` while it is open and grow it as evidence arrives; the pipeline turns
each changed incident into an `Alert` at the end of a batch. The same incident always gets the
same `alert_id`, so a replay, a restart or a redelivery can never page twice.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from monitor.events import to_datetime

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


class Alert(BaseModel):
    """One alert as every consumer sees it (alerts topic, replay output, channel adapters)."""

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


def alert_id(detector: str, *key: str) -> str:
    """The deterministic id: the first 32 hex digits of SHA-256 over detector and incident key."""
    material = "\x1f".join((detector, *key)).encode()
    return hashlib.sha256(material).hexdigest()[:32]


@dataclass(slots=True)
class Incident:
    """An open incident a detector is growing. Times are epoch microseconds."""

    alert_id: str
    detector: Detector
    severity: Severity
    terminal_id: str
    merchant_id: str
    card_id: str | None
    first_seen: int
    last_seen: int
    max_evidence: int
    summary: str = ""
    count: int = 1
    event_ids: list[str] = field(default_factory=list)
    details: dict[str, object] = field(default_factory=dict)
    evidence_dropped: int = 0
    emitted: bool = False  # set once the first version went out: later ones are updates

    def add_evidence(self, t: int, *event_ids: str) -> None:
        """Add evidence events seen at `t`, keeping at most `max_evidence` ids."""
        self.first_seen = min(self.first_seen, t)
        self.last_seen = max(self.last_seen, t)
        room = self.max_evidence - len(self.event_ids)
        self.event_ids.extend(event_ids[:room] if room < len(event_ids) else event_ids)
        if room < len(event_ids):
            self.evidence_dropped += len(event_ids) - max(room, 0)

    def to_alert(self) -> Alert:
        details = dict(self.details)
        if self.evidence_dropped:
            details["evidence_truncated"] = self.evidence_dropped
        return Alert.model_construct(
            alert_id=self.alert_id,
            detector=self.detector,
            severity=self.severity,
            terminal_id=self.terminal_id,
            merchant_id=self.merchant_id,
            card_id=self.card_id,
            first_seen=to_datetime(self.first_seen),
            last_seen=to_datetime(self.last_seen),
            event_ids=list(self.event_ids),
            count=self.count,
            summary=self.summary,
            details=details,
            score=None,
            model_version=None,
        )


def alert_json_schema() -> dict[str, object]:
    return Alert.model_json_schema()


# ISO 4217 currencies whose minor unit is not 1/100 of the major unit.
_EXPONENTS = {
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0, "PYG": 0,
    "RWF": 0, "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
    "CLF": 4, "UYW": 4,
}  # fmt: skip


def money(amount_minor: int, currency: str) -> str:
    """`3500, "EUR"` -> `"35.00 EUR"`; integer arithmetic only, never floats."""
    exponent = _EXPONENTS.get(currency, 2)
    if exponent == 0:
        return f"{amount_minor:,} {currency}"
    major, minor = divmod(amount_minor, 10**exponent)
    return f"{major:,}.{minor:0{exponent}d} {currency}"


def short_card(card_id: str) -> str:
    """A card token shortened for a sentence: `tok_9f31...c1` -> `tok_9f..c1`."""
    return card_id if len(card_id) <= 10 else f"{card_id[:6]}..{card_id[-2:]}"


def minutes(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"
