"""Paging rules that the mutation run (`make mutate`) found unpinned.

Alerts go into the production `Dispatcher` (the stages composed as in production) with fake
channels and a fake clock, as in tests/test_dispatch.py; what comes out is what the channels
heard, what was parked or recorded, and what may be committed.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import pytest

from monitor.core.alerts import Alert
from monitor.core.batches import Batch
from monitor.paging.delivery import Delivered, Deliverer, RetryPolicy
from monitor.paging.dispatcher import Dispatcher, run_dispatch
from monitor.paging.ledger import Ledger
from monitor.paging.notification import Notification, Outcome
from monitor.paging.routing import DispatchConfig
from tests.test_dispatch import T0, FakeChannel, MemoryOutbox, batch, make_alert

SPIKE, MISSING = "terminal_failure_spike", "missing_reversal"
H = timedelta(hours=1)


def dispatch(
    routes: list[dict[str, Any]],
    channels: dict[str, FakeChannel],
    *,
    ledger: Ledger | None = None,
    stopping: bool = False,
    inhibitions: list[dict[str, Any]] | None = None,
) -> tuple[Dispatcher, MemoryOutbox]:
    """A dispatcher over `routes` (every channel, group_wait 0, grouped by detector and terminal
    unless told), with the default inhibition unless told: a spike mutes the missing_reversal
    alerts of its terminal."""
    defaults = {"group_wait": 0, "group_by": ["detector", "terminal_id"], "channels": [*channels]}
    config = DispatchConfig.model_validate(
        {"channels": {n: {"type": "console"} for n in channels},
         "routes": [{**defaults, **r} for r in routes]}
        | ({} if inhibitions is None else {"inhibitions": inhibitions})
    )  # fmt: skip
    clock = [0.0]
    deliverer = Deliverer(
        RetryPolicy(initial=1, deadline=30, jitter=0),
        now=lambda: clock[0],
        sleep=lambda s: clock.__setitem__(0, clock[0] + s),
        stopping=lambda: stopping,
    )
    outbox = MemoryOutbox()
    return Dispatcher(config, channels, deliverer, outbox, ledger=ledger), outbox


def alert(detector: str, key: str, first: float = 0, last: float = 0, **update: Any) -> Alert:
    """An alert seen from `first` to `last` seconds after T0."""
    times = {"first_seen": T0 + timedelta(seconds=first), "last_seen": T0 + timedelta(seconds=last)}
    return make_alert(detector, key).model_copy(update={**times, **update})


def resolved(a: Alert) -> Alert:
    return a.model_copy(update={"details": {"resolved": True}})


def heard(channel: FakeChannel) -> list[tuple[str, str, list[str]]]:
    """(kind, group key, alert ids) of every notification the channel received."""
    return [(n.kind, n.group_key, [a.alert_id for a in n.alerts]) for n in channel.sent]


ALL = {"match": {"detectors": [SPIKE, MISSING, "large_amount", "failed_then_debited"]}}


# --- the storm limit ---------------------------------------------------------------------------

STORMS = {
    "one folded": (["M0", "M1"], "1 more alert of large_amount (1), merchants M1"),
    "two folded": (["M0", "M1", "M2"], "2 more alerts of large_amount (2), merchants M1, M2"),
    "merchants by frequency": (
        ["M0", "M3", "M2", "M2"], "3 more alerts of large_amount (3), merchants M2, M3"),
    "at most five merchants named": (
        [f"M{i}" for i in range(8)],
        "7 more alerts of large_amount (7), merchants M1, M2, M3, M4, M5 and 2 more"),
}  # fmt: skip


@pytest.mark.parametrize(("merchants", "text"), STORMS.values(), ids=STORMS.keys())
def test_a_storm_pages_the_first_alerts_then_one_summary(merchants: list[str], text: str) -> None:
    """Storm limit: at most `max_notifications` alerts per route and interval are paged, the
    rest fold into one summary at the interval's end, counted by detector and merchant."""
    page = FakeChannel("page")
    storm = {"max_notifications": 1, "per": 300}
    d, _ = dispatch(
        [{**ALL, "name": "r", "group_by": ["detector"], "storm_limit": storm}], {"page": page}
    )
    alerts = [
        alert("large_amount", f"L{i}", first=i, merchant_id=m) for i, m in enumerate(merchants)
    ]
    d.receive(batch(alerts), 0.0)
    d.tick(0.0)
    d.tick(300.0)
    assert heard(page) == [
        ("trigger", "r/large_amount", [alerts[0].alert_id]),
        ("trigger", "r/storm", [a.alert_id for a in alerts[1:6]]),
    ]
    assert page.sent[1].summary == f"{text} (route r, storm limit 1 per 5 min)"
    assert d.stats.folded == len(merchants) - 1


# --- dedup, fan-out, resolves ------------------------------------------------------------------


def test_each_channel_hears_only_what_it_was_not_told() -> None:
    """Dedup per channel: an alert every channel was told is dropped from the page, the others
    still go; a channel with nothing left to hear is skipped, the next one is still paged (the
    ledger restored after a restart, at wall-clock times)."""
    a, b = FakeChannel("a"), FakeChannel("b")
    told, new = alert(SPIKE, "S1", first=1), alert(SPIKE, "S2", first=2)
    now = 1_000_000.0
    record = {"kind": "trigger", "count": 1, "at": now - 10}
    ledger = Ledger.restore(
        [{**record, "alert_id": told.alert_id, "channel": "a"},
         {**record, "alert_id": told.alert_id, "channel": "b"},
         {**record, "alert_id": new.alert_id, "channel": "a"}]
    )  # fmt: skip
    d, _ = dispatch([{**ALL, "name": "r", "channels": ["a", "b"]}], {"a": a, "b": b}, ledger=ledger)
    d.receive(batch([told, new]), now)
    d.tick(now)
    assert heard(a) == []
    assert heard(b) == [("trigger", f"r/{SPIKE}/T1", [new.alert_id])]
    assert d.stats.duplicates == 1


def test_a_resolve_goes_only_to_the_channels_that_heard_and_is_recorded() -> None:
    """A channel that parked the page never heard of the alert: the resolve goes to the other
    one only, keyed by the alert id; the parked alert is dead-lettered whole."""
    a, b = FakeChannel("a"), FakeChannel("b", [Outcome("permanent", "400 nope")])
    d, outbox = dispatch([{**ALL, "name": "r", "channels": ["a", "b"]}], {"a": a, "b": b})
    spike = alert(SPIKE, "S1")
    d.receive(batch([spike]), 5.0)
    d.tick(5.0)
    d.receive(batch([resolved(spike)], start=1), 7.0)
    d.tick(7.0)
    assert heard(a) == [("trigger", f"r/{SPIKE}/T1", [spike.alert_id]),
                        ("resolve", spike.alert_id, [spike.alert_id])]  # fmt: skip
    assert heard(b) == [("trigger", f"r/{SPIKE}/T1", [spike.alert_id])]
    assert outbox.parked == [
        {"reason": "b: 400 nope", "channel": "b", "alert": spike.model_dump(mode="json")}
    ]
    assert [(r["kind"], r["at"]) for r in outbox.records] == [("trigger", 5.0), ("resolve", 7.0)]
    assert d.committable() == {0: 2}


def test_invalid_messages_are_parked_whole_and_the_batch_goes_on() -> None:
    """A message that is not an alert is parked with its validation errors and its text, and
    the alerts after it in the batch are still paged."""
    page = FakeChannel("page")
    d, outbox = dispatch([{**ALL, "name": "r"}], {"page": page})
    spike = alert(SPIKE, "S1")
    wrong = json.dumps({**spike.model_dump(mode="json"), "event_ids": [1], "count": 0}).encode()
    messages = [b"\xff{not json", wrong, spike.model_dump_json().encode()]
    d.receive(Batch([(0, messages)], {0: 3}), 0.0)
    d.tick(0.0)
    assert [(p["reason"], p["raw"]) for p in outbox.parked] == [
        ("invalid_alert", "\ufffd{not json"), ("invalid_alert", wrong.decode())]  # fmt: skip
    assert outbox.parked[1]["error"] == (
        "event_ids.0: Input should be a valid string; count: Input should be greater than or"
        " equal to 1"
    )
    assert heard(page) == [("trigger", f"r/{SPIKE}/T1", [spike.alert_id])]
    assert d.committable() == {0: 3}


def test_an_alert_resolved_before_its_group_went_out_is_paged_then_resolved() -> None:
    """The scorer's resolved version arriving before the group's first flush waits for it:
    the channel hears the trigger, then the resolve (nobody is left unaware of an incident);
    a resolve of an alert never seen is harmless; the batch goes on."""
    page = FakeChannel("page")
    d, _ = dispatch([{**ALL, "name": "r", "group_wait": 10}], {"page": page})
    spike, unknown = alert(SPIKE, "S1"), alert(SPIKE, "S0")
    later = alert(MISSING, "c1", terminal_id="T2")
    d.receive(batch([spike, resolved(spike), resolved(unknown), later]), 0.0)
    d.tick(0.0)
    assert heard(page) == []
    assert d.committable() == {}
    d.tick(10.0)
    assert heard(page) == [
        ("trigger", f"r/{SPIKE}/T1", [spike.alert_id]),
        ("trigger", f"r/{MISSING}/T2", [later.alert_id]),
        ("resolve", spike.alert_id, [spike.alert_id]),
    ]
    assert d.committable() == {0: 4}


def test_only_the_quiet_incident_is_resolved_at_the_tick_time() -> None:
    """Resolve: an outage whose alert has not grown for 15 min of event time is resolved and
    recorded at the tick's time; another, still growing, stays open."""
    page = FakeChannel("page")
    d, outbox = dispatch([{**ALL, "name": "r", "group_by": ["terminal_id"]}], {"page": page})
    growing = alert(SPIKE, "S1", last=1, terminal_id="T1")
    quiet = alert(SPIKE, "S2", last=1, terminal_id="T2")
    d.receive(batch([growing, quiet]), 0.0)
    d.tick(0.0)
    d.receive(batch([growing.model_copy(update={"count": 2, "last_seen": T0 + H})], start=2), 40.0)
    d.tick(50.0)
    assert [(k, ids) for k, _, ids in heard(page) if k == "resolve"] == [
        ("resolve", [quiet.alert_id])
    ]
    assert [(r["alert_id"], r["at"]) for r in outbox.records if r["kind"] == "resolve"] == [
        (quiet.alert_id, 50.0)
    ]


def test_inhibition_covers_the_source_span_and_never_mutes_a_resolve() -> None:
    """Inhibition (a spike mutes missing_reversal alerts of its terminal): a resolve passes
    while the spike is open; once the spike is resolved it still mutes the alerts of its span
    and hold (on event time, however late they are read), not a later incident of its
    terminal; another terminal's spike mutes its own."""
    page = FakeChannel("page")
    d, _ = dispatch(
        [{**ALL, "name": "r", "group_by": ["detector", "terminal_id", "merchant_id"]}],
        {"page": page},
    )
    early = alert(MISSING, "c0")
    d.receive(batch([early]), 0.0)
    d.tick(0.0)
    spikes = [alert(SPIKE, f"S{t}", terminal_id=f"T{t}") for t in (1, 2)]
    d.receive(batch([*spikes, resolved(early)], start=1), 1.0)
    d.tick(1.0)
    d.receive(batch([resolved(spikes[0])], start=4), 2.0)
    muted = alert(MISSING, "c2", terminal_id="T2")
    within = alert(MISSING, "c3", first=900, last=900, merchant_id="M3")
    fresh = alert(MISSING, "c1", first=901, last=901, merchant_id="M2")
    d.receive(batch([within, fresh, muted], start=5), 3.0)
    d.tick(3.0)
    assert [(k, ids) for k, _, ids in heard(page)] == [
        ("trigger", [early.alert_id]),
        ("trigger", [spikes[0].alert_id]),
        ("trigger", [spikes[1].alert_id]),
        ("resolve", [early.alert_id]),
        ("trigger", [fresh.alert_id]),
        ("resolve", [spikes[0].alert_id]),  # the scorer said so
        ("resolve", [spikes[1].alert_id]),  # quiet for 900 s of event time once `fresh` came
    ]
    assert d.stats.inhibited == 2


def test_open_outages_are_reposted_every_interval_to_the_channels_that_expire_them() -> None:
    """Repost: every `repost_every` seconds (inclusive), a channel that declares it hears again,
    as a trigger, the self-resolving incidents it was told of and that are still open."""
    plain, expiring = FakeChannel("plain"), FakeChannel("expiring")
    expiring.repost_every = 60.0  # type: ignore[attr-defined]  # as AlertmanagerChannel declares
    d, _ = dispatch([{**ALL, "name": "r", "channels": ["plain", "expiring"]}],
                    {"plain": plain, "expiring": expiring})  # fmt: skip
    spike, ghost = alert(SPIKE, "S1"), alert("failed_then_debited", "g1")
    d.receive(batch([spike, ghost]), 11.0)
    d.tick(11.0)
    d.tick(71.0)
    assert heard(expiring)[2:] == [("trigger", "repost", [spike.alert_id])]
    assert len(plain.sent) == 2
    d.receive(batch([resolved(spike)], start=2), 80.0)
    d.tick(131.0)
    assert [kind for kind, _, _ in heard(expiring)[3:]] == ["resolve"]


def test_each_inhibition_rule_is_checked_and_the_hold_is_inclusive() -> None:
    """Inhibition with two rules: a source of the second rule still mutes its targets; a target
    whose first_seen is exactly `hold` before the source's is muted (within the hold)."""
    page = FakeChannel("page")
    rules: list[dict[str, Any]] = [
        {"source": {"detectors": ["large_amount"]}, "target": {"detectors": [SPIKE]}},
        {"source": {"detectors": [SPIKE]}, "target": {"detectors": [MISSING]}, "hold": 900},
    ]
    d, _ = dispatch([{**ALL, "name": "r"}], {"page": page}, inhibitions=rules)
    d.receive(batch([alert(MISSING, "c0", first=0), alert(SPIKE, "S1", first=900, last=900)]), 0)
    d.tick(0.0)
    assert [n.alerts[0].detector for n in page.sent] == [SPIKE]


def test_an_alert_of_two_routes_is_committed_once_both_groups_went_out() -> None:
    """Commits: a message is settled only when every group it joined has flushed it; the age of
    the oldest unsettled message counts from its arrival."""
    a, b = FakeChannel("a"), FakeChannel("b")
    first = {**ALL, "name": "first", "channels": ["a"], "group_wait": 5, "continue": True}
    d, _ = dispatch([first, {**ALL, "name": "second", "channels": ["b"], "group_wait": 20}],
                    {"a": a, "b": b})  # fmt: skip
    d.receive(batch([alert(SPIKE, "S1")]), 10.0)
    d.tick(15.0)
    assert (len(a.sent), len(b.sent), d.committable(), d.oldest_undelivered(16.0)) == (
        1,
        0,
        {},
        6.0,
    )
    d.tick(30.0)
    assert (len(b.sent), d.committable(), d.oldest_undelivered(31.0)) == (1, {0: 1}, 0.0)


def test_a_stop_during_delivery_leaves_the_page_unsent_and_uncommitted() -> None:
    """Stopping: a delivery interrupted by shutdown ends the page (no further channel is tried)
    and nothing is committed, so the alert is read and paged again after the restart."""
    a, b = FakeChannel("a"), FakeChannel("b")
    d, outbox = dispatch(
        [{**ALL, "name": "r", "channels": ["a", "b"]}], {"a": a, "b": b}, stopping=True
    )
    d.receive(batch([alert(SPIKE, "S1")]), 0.0)
    d.tick(0.0)
    assert (a.sent, b.sent, outbox.records, d.committable()) == ([], [], [], {})


POLICIES = {
    "initial may equal max_delay": ({"initial": 60, "max_delay": 60}, None),
    "multiplier may be 1": ({"multiplier": 1}, None),
    "deadline may be 0": ({"deadline": 0}, None),
    "initial must be positive": ({"initial": 0}, "need 0 < initial <= max_delay"),
    "multiplier below 1": ({"multiplier": 0.5}, "multiplier must be >= 1"),
    "jitter of 1": ({"jitter": 1}, "jitter must be in [0, 1)"),
    "negative deadline": ({"deadline": -1}, "deadline must be >= 0"),
}


@pytest.mark.parametrize(("kwargs", "error"), POLICIES.values(), ids=POLICIES.keys())
def test_retry_policy_bounds(kwargs: dict[str, float], error: str | None) -> None:
    """The retry policy's settings: what is accepted at its bounds, and what each refusal says."""
    if error is None:
        RetryPolicy(**kwargs)
    else:
        with pytest.raises(ValueError, match=f"^{re.escape(error)}$"):
            RetryPolicy(**kwargs)


def test_attempts_count_from_one_and_an_attempt_due_at_the_deadline_is_made() -> None:
    """Retry: `deadline` bounds the time to the last attempt inclusively (waits 1 s then 2 s
    reach a 3 s deadline exactly, and the third attempt is still made)."""
    with pytest.raises(ValueError, match=r"^attempts count from 1$"):
        RetryPolicy().backoff(0)
    clock = [0.0]
    deliverer = Deliverer(
        RetryPolicy(initial=1, multiplier=2, deadline=3, jitter=0),
        now=lambda: clock[0],
        sleep=lambda s: clock.__setitem__(0, clock[0] + s),
    )
    channel = FakeChannel("c", [Outcome("retry", "503"), Outcome("retry", "503")])
    note = Notification("trigger", (alert(SPIKE, "S1"),), "g")
    assert (deliverer.deliver(channel, note), clock[0]) == (Delivered(3), 3.0)


class OneBatch:
    """A source with one batch of alert messages, then the end."""

    def __init__(self, alerts: list[Alert]) -> None:
        self.batches: list[Batch | None] = [batch(alerts), None]
        self.commits: list[object] = []

    def poll(self) -> Batch | None:
        return self.batches.pop(0)

    def commit(self, done: Batch) -> None:
        self.commits.append(done.position)


def test_the_dispatch_loop_pages_then_commits_what_is_settled() -> None:
    """The loop: receive what the source has, tick at the wall clock, commit the settled
    prefix; it ends when the source does."""
    page = FakeChannel("page")
    d, _ = dispatch([{**ALL, "name": "r"}], {"page": page})
    source = OneBatch([alert(SPIKE, "S1"), alert(MISSING, "c1", terminal_id="T2")])
    run_dispatch(source, d, now=lambda: 42.0, stopping=lambda: False)
    assert [n.kind for n in page.sent] == ["trigger", "trigger"]
    assert (source.commits, d.last_turn) == ([{0: 2}], 42.0)
