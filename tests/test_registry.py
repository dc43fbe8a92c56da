"""Adding a detector is one module and one registry line: a detector defined here, registered in
a `Detectors` with one more field, gets its events, its decisions and its alerts from the scorer
without a change to the scorer. (The anomaly model's `model_outlier` will plug in this way.)"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import pytest

from monitor.core.alerts import alert_id
from monitor.core.events import Event
from monitor.scoring.attempts import Attempt
from monitor.scoring.detectors.base import (
    Amounts,
    Deadline,
    DetectorSettings,
    Found,
    Hooks,
    OnArrival,
    Shared,
)
from monitor.scoring.incident import Incident
from monitor.scoring.policy import Detectors, Policy
from monitor.scoring.scorer import Scorer
from monitor.scoring.state import Timers
from tests.builders import by_detector, event, score, tick

NAME: Final = "model_outlier"


@dataclass(slots=True, kw_only=True)
class Outlier(Incident):
    reason: str

    def details(self) -> dict[str, object]:
        return {"reason": self.reason}


def _outlier(ev: Event, reason: str, max_evidence: int) -> Outlier:
    return Outlier(
        alert_id=alert_id(NAME, ev.event_id),
        detector=NAME,
        severity="warning",
        terminal_id=ev.terminal_id,
        merchant_id=ev.merchant_id,
        card_id=ev.card_id,
        first_seen=ev.t,
        last_seen=ev.t,
        max_evidence=max_evidence,
        event_ids=[ev.event_id],
        summary=f"{reason} at {ev.terminal_id}",
        currency=ev.currency,
        reason=reason,
    )


class Odd(OnArrival):
    """Fires on arrival for every request of an amount ending in 77, from 1,000 on."""

    def __init__(self, shared: Shared) -> None:
        self.max_evidence = shared.max_evidence
        self.seen: list[int] = []

    def hooks(self) -> Hooks:
        return Hooks(on_event={"auth_request": Amounts(self.on_request, at_least=1000)})

    def on_request(self, ev: Event) -> Found:
        self.seen.append(ev.amount_minor)
        if ev.amount_minor % 100 == 77:
            return (_outlier(ev, "odd amount", self.max_evidence),)
        return None

    def sweep(self, watermark: int) -> None:
        pass

    def tallies(self) -> Mapping[str, int]:
        return {"odd_seen": len(self.seen)}


class Unreversed(Deadline[Event]):
    """Decides a declined attempt 60 s after the decline: fires unless a reversal came."""

    def __init__(self, shared: Shared, rank: int) -> None:
        self.max_evidence = shared.max_evidence
        self.timers: Timers[Event] = Timers(rank)
        self.attempts = shared.attempts

    def hooks(self) -> Hooks:
        return Hooks(on_attempt={"auth_declined": self.on_decline})

    def on_decline(self, ev: Event, attempt: Attempt) -> Found:
        self.timers.schedule(ev.t + 60_000_000, ev.txn_ref, ev)
        return None

    def decide(self, payload: Event, deadline: int) -> Incident | None:
        attempt = self.attempts.get(payload.txn_ref)
        if attempt is not None and attempt.reversed_before(deadline):
            return None
        return _outlier(payload, "declined, not reversed", self.max_evidence)

    def sweep(self, watermark: int) -> None:
        pass


class OddSettings(DetectorSettings):
    deadline: bool = False

    def build(self, shared: Shared, rank: int) -> Odd | Unreversed:
        return Unreversed(shared, rank) if self.deadline else Odd(shared)


class WithModel(Detectors):
    # It takes the model's place: an alert's detector is one of the contract's names.
    model_outlier: OddSettings = OddSettings()  # type: ignore[assignment]


class ModelPolicy(Policy):
    detectors: WithModel = WithModel()


def _policy(**settings: Any) -> ModelPolicy:
    return ModelPolicy(detectors=WithModel(model_outlier=OddSettings(**settings)))


def test_an_on_arrival_detector_plugs_in_through_the_registry_alone() -> None:
    events = [
        event("auth_request", 0, ref="A", amount=1277),
        event("auth_request", 1, ref="B", amount=77),  # below its band: never shown to it
        event("auth_request", 2, ref="C", amount=1300),
        event("auth_request", 3, ref="D", amount=2_000_077),  # large too
        tick(600),
    ]
    alerts = score(events, _policy())
    outliers = by_detector(alerts, NAME)
    assert sorted(a.summary for a in outliers) == ["odd amount at T-0001"] * 2
    assert all(a.currency == "EUR" and a.details == {"reason": "odd amount"} for a in outliers)
    assert len(by_detector(alerts, "large_amount")) == 1  # the others still run
    scorer = Scorer(_policy())
    assert [type(d).__name__ for d in scorer.detectors][-1] == "Odd"


def test_a_deadline_detector_plugs_in_and_decides_in_deadline_order() -> None:
    events = [
        event("auth_request", 0, ref="R1"),
        event("auth_declined", 1, ref="R1", event_id="decline-R1"),
        event("auth_request", 0, ref="R2"),
        event("auth_declined", 1, ref="R2", event_id="decline-R2"),
        event("reversal", 30, ref="R2"),  # R2 is reversed within the minute
        event("auth_request", 0, ref="R3"),
        event("auth_declined", 1, ref="R3", event_id="decline-R3"),
    ]
    alerts = by_detector(score([*events, tick(150)], _policy(deadline=True)), NAME)
    assert [a.event_ids for a in alerts] == [["decline-R1"], ["decline-R3"]]
    # At the end of the input the watermark is 60 s: no decline is a minute old yet.
    assert by_detector(score([*events, tick(60)], _policy(deadline=True)), NAME) == []


def test_a_disabled_detector_is_not_built() -> None:
    assert len(Scorer(_policy(enabled=False)).detectors) == len(Scorer(Policy()).detectors)


def test_the_scorer_adds_up_the_tallies_and_sizes_of_its_detectors() -> None:
    scorer = Scorer(_policy())
    assert scorer.tallies() == {"labels_unused": 0, "small_attempts": 0, "odd_seen": 0}
    assert set(scorer.state_sizes()) == {
        "attempts",
        "alert_evidence",
        "dedup_ids",
        "timers",
        "held_back",
        "preauth_holds",
    }


class Misplaced(Odd):
    def hooks(self) -> Hooks:
        return Hooks(on_event={"auth_declined": self.on_request})


class MisplacedSettings(OddSettings):
    def build(self, shared: Shared, rank: int) -> Odd | Unreversed:
        return Misplaced(shared)


class WithMisplaced(Detectors):
    # It takes the model's place: an alert's detector is one of the contract's names.
    model_outlier: MisplacedSettings = MisplacedSettings()  # type: ignore[assignment]


class MisplacedPolicy(Policy):
    detectors: WithMisplaced = WithMisplaced()


def test_a_hook_on_the_wrong_side_of_an_attempt_is_refused_at_start() -> None:
    """An attempt kind's hooks get the attempt; asking for it as a bare event is a mistake."""
    with pytest.raises(ValueError, match="auth_declined"):
        Scorer(MisplacedPolicy())
