"""The dispatch loop with the stages wired: one page per outage, nothing paged twice, commits
only after the page went out (or was parked)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry

from monitor.cli.health import DispatchProbes
from monitor.core.alerts import Alert, alert_id
from monitor.core.batches import Batch
from monitor.paging.delivery import Deliverer, RetryPolicy
from monitor.paging.dispatcher import Dispatcher
from monitor.paging.ledger import Ledger
from monitor.paging.metrics import DispatchMetrics
from monitor.paging.notification import DELIVERED, Notification, Outcome
from monitor.paging.routing import DispatchConfig

T0 = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
CONFIG = DispatchConfig.model_validate(
    {
        "channels": {"ops": {"type": "console"}, "risk": {"type": "console"}},
        "routes": [
            {
                "name": "operations",
                "match": {"detectors": ["terminal_failure_spike", "missing_reversal"]},
                "channels": ["ops"],
                "group_by": ["detector", "terminal_id"],
                "group_wait": 10,
                "group_interval": 60,
            },
            {
                "name": "risk",
                "match": {"severities": ["critical"]},
                "channels": ["risk"],
                "group_wait": 5,
            },
        ],
    }
)


class FakeChannel:
    supports_resolve = True

    def __init__(self, name: str, outcomes: list[Outcome] | None = None) -> None:
        self.name = name
        self.outcomes = outcomes or []
        self.sent: list[Notification] = []

    def send(self, notification: Notification) -> Outcome:
        self.sent.append(notification)
        return self.outcomes.pop(0) if self.outcomes else DELIVERED


class MemoryOutbox:
    def __init__(self) -> None:
        self.records: list[dict[str, object]] = []
        self.parked: list[dict[str, object]] = []

    def record(self, records: Any) -> None:
        self.records += records

    def park(self, parked: Any) -> None:
        self.parked += parked

    def forget(self, keys: Any) -> None:
        self.forgotten = list(keys)


def make_alert(
    detector: str, key: str, *, terminal: str = "T1", severity: str = "warning", count: int = 1
) -> Alert:
    return Alert(
        alert_id=alert_id(detector, key),
        detector=detector,
        severity=severity,
        terminal_id=terminal,
        merchant_id="M1",
        card_id=None,
        first_seen=T0,
        last_seen=T0 + timedelta(seconds=count),
        event_ids=[f"e-{key}"],
        count=count,
        summary=f"{detector} {key}",
        details={},
    )


def batch(alerts: list[Alert], start: int = 0) -> Batch:
    messages = [a.model_dump_json().encode() for a in alerts]
    return Batch([(0, messages)], {0: start + len(messages)})


def dispatcher(
    channels: dict[str, FakeChannel],
    ledger: Ledger | None = None,
    registry: CollectorRegistry | None = None,
) -> tuple[Dispatcher, MemoryOutbox]:
    clock = [0.0]
    deliverer = Deliverer(
        RetryPolicy(initial=1, deadline=30, jitter=0),
        now=lambda: clock[0],
        sleep=lambda s: clock.__setitem__(0, clock[0] + s),
    )
    outbox = MemoryOutbox()
    metrics = DispatchMetrics(registry) if registry is not None else None
    d = Dispatcher(
        CONFIG, channels, deliverer, outbox, ledger=ledger, metrics=metrics, clock=lambda: clock[0]
    )
    return d, outbox


def test_one_outage_one_operations_page_and_commits_follow_delivery() -> None:
    ops, risk = FakeChannel("ops"), FakeChannel("risk")
    d, outbox = dispatcher({"ops": ops, "risk": risk})
    cards = [make_alert("missing_reversal", f"card{i}") for i in range(50)]
    spike = make_alert("terminal_failure_spike", "T1")
    d.receive(batch([*cards, spike]), now=0.0)
    d.tick(1.0)
    assert ops.sent == []
    assert d.committable() == {}  # nothing is settled before its group went out
    d.tick(11.0)
    assert [n.alerts[0].detector for n in ops.sent] == ["terminal_failure_spike"]
    assert d.stats.inhibited == 50
    assert d.committable() == {0: 51}
    assert {r["alert_id"] for r in outbox.records} == {spike.alert_id}


def test_nothing_is_paged_twice_across_a_restart() -> None:
    risk = FakeChannel("risk")
    ghost = make_alert("failed_then_debited", "g1", severity="critical")
    d, outbox = dispatcher({"ops": FakeChannel("ops"), "risk": risk})
    d.receive(batch([ghost]), 0.0)
    d.tick(6.0)
    assert len(risk.sent) == 1
    # A restart before the commit: the alert is read again, the ledger says it was said.
    restored = Ledger.restore(json.loads(json.dumps(outbox.records)))
    risk_again = FakeChannel("risk")
    d2, _ = dispatcher({"ops": FakeChannel("ops"), "risk": risk_again}, ledger=restored)
    d2.receive(batch([ghost]), 100.0)
    d2.tick(106.0)
    assert risk_again.sent == []
    assert d2.stats.duplicates == 1
    assert d2.committable() == {0: 1}
    # A grown alert is news: one update, at the group's next interval (5 min by default).
    d2.receive(batch([ghost.model_copy(update={"count": 2})], start=1), 200.0)
    d2.tick(206.0)
    assert risk_again.sent == []
    d2.tick(406.0)
    assert len(risk_again.sent) == 1
    assert d2.committable() == {0: 2}


def test_a_permanent_refusal_is_parked_after_one_attempt_and_committed() -> None:
    risk = FakeChannel("risk", [Outcome("permanent", "400 invalid routing key")])
    d, outbox = dispatcher({"ops": FakeChannel("ops"), "risk": risk})
    d.receive(batch([make_alert("duplicate_debit", "d1", severity="critical")]), 0.0)
    d.tick(6.0)
    assert len(risk.sent) == 1
    assert [p["reason"] for p in outbox.parked] == ["risk: 400 invalid routing key"]
    assert d.committable() == {0: 1}


def test_retries_until_the_channel_recovers() -> None:
    risk = FakeChannel("risk", [Outcome("retry", "503"), Outcome("retry", "429", retry_after=2.0)])
    d, outbox = dispatcher({"ops": FakeChannel("ops"), "risk": risk})
    d.receive(batch([make_alert("duplicate_debit", "d1", severity="critical")]), 0.0)
    d.tick(6.0)
    assert len(risk.sent) == 3
    assert outbox.parked == []
    assert len(outbox.records) == 1


def test_a_message_that_is_not_an_alert_is_parked_not_lost() -> None:
    d, outbox = dispatcher({"ops": FakeChannel("ops"), "risk": FakeChannel("risk")})
    d.receive(Batch([(0, [b"{not an alert"])], {0: 1}), 0.0)
    assert outbox.parked[0]["reason"] == "invalid_alert"
    assert d.committable() == {0: 1}


def test_delivery_metrics() -> None:
    registry = CollectorRegistry()
    risk = FakeChannel(
        "risk", [Outcome("retry", "503"), DELIVERED, Outcome("permanent", "400 bad")]
    )
    d, _ = dispatcher({"ops": FakeChannel("ops"), "risk": risk}, registry=registry)
    cards = [make_alert("missing_reversal", f"c{i}") for i in range(3)]
    d.receive(batch([make_alert("terminal_failure_spike", "T1"), *cards]), 0.0)
    d.receive(batch([make_alert("duplicate_debit", "d1", severity="critical")], start=4), 0.0)
    assert d.oldest_undelivered(4.0) == 4.0
    d.tick(6.0)  # the risk group: one retry, then delivered
    d.receive(batch([make_alert("duplicate_debit", "d2", severity="critical")], start=5), 7.0)
    d.tick(400.0)  # the operations groups, and the risk group's next interval: refused, parked

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    assert value("posmon_alerts_delivered_total", channel="risk", outcome="delivered") == 1
    assert value("posmon_alerts_delivered_total", channel="risk", outcome="parked_permanent") == 1
    assert value("posmon_alerts_parked_total", channel="risk", cause="permanent") == 1
    assert value("posmon_delivery_retries_total", channel="risk") == 1
    assert value("posmon_dispatch_withheld_total", reason="inhibited") == 3
    assert value("posmon_delivery_seconds_count", channel="risk") == 2
    assert d.oldest_undelivered(400.0) == 0.0


def test_a_quiet_outage_is_resolved_on_the_channels_that_heard_of_it() -> None:
    ops, risk = FakeChannel("ops"), FakeChannel("risk")
    d, outbox = dispatcher({"ops": ops, "risk": risk})
    spike = make_alert("terminal_failure_spike", "T1")
    d.receive(batch([spike]), 0.0)
    d.tick(11.0)
    assert [n.kind for n in ops.sent] == ["trigger"]
    # Event time moves on (another incident, 1,000 s later): the outage has been quiet 15 min.
    later = make_alert("failed_then_debited", "g9", severity="critical", count=1000)
    d.receive(batch([later], start=1), 20.0)
    d.tick(30.0)
    assert [(n.kind, n.alerts[0].alert_id) for n in ops.sent] == [
        ("trigger", spike.alert_id),
        ("resolve", spike.alert_id),
    ]
    assert all(n.kind == "trigger" for n in risk.sent)  # risk never heard of the outage
    d.tick(40.0)
    assert len(ops.sent) == 2  # resolved once
    assert [r["kind"] for r in outbox.records if r["alert_id"] == spike.alert_id] == [
        "trigger",
        "resolve",
    ]


def test_open_incidents_are_reposted_to_channels_that_expire_them() -> None:
    ops = FakeChannel("ops")
    ops.repost_every = 60.0  # type: ignore[attr-defined]  # as AlertmanagerChannel declares
    d, _ = dispatcher({"ops": ops, "risk": FakeChannel("risk")})
    spike = make_alert("terminal_failure_spike", "T1")
    d.receive(batch([spike]), 0.0)
    d.tick(11.0)
    d.tick(30.0)
    d.tick(75.0)
    d.tick(80.0)
    d.tick(140.0)
    assert [n.group_key for n in ops.sent] == [
        "operations/terminal_failure_spike/T1",
        "repost",
        "repost",
    ]


def test_an_alert_the_scorer_resolved_is_resolved_on_the_channels() -> None:
    risk = FakeChannel("risk")
    d, _ = dispatcher({"ops": FakeChannel("ops"), "risk": risk})
    ghost = make_alert("failed_then_debited", "g1", severity="critical")
    d.receive(batch([ghost]), 0.0)
    d.tick(6.0)
    refunded = ghost.model_copy(update={"details": {"resolved": True}})
    d.receive(batch([refunded], start=1), 10.0)
    d.tick(11.0)
    assert [n.kind for n in risk.sent] == ["trigger", "resolve"]
    assert d.committable() == {0: 2}


def test_the_ledger_forgets_after_its_retention_and_says_so() -> None:
    d, outbox = dispatcher({"ops": FakeChannel("ops"), "risk": FakeChannel("risk")})
    ghost = make_alert("failed_then_debited", "g1", severity="critical")
    d.receive(batch([ghost]), 0.0)
    d.tick(6.0)
    assert d.ledger.get(ghost.alert_id, "risk") is not None
    # Two days of event time later the ghost debit leaves its group (no more repeats) ...
    later = make_alert("large_amount", "l1", count=2 * 86400)
    d.receive(batch([later], start=1), 7.0)
    d.tick(60.0)
    # ... and a week later the ledger forgets it.
    d.tick(8 * 86400.0)
    assert d.ledger.get(ghost.alert_id, "risk") is None
    assert getattr(outbox, "forgotten", []) == [(ghost.alert_id, "risk")]


def test_an_alert_resolved_before_its_group_went_out_is_settled_by_that_flush() -> None:
    """A grown version waits for its group's next interval; the scorer resolves the incident
    first. The group's flush carries it as resolved, and that settles its offset: commits go
    on instead of stopping at it for good."""
    risk = FakeChannel("risk")
    d, _ = dispatcher({"ops": FakeChannel("ops"), "risk": risk})
    ghost = make_alert("failed_then_debited", "g1", severity="critical")
    d.receive(batch([ghost]), 0.0)
    d.tick(6.0)
    assert d.committable() == {0: 1}
    d.receive(batch([ghost.model_copy(update={"count": 2})], start=1), 200.0)
    d.tick(201.0)
    resolved = ghost.model_copy(update={"count": 2, "details": {"resolved": True}})
    d.receive(batch([resolved], start=2), 210.0)
    d.tick(211.0)
    assert [n.kind for n in risk.sent] == ["trigger", "resolve"]
    assert d.committable() == {}  # offset 1 still waits for its group
    d.tick(306.0)  # the group's next interval: it goes out with the alert as resolved
    assert d.committable() == {0: 3}
    assert [n.kind for n in risk.sent] == ["trigger", "resolve"]  # nothing more was said


def test_probes_of_posmon_dispatch() -> None:
    clock = [1000.0]
    probes = DispatchProbes(stall_after=60.0, clock=lambda: clock[0])
    assert probes.health() == (True, "starting")
    assert probes.ready() == (False, "not ready: starting")
    d, _ = dispatcher({"ops": FakeChannel("ops"), "risk": FakeChannel("risk")})
    probes.started(d)
    assert probes.health() == (False, "the loop has not turned yet")
    d.last_turn = 990.0  # as `run_dispatch` stamps it, on the same clock
    assert probes.health() == (True, "the loop turned 10 s ago")
    assert probes.ready() == (True, "ready")
    clock[0] = 1051.0
    assert probes.health() == (False, "the loop turned 61 s ago")
