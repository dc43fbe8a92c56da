"""Small builders for test events: readable tables of (kind, seconds, fields) become messages."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from monitor.core.alerts import Alert, newest
from monitor.scoring.pipeline import replay_messages
from monitor.scoring.policy import Policy
from monitor.scoring.scorer import Scorer
from monitor.scoring.state import Watermark

T0 = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
_ids = itertools.count()
CLOCK = "T-CLOCK"


def event(
    kind: str,
    at: float,
    *,
    ref: str = "R1",
    card: str = "tok_card_0001",
    terminal: str = "T-0001",
    merchant: str = "M-01",
    amount: int = 3500,
    currency: str = "EUR",
    event_id: str | None = None,
    **extra: object,
) -> dict[str, object]:
    """One event `at` seconds after T0."""
    body: dict[str, object] = {
        "event_id": event_id or f"e{next(_ids):07d}",
        "event_time": (T0 + timedelta(seconds=at)).isoformat(),
        "kind": kind,
        "terminal_id": terminal,
        "merchant_id": merchant,
        "card_id": card,
        "txn_ref": ref,
        "amount_minor": amount,
        "currency": currency,
    }
    body.update(extra)
    return body


def encode(events: Iterable[dict[str, object]]) -> list[bytes]:
    """The events as messages; each `tick` is sent by `Watermark.QUORUM` clock terminals."""
    messages = []
    for e in events:
        messages.append(json.dumps(e).encode())
        if e["terminal_id"] == CLOCK:
            for i in range(1, Watermark.QUORUM):
                also = {"event_id": f"{e['event_id']}-{i}", "terminal_id": f"{CLOCK}-{i}"}
                messages.append(json.dumps({**e, **also}).encode())
    return messages


def tick(at: float, ref: str = "tick") -> dict[str, object]:
    """An unrelated event that moves the watermark to `at` seconds. One terminal's clock alone
    cannot move event time far (docs/detectors.md, "Time"): `encode` sends it from enough
    terminals to count as all traffic getting there."""
    return event(
        "auth_request", at, ref=f"{ref}-{at}", card="tok_clock_000", terminal=CLOCK, amount=9999
    )


def score(
    events: Iterable[dict[str, object]], policy: Policy | None = None, batch_size: int = 1000
) -> dict[str, Alert]:
    """Replay events to the end; each alert id's final version."""
    sink, _ = replay_messages(encode(events), Scorer(policy or Policy()), batch_size)
    return sink.final_alerts()


def by_detector(alerts: dict[str, Alert], detector: str) -> list[Alert]:
    return [a for a in alerts.values() if a.detector == detector]


def states(alerts: Iterable[Alert]) -> list[Alert]:
    """The versions with their revisions left out (they depend on the batches)."""
    return [a.model_copy(update={"revision": 0}) for a in alerts]


def final_states(alerts: Iterable[Alert]) -> dict[str, Alert]:
    """Each alert_id's newest version with its revision left out: the final state, which the
    same events give whatever the batches (the revisions depend on them)."""
    return {key: a.model_copy(update={"revision": 0}) for key, a in newest(alerts).items()}
