"""The notification decisions, stage by stage, with explicit `now` values (dispatcher seconds)."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from monitor.core.alerts import Alert, alert_id
from monitor.core.batches import Batch
from monitor.paging.delivery import Deliverer, RetryPolicy
from monitor.paging.dispatcher import Dispatcher
from monitor.paging.grouping import Groups
from monitor.paging.inhibition import Inhibitor
from monitor.paging.ledger import Ledger, dedup, ledger_key
from monitor.paging.notification import DELIVERED, Decision, Kind, Notification, Outcome, epoch
from monitor.paging.resolution import resolution
from monitor.paging.routing import DispatchConfig, Inhibition, Matcher
from monitor.paging.storm import StormLimiter
from tests.test_dispatch import MemoryOutbox

T0 = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
HOUR = 3600.0


def alert(
    detector: Any = "missing_reversal",
    key: str = "c1",
    *,
    terminal: str = "T1",
    merchant: str = "M1",
    severity: Any = "warning",
    count: int = 1,
    first: float = 0.0,
    last: float | None = None,
) -> Alert:
    """An alert whose id is fixed by (detector, key, terminal); times are seconds after T0."""
    return Alert(
        alert_id=alert_id(detector, key, terminal),
        detector=detector,
        severity=severity,
        terminal_id=terminal,
        merchant_id=merchant,
        card_id=None,
        first_seen=T0 + timedelta(seconds=first),
        last_seen=T0 + timedelta(seconds=first if last is None else last),
        event_ids=[f"e{i}" for i in range(count)],
        count=count,
        summary=f"{detector} {key}",
        details={},
    )


CONFIG = DispatchConfig.model_validate(
    {
        "channels": {
            "pd-ops": {"type": "console"},
            "am": {"type": "console"},
            "pd-risk": {"type": "console"},
            "slack": {"type": "console"},
        },
        "routes": [
            {
                "name": "operations",
                "match": {"detectors": ["terminal_failure_spike", "missing_reversal"]},
                "channels": ["pd-ops", "am"],
                "group_by": ["detector", "terminal_id"],
                "group_wait": "30s",
                "group_interval": "5m",
                "repeat_interval": "1h",
            },
            {
                "name": "risk",
                "match": {"severities": ["critical"]},
                "channels": ["pd-risk"],
                "group_wait": "10s",
            },
        ],
        "default_route": {"channels": ["slack"], "storm_limit": {"max_notifications": 20}},
    }
)
OPS = CONFIG.route("operations")


# --- 1. Dedup ------------------------------------------------------------------------------------

History = tuple[Kind, int, float] | None


@pytest.mark.parametrize(
    ("history", "count", "now", "kind", "expected"),
    [
        (None, 1, 0.0, "trigger", Decision(True, "new")),
        (("trigger", 1, 0.0), 1, 10.0, "trigger", Decision(False, "duplicate")),
        (("trigger", 1, 0.0), 2, 10.0, "trigger", Decision(True, "grew")),
        (("trigger", 2, 0.0), 1, 10.0, "trigger", Decision(False, "duplicate")),  # old version
        (("trigger", 1, 0.0), 1, 4 * HOUR - 1, "trigger", Decision(False, "duplicate")),
        (("trigger", 1, 0.0), 1, 4 * HOUR, "trigger", Decision(True, "repeat")),
        (None, 1, 0.0, "resolve", Decision(False, "never_notified")),
        (("trigger", 3, 0.0), 3, 10.0, "resolve", Decision(True, "resolved")),
        (("resolve", 1, 0.0), 1, 10.0, "resolve", Decision(False, "duplicate")),
        (("resolve", 1, 0.0), 1, 9 * HOUR, "trigger", Decision(False, "duplicate")),  # no repeat
        (("resolve", 1, 0.0), 2, 10.0, "trigger", Decision(True, "grew")),  # it came back
    ],
)
def test_dedup(history: History, count: int, now: float, kind: Kind, expected: Decision) -> None:
    ledger = Ledger()
    if history is not None:
        h_kind, h_count, h_at = history
        ledger.note(alert(count=h_count), "pd", h_kind, h_at)
    assert dedup(ledger, alert(count=count), "pd", now, 4 * HOUR, kind=kind) == expected


def test_the_same_alert_twice_is_a_duplicate_also_after_a_restart() -> None:
    ledger = Ledger()
    a = alert()
    assert dedup(ledger, a, "pd", 0.0, HOUR).reason == "new"
    persisted = [json.loads(json.dumps(ledger.note(a, "pd", "trigger", 0.0)))]
    assert dedup(ledger, a, "pd", 5.0, HOUR).reason == "duplicate"

    restored = Ledger.restore(persisted)
    assert dedup(restored, a, "pd", 5.0, HOUR) == Decision(False, "duplicate")
    assert dedup(restored, alert(count=2), "pd", 5.0, HOUR) == Decision(True, "grew")
    # Dedup is per channel: a channel that never heard of it still gets it.
    assert dedup(restored, a, "slack", 5.0, HOUR) == Decision(True, "new")


def test_ledger_records_are_compact_and_the_latest_per_key_wins() -> None:
    a = alert()
    ledger = Ledger()
    first = ledger.note(a, "pd", "trigger", 1.0)
    second = ledger.note(alert(count=4), "pd", "trigger", 2.0)
    assert first == {
        "alert_id": a.alert_id,
        "channel": "pd",
        "kind": "trigger",
        "count": 1,
        "at": 1.0,
    }
    assert ledger_key(a.alert_id, "pd") == f"{a.alert_id}/pd"
    restored = Ledger.restore([first, second])
    assert restored.records() == [second]
    assert len(restored) == 1


@pytest.mark.parametrize(
    "record",
    [
        {"alert_id": "nothex", "channel": "pd", "kind": "trigger", "count": 1, "at": 0.0},
        {"alert_id": "0" * 32, "channel": "pd", "kind": "page", "count": 1, "at": 0.0},
        {"alert_id": "0" * 32, "channel": "pd", "kind": "trigger", "count": 0, "at": 0.0},
        {"alert_id": "0" * 32, "channel": "pd", "kind": "trigger", "count": 1},
        {"alert_id": "0" * 32, "channel": "pd", "kind": "trigger", "count": 1, "at": 0, "x": 1},
    ],
)
def test_a_malformed_ledger_record_is_refused(record: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="malformed ledger record"):
        Ledger.restore([record])


def test_ledger_forgets_past_its_horizon() -> None:
    ledger = Ledger()
    old, new = alert(key="old"), alert(key="new")
    ledger.note(old, "pd", "trigger", 10.0)
    ledger.note(new, "pd", "trigger", 100.0)
    assert ledger.forget(before=50.0) == [(old.alert_id, "pd")]
    assert ledger.get(old.alert_id, "pd") is None
    assert ledger.get(new.alert_id, "pd") is not None


# --- 2. Inhibition -------------------------------------------------------------------------------

SPIKE = alert("terminal_failure_spike", "T1", first=0.0, last=300.0, count=10)


@pytest.mark.parametrize(
    ("target", "inhibited"),
    [
        (alert(first=120.0), True),
        (alert(first=120.0, terminal="T2"), False),  # another terminal
        (alert("large_amount", first=120.0), False),  # not a target of the rule
        (alert(first=-600.0), True),  # shortly before the spike: within hold
        (alert(first=-900.0), True),
        (alert(first=300.0 + 900.0), True),  # hold after the spike's last evidence
        (alert(first=300.0 + 901.0), False),  # a later, unrelated incident
        (alert(first=-901.0), False),
    ],
)
def test_inhibited(target: Alert, inhibited: bool) -> None:
    inhibitor = Inhibitor(CONFIG.inhibitions)
    inhibitor.observe(SPIKE)
    reason = inhibitor.inhibited(target)
    if inhibited:
        assert reason == f"inhibited by terminal_failure_spike {SPIKE.alert_id} (terminal_id=T1)"
    else:
        assert reason is None


@pytest.mark.parametrize(
    ("update", "first_seen", "inhibited"),
    [
        # grew: its span reaches further
        (SPIKE.model_copy(update={"last_seen": T0 + timedelta(seconds=400)}), 1300.0, True),
        (SPIKE, 1201.0, False),  # a redelivery changes nothing
        # an older version read late never shrinks the span
        (SPIKE.model_copy(update={"last_seen": T0, "count": 1}), 1200.0, True),
    ],
)
def test_a_source_mutes_its_newest_span(update: Alert, first_seen: float, inhibited: bool) -> None:
    inhibitor = Inhibitor(CONFIG.inhibitions)
    inhibitor.observe(SPIKE)
    inhibitor.observe(update)
    assert (inhibitor.inhibited(alert(first=first_seen)) is not None) is inhibited


def test_a_source_is_forgotten_once_its_span_and_hold_are_past_the_horizon() -> None:
    inhibitor = Inhibitor(CONFIG.inhibitions)
    inhibitor.observe(SPIKE)
    end = epoch(SPIKE.last_seen) + 900.0
    assert inhibitor.expire(end) == 0
    assert inhibitor.inhibited(alert(first=120.0)) is not None
    assert inhibitor.expire(end + 1) == 1
    assert inhibitor.inhibited(alert(first=120.0)) is None


def test_an_alert_never_inhibits_itself() -> None:
    warnings = Matcher(severities=["warning"])
    inhibitor = Inhibitor([Inhibition(source=warnings, target=warnings, equal=["terminal_id"])])
    a, b = alert(key="a"), alert(key="b")
    inhibitor.observe(a)
    assert inhibitor.inhibited(a) is None
    assert inhibitor.inhibited(b) is not None


# --- 3. Grouping ---------------------------------------------------------------------------------

A1, A2, A3 = alert(key="a1"), alert(key="a2"), alert(key="a3")
A1_GROWN = alert(key="a1", count=2)
B1 = alert(key="b1", terminal="T2")

# Steps: ("add", now, alert) | ("resolve", now, alert) | ("due", now, [(terminal, reason,
# firing keys, resolved keys), ...]).
Step = tuple[str, float, Any]


def _run(steps: list[Step]) -> Groups:
    groups = Groups(CONFIG)
    for op, now, arg in steps:
        if op == "add":
            assert [k.route for k in groups.add(arg, now)] == ["operations"]
        elif op == "resolve":
            groups.resolve(arg.alert_id)
        else:
            got = [
                (
                    f.key.values[1],
                    f.reason,
                    sorted(a.summary.split()[1] for a in f.alerts),
                    sorted(a.summary.split()[1] for a in f.resolved),
                )
                for f in groups.due(now)
            ]
            assert got == arg, f"due({now})"
    return groups


@pytest.mark.parametrize(
    "steps",
    [
        pytest.param(
            [
                ("add", 0.0, A1),
                ("add", 10.0, A2),
                ("due", 29.0, []),
                ("due", 30.0, [("T1", "first", ["a1", "a2"], [])]),
                ("due", 31.0, []),
            ],
            id="group_wait gathers the first alerts into one flush",
        ),
        pytest.param(
            [
                ("add", 0.0, A1),
                ("due", 30.0, [("T1", "first", ["a1"], [])]),
                ("add", 40.0, A2),
                ("due", 100.0, []),
                ("add", 200.0, A3),
                ("due", 329.0, []),
                ("due", 330.0, [("T1", "changed", ["a1", "a2", "a3"], [])]),
                ("due", 630.0, []),
            ],
            id="group_interval batches later changes",
        ),
        pytest.param(
            [
                ("add", 0.0, A1),
                ("due", 30.0, [("T1", "first", ["a1"], [])]),
                ("add", 40.0, A1),
                ("due", 330.0, []),
                ("add", 400.0, A1_GROWN),
                ("due", 630.0, [("T1", "changed", ["a1"], [])]),
            ],
            id="a redelivery is no change, a grown alert is",
        ),
        pytest.param(
            [
                ("add", 0.0, A1),
                ("add", 0.0, A2),
                ("due", 30.0, [("T1", "first", ["a1", "a2"], [])]),
                ("resolve", 50.0, A1),
                ("due", 330.0, [("T1", "changed", ["a2"], ["a1"])]),
                ("due", 630.0, []),
            ],
            id="a resolved alert goes out once, then leaves",
        ),
        pytest.param(
            [
                ("add", 0.0, A1),
                ("add", 5.0, B1),
                ("due", 30.0, [("T1", "first", ["a1"], [])]),
                ("due", 35.0, [("T2", "first", ["b1"], [])]),
            ],
            id="group_by separates terminals, each with its own group_wait",
        ),
        pytest.param(
            [
                ("add", 0.0, A1),
                ("due", 1000.0, [("T1", "first", ["a1"], [])]),
                ("add", 1010.0, A2),
                ("due", 1299.0, []),
                ("due", 1300.0, [("T1", "changed", ["a1", "a2"], [])]),
            ],
            id="a late tick does not catch up: the next is group_interval after it",
        ),
    ],
)
def test_group_timing(steps: list[Step]) -> None:
    _run(steps)


def test_repeat_interval_renotifies_an_unchanged_group() -> None:
    groups = Groups(CONFIG)
    groups.add(A1, 0.0)
    flushes = []
    now = 0.0
    while now <= 7300.0:
        flushes += [(now, f.reason) for f in groups.due(now)]
        now = groups.next_due() or now + 1
    # first at group_wait; then a tick every 5 min, and a repeat once an hour has passed.
    assert flushes == [(30.0, "first"), (3630.0, "repeat"), (7230.0, "repeat")]


def test_a_fully_resolved_group_is_dropped() -> None:
    groups = _run([("add", 0.0, A1), ("due", 30.0, [("T1", "first", ["a1"], [])])])
    groups.resolve(A1.alert_id)
    assert [(f.reason, f.alerts, f.resolved) for f in groups.due(330.0)] == [("changed", (), (A1,))]
    assert len(groups) == 0
    assert groups.next_due() is None


def test_an_alert_joins_the_group_of_every_route_it_takes() -> None:
    config = DispatchConfig.model_validate(
        {
            "channels": {"audit": {"type": "console"}, "pd": {"type": "console"}},
            "routes": [
                {
                    "name": "audit",
                    "channels": ["audit"],
                    "continue": True,
                    "group_by": ["severity"],
                },
                {"name": "risk", "channels": ["pd"], "group_wait": 10},
            ],
        }
    )
    groups = Groups(config)
    keys = groups.add(alert("duplicate_debit", severity="critical", merchant="M9"), 0.0)
    assert [(k.route, k.values) for k in keys] == [
        ("audit", ("critical",)),
        ("risk", ("duplicate_debit", "M9")),
    ]
    assert groups.next_due() == 10.0
    assert [str(k) for k in keys] == ["audit/critical", "risk/duplicate_debit/M9"]
    assert [f.key.route for f in groups.due(30.0)] == ["audit", "risk"]


# --- 4. Storm limit ------------------------------------------------------------------------------

DEFAULT = CONFIG.route("default")  # storm limit 20 per 5 min


@pytest.mark.parametrize(
    ("times", "sent", "summaries"),
    [
        ([float(i) for i in range(20)], 20, []),
        ([float(i) for i in range(21)], 20, [(0.0, 1)]),
        # 200 alerts over 10 minutes: 20 sent + 1 summary per interval.
        ([i * 3.0 for i in range(200)], 40, [(0.0, 80), (300.0, 80)]),
        # Intervals are aligned to `per` on event time, whatever the order of arrival.
        ([0.0] * 25 + [1000.0] * 25, 40, [(0.0, 5), (900.0, 5)]),
        ([1000.0, 0.0] * 25, 40, [(0.0, 5), (900.0, 5)]),
    ],
)
def test_storm_limit(times: list[float], sent: int, summaries: list[tuple[float, int]]) -> None:
    """The intervals are on the alerts' event time (seconds after T0 here), read all at once."""
    storm = StormLimiter()
    decisions = [storm.admit(DEFAULT, alert(key=str(i), first=t), 0.0) for i, t in enumerate(times)]
    assert {d.reason for d in decisions} <= {"sent", "folded"}
    assert sum(d.notify for d in decisions) == sent
    assert storm.due(299.0) == []  # summaries go out `per` after the first admission
    out = storm.due(300.0)
    assert [(s.start - epoch(T0), s.folded) for s in out] == summaries
    assert storm.due(10_000.0) == []


def test_a_fold_after_the_summary_goes_out_in_the_next_one() -> None:
    """An interval keeps what it sent after its summary: a late alert of it (its group went out
    later) is folded, and told `per` seconds after that summary."""
    storm = StormLimiter()
    for i in range(22):
        storm.admit(DEFAULT, alert(key=str(i)), 100.0)
    assert storm.due(399.0) == []
    assert [s.folded for s in storm.due(400.0)] == [2]
    assert storm.admit(DEFAULT, alert(key="late"), 450.0).reason == "folded"  # budget spent
    assert storm.due(699.0) == []
    assert [s.folded for s in storm.due(700.0)] == [1]
    assert storm.admit(DEFAULT, alert(key="later"), 4999.0).reason == "folded"
    assert [s.folded for s in storm.due(5000.0)] == [1]
    assert storm.due(5300.0 + StormLimiter.RETENTION) == []  # forgotten: a fresh budget
    assert storm.admit(DEFAULT, alert(key="much later"), 9000.0).reason == "sent"


def test_storm_summary_counts_by_detector_and_names_merchants() -> None:
    storm = StormLimiter()
    route = DEFAULT
    for i in range(20):
        storm.admit(route, alert("large_amount", str(i)), 0.0)
    for i in range(37):
        detector = "terminal_failure_spike" if i < 30 else "missing_reversal"
        storm.admit(route, alert(detector, str(i), merchant=f"M{i % 7 + 1}", first=1.0), 1.0)
    assert storm.due(299.0) == []
    (summary,) = storm.due(300.0)
    assert summary.by_detector == (("terminal_failure_spike", 30), ("missing_reversal", 7))
    assert summary.merchants == ("M1", "M2", "M3", "M4", "M5", "M6", "M7")
    assert [a.summary for a in summary.examples] == [
        f"terminal_failure_spike {i}" for i in range(5)
    ]
    start = epoch(T0) // 300 * 300
    assert (summary.route, summary.start, summary.end, summary.folded) == (
        "default",
        start,
        start + 300,
        37,
    )
    assert summary.text == (
        "37 more alerts of terminal_failure_spike (30), missing_reversal (7),"
        " merchants M1, M2, M3, M4, M5 and 2 more (route default, storm limit 20 per 5 min)"
    )


def test_storm_limits_are_per_route() -> None:
    storm = StormLimiter()
    for i in range(20):
        assert storm.admit(DEFAULT, alert(key=str(i)), 0.0).reason == "sent"
    assert storm.admit(DEFAULT, alert(key="x"), 0.0).reason == "folded"
    assert storm.admit(OPS, alert(key="x"), 0.0).reason == "sent"


# --- 5. Resolve ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quiet_for", "explicit", "expected"),
    [
        (0.0, False, None),
        (899.0, False, None),
        (900.0, False, "quiet"),
        (5000.0, False, "quiet"),
        (0.0, True, "explicit"),
    ],
)
def test_resolution(quiet_for: float, explicit: bool, expected: str | None) -> None:
    a = alert(first=0.0, last=60.0)
    event_time = epoch(a.last_seen) + quiet_for
    assert resolution(a, event_time, 900.0, explicit=explicit) == expected


# --- The stages together -------------------------------------------------------------------------


class Recorder:
    """A channel that accepts everything and writes down what it heard, in one shared log."""

    supports_resolve = True

    def __init__(self, name: str, log: list[tuple[str, Notification]]) -> None:
        self.name, self._log = name, log

    def send(self, notification: Notification) -> Outcome:
        self._log.append((self.name, notification))
        return DELIVERED


class Dispatch:
    """The production dispatcher (the stages exactly as `stages.compose` builds them), fed one
    alert at a time, with recording channels. `tick` returns what was said: (channel, alert
    summary) for each alert of a page, (route, text) for a storm summary."""

    def __init__(self, config: DispatchConfig, ledger: Ledger | None = None) -> None:
        self.log: list[tuple[str, Notification]] = []
        channels = {name: Recorder(name, self.log) for name in config.channels}
        deliverer = Deliverer(RetryPolicy(), now=lambda: 0.0, sleep=lambda _: None)
        self.outbox = MemoryOutbox()
        self.dispatcher = Dispatcher(config, channels, deliverer, self.outbox, ledger=ledger)
        self._next_offset = 0

    @property
    def ledger(self) -> Ledger:
        return self.dispatcher.ledger

    @property
    def reasons(self) -> list[str]:
        """Every decision the stages took, by reason: dedup's per channel, inhibited, folded."""
        stats = self.dispatcher.stats
        kept_back = Counter({r: stats.withheld[r] for r in ("inhibited", "folded")})
        return list((stats.decisions + kept_back).elements())

    def receive(self, alert: Alert, now: float) -> None:
        self._next_offset += 1
        message = alert.model_dump_json().encode()
        self.dispatcher.receive(Batch([(0, [message])], {0: self._next_offset}), now)

    def tick(self, now: float) -> list[tuple[str, str]]:
        """Returns the (channel, what) notifications sent."""
        self.log.clear()
        self.dispatcher.tick(now)
        sent: list[tuple[str, str]] = []
        for channel, note in self.log:
            if note.group_key.endswith("/storm"):
                sent.append((note.group_key.removesuffix("/storm"), note.summary))
            else:
                sent += [(channel, a.summary) for a in note.alerts]
        return sent


def test_one_outage_makes_one_operations_page_not_one_per_card() -> None:
    dispatch = Dispatch(CONFIG)
    # The missing_reversal alerts arrive first; the spike a little later, within group_wait.
    for i in range(50):
        dispatch.receive(alert("missing_reversal", f"card{i}", first=60.0 + i), float(i) / 10)
    dispatch.receive(alert("missing_reversal", "other", terminal="T2", first=60.0), 6.0)
    dispatch.receive(SPIKE, 20.0)
    assert dispatch.tick(30.0) == []  # the 50 on T1 are due first: all muted by the spike
    sent = dispatch.tick(36.0) + dispatch.tick(50.0)
    assert sorted(sent) == [
        ("am", "missing_reversal other"),
        ("am", "terminal_failure_spike T1"),
        ("pd-ops", "missing_reversal other"),
        ("pd-ops", "terminal_failure_spike T1"),
    ]
    assert dispatch.reasons.count("inhibited") == 50
    # The spike grows: one update, and the 50 stay muted.
    dispatch.receive(SPIKE.model_copy(update={"count": 12}), 100.0)
    assert dispatch.tick(350.0) == [
        ("pd-ops", "terminal_failure_spike T1"),
        ("am", "terminal_failure_spike T1"),
    ]
    assert dispatch.reasons.count("grew") == 2


def test_a_redelivered_alert_never_pages_twice_even_after_a_restart() -> None:
    first = Dispatch(CONFIG)
    a = alert("duplicate_debit", "ref1", severity="critical")
    first.receive(a, 0.0)
    assert first.tick(10.0) == [("pd-risk", "duplicate_debit ref1")]

    second = Dispatch(CONFIG, Ledger.restore(first.ledger.records()))
    second.receive(a, 100.0)  # the same alert, redelivered after the restart
    assert second.tick(110.0) == []
    assert second.reasons == ["duplicate"]


def test_a_storm_of_200_alerts_sends_20_and_one_summary_per_interval() -> None:
    dispatch = Dispatch(CONFIG)
    sent: list[tuple[str, str]] = []
    for i in range(400):  # 200 distinct merchants (200 groups on the default route), then quiet
        now = i * 3.0
        if i < 200:
            dispatch.receive(alert("large_amount", str(i), merchant=f"M{i:03d}", first=now), now)
        sent += dispatch.tick(now)
    # Event time runs with the clock: two storm intervals, [0, 300) and [300, 600).
    pages = [what for channel, what in sent if channel == "slack"]
    summaries = [what for channel, what in sent if channel == "default"]
    assert len(pages) == 40
    assert len(summaries) == 2
    assert all(s.startswith("80 more alerts of large_amount (80)") for s in summaries)
