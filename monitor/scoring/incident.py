"""An incident a detector is growing, and how it becomes an `Alert`.

The common part (identity, entities, time span, evidence, count, summary) lives here; each
detector subclasses `Incident` with the typed state its rule needs and renders its own `details`.
State is never read back from `details`: they are written once per emitted version.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import cast

from monitor.core.alerts import Alert, Detector, Severity
from monitor.core.events import to_datetime
from monitor.core.pans import mask_pans, mask_tree


@dataclass(slots=True, kw_only=True)
class Incident(ABC):
    """An open incident. Times are epoch microseconds."""

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
    evidence_dropped: int = 0
    emitted: bool = False  # set once the first version went out: later ones are updates
    # The revision of the version last emitted (`Scorer.take_alerts`): of two versions, the
    # higher is the newer (docs/contract.md, "Alert").
    revision: int = 0
    currency: str | None = None

    def add_evidence(self, t: int, *event_ids: str) -> None:
        """Add evidence events seen at `t`, keeping at most `max_evidence` ids."""
        self.first_seen = min(self.first_seen, t)
        self.last_seen = max(self.last_seen, t)
        room = self.max_evidence - len(self.event_ids)
        self.event_ids.extend(event_ids[:room] if room < len(event_ids) else event_ids)
        if room < len(event_ids):
            self.evidence_dropped += len(event_ids) - max(room, 0)

    @abstractmethod
    def details(self) -> dict[str, object]:
        """The numbers behind the alert, rendered from the detector's typed state."""

    def amount_at_risk(self) -> int | None:
        """The customer's money the incident says was taken in error (None: not a money rule)."""
        return None

    def to_alert(self) -> Alert:
        details = self.details()
        if self.evidence_dropped:
            details["evidence_truncated"] = self.evidence_dropped
        # model_construct skips the validators, so the texts are masked here (defence in depth:
        # the guard at decode already refused ids holding a card number).
        return Alert.model_construct(
            alert_id=self.alert_id,
            detector=self.detector,
            severity=self.severity,
            terminal_id=mask_pans(self.terminal_id),
            merchant_id=mask_pans(self.merchant_id),
            card_id=None if self.card_id is None else mask_pans(self.card_id),
            first_seen=to_datetime(self.first_seen),
            last_seen=to_datetime(self.last_seen),
            event_ids=[mask_pans(event_id) for event_id in self.event_ids],
            count=self.count,
            summary=mask_pans(self.summary),
            details=cast(dict[str, object], mask_tree(details)),
            score=None,
            model_version=None,
            amount_at_risk_minor=self.amount_at_risk(),
            currency=self.currency,
            revision=self.revision,
        )
