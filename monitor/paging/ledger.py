"""Dedup against the ledger: what each channel was told, and whether to tell it again.

The ledger must outlive the process: the dispatcher persists `Ledger.record(...)` after each
accepted notification (the `posmon.dispatch.ledger` topic) and `restore`s at start-up, so a
redelivered or replayed alert is never paged twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from monitor.core.alerts import Alert
from monitor.paging.notification import Decision, Kind


@dataclass(frozen=True, slots=True)
class Notified:
    """What a channel was last told about an alert: trigger or resolve, at which count, when."""

    kind: Kind
    count: int
    at: float


class _LedgerRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    alert_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    channel: str
    kind: Kind
    count: Annotated[int, Field(ge=1)]
    at: float


def ledger_key(alert_id: str, channel: str) -> str:
    """The key of a ledger record on a compacted topic: the latest record per key wins."""
    return f"{alert_id}/{channel}"


class Ledger:
    """What was notified, per (alert_id, channel). It must outlive the process: the dispatcher
    persists `record(...)` after each accepted notification and `restore`s at start-up."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], Notified] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, alert_id: str, channel: str) -> Notified | None:
        return self._entries.get((alert_id, channel))

    def note(self, alert: Alert, channel: str, kind: Kind, now: float) -> dict[str, object]:
        """Remember that `channel` accepted a notification; returns the record to persist."""
        self._entries[alert.alert_id, channel] = Notified(kind, alert.count, now)
        return self.record(alert.alert_id, channel)

    def record(self, alert_id: str, channel: str) -> dict[str, object]:
        """The compact JSON-able record of one entry (key it with `ledger_key`)."""
        entry = self._entries[alert_id, channel]
        return {
            "alert_id": alert_id,
            "channel": channel,
            "kind": entry.kind,
            "count": entry.count,
            "at": entry.at,
        }

    def records(self) -> list[dict[str, object]]:
        return [self.record(alert_id, channel) for alert_id, channel in self._entries]

    @classmethod
    def restore(cls, records: Iterable[Mapping[str, object]]) -> Ledger:
        """A ledger from persisted records, in topic order (a later record replaces an earlier
        one). A malformed record raises ValueError: a ledger that silently forgets would page
        twice."""
        ledger = cls()
        for raw in records:
            try:
                rec = _LedgerRecord.model_validate(raw)
            except ValidationError as exc:
                raise ValueError(f"malformed ledger record {raw!r}: {exc}") from exc
            ledger._entries[rec.alert_id, rec.channel] = Notified(rec.kind, rec.count, rec.at)
        return ledger

    def forget(self, before: float) -> list[tuple[str, str]]:
        """Drop entries last notified before `before` (the retention horizon); returns their
        (alert_id, channel) so the dispatcher can write tombstones."""
        gone = [key for key, entry in self._entries.items() if entry.at < before]
        for key in gone:
            del self._entries[key]
        return gone


def dedup(
    ledger: Ledger,
    alert: Alert,
    channel: str,
    now: float,
    repeat_interval: float,
    *,
    kind: Kind = "trigger",
) -> Decision:
    """Should `channel` hear about `alert` now? Reasons:

    - "new": never notified; "grew": the alert's count went up since (an update, not a new page);
    - "repeat": nothing new, but `repeat_interval` elapsed since the last notification;
    - "duplicate": this alert_id was notified and nothing changed (a redelivery or a replay);
    - "resolved": a resolve for a notified alert; "never_notified": a resolve nobody needs.
    """
    entry = ledger.get(alert.alert_id, channel)
    if kind == "resolve":
        if entry is None:
            return Decision(False, "never_notified")
        return (
            Decision(False, "duplicate") if entry.kind == "resolve" else Decision(True, "resolved")
        )
    if entry is None:
        return Decision(True, "new")
    if alert.count > entry.count:
        return Decision(True, "grew")
    if entry.kind == "trigger" and now - entry.at >= repeat_interval:
        return Decision(True, "repeat")
    return Decision(False, "duplicate")
