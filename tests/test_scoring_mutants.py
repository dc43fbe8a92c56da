"""Rules of docs/detectors.md that the mutation run (`make mutate`) found unpinned. Each test
feeds events through the replay pipeline and looks only at what comes out: the alerts (every
field a consumer reads), their versions, and the run's statistics."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from monitor.core.alerts import Alert, alert_id
from monitor.scoring.pipeline import replay_messages
from monitor.scoring.policy import Policy
from monitor.scoring.scorer import Scorer
from tests.builders import T0, by_detector, encode, event, score, tick

H = 3600.0
CARD = "tok_abcdefghijkl"
Events = list[dict[str, Any]]
CODES = {"auth_approved": {"response_code": "00"}, "auth_declined": {"response_code": "05"}}


def ev(kind: str, t: float, ref: str = "R1", **kw: Any) -> dict[str, Any]:
    """An event of card CARD at terminal T-9 of merchant M-7 unless told otherwise."""
    return event(kind, t, **{"ref": ref, "card": CARD, "terminal": "T-9", "merchant": "M-7", **kw})


def debit(t: float, ref: str = "R1", **kw: Any) -> dict[str, Any]:
    return ev("debit_posted", t, ref, **kw)


def attempt(ref: str, t: float, outcome: str, **kw: Any) -> Events:
    """A request at `t` and its outcome one second later."""
    code = CODES.get(outcome, {})
    return [ev("auth_request", t, ref, **kw), ev(outcome, t + 1, ref, **code, **kw)]


def declined(ref: str, t: float = 0, **kw: Any) -> Events:
    return attempt(ref, t, "auth_declined", **kw)


def small(n: int, amount: int = 200, step: float = 60.0) -> Events:
    """`n` small attempts of CARD, `step` seconds apart."""
    return [ev("auth_request", i * step, f"S{i}", amount=amount) for i in range(n)]


def counts(alerts: dict[str, Alert]) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for alert in alerts.values():
        found.setdefault(alert.detector, []).append(alert.count)
    return {detector: sorted(c) for detector, c in found.items()}


# --- every field of each detector's alert ----------------------------------------------------
# A scenario: its events, the detector, and the alert's fields beyond the common ones (terminal
# T-9, merchant M-7, card CARD, warning, count 1, no score, no money at risk).
Scenario = tuple[Events, str, dict[str, Any]]


def seen(key: str, first: float, last: float, evidence: Events, count: int = 1) -> dict[str, Any]:
    """The identity, time span (seconds after T0), evidence and count of an alert."""
    span = [(T0 + timedelta(seconds=s)).isoformat().replace("+00:00", "Z") for s in (first, last)]
    ids = [str(e["event_id"]) for e in evidence]
    fields = {"alert_id": key, "first_seen": span[0], "last_seen": span[1], "event_ids": ids}
    return {**fields, "count": count}


def ghost_debits() -> Scenario:
    """A linked case (decline) and a manual one (network error) of two amounts: one alert."""
    r1, r2 = declined("R1"), attempt("R2", H, "network_error", amount=1200)
    d1, d2 = debit(300), debit(H + 300, "M-2", amount=1200)
    case = dict(txn_ref="R1", debit_txn_ref="R1", failure="auth_declined", response_code="05")
    kept = dict(offset_minor=0, given_back_minor=0, given_back=False, offsets=[])
    cases = [
        {**case, "amount_minor": 3500, "linked": True, "at_risk_minor": 3500, **kept},
        {**case, "amount_minor": 1200, "linked": False, "at_risk_minor": 1200, **kept},
    ]
    cases[1].update(txn_ref="R2", debit_txn_ref="M-2", failure="network_error", response_code=None)
    details = dict(txn_ref="R1", currency="EUR", reversal_grace_s=900.0, cases=cases)
    key = alert_id("failed_then_debited", CARD, "T-9", "R1")
    fields = {
        **seen(key, 1, H + 300, [r1[1], d1, r2[1], d2], 2),
        "summary": "Card tok_ab..kl debited 2 times, 47.00 EUR in all, at terminal T-9 after a"
        " network error, no reversal after 15 min",
        "details": {**details, "debited_minor": 4700, "resolved": False, "settlements_ignored": []},
        **dict(severity="critical", amount_at_risk_minor=4700, currency="EUR"),
    }
    return [*r1, d1, *r2, d2, tick(3 * H)], "failed_then_debited", fields


def duplicate_debits() -> Scenario:
    """Three debits, one given back; the first debit names the terminal; the money at risk is
    what stays debited."""
    debits = [debit(60), debit(400, amount=1500, terminal="T-8"), debit(500)]
    reversal = ev("reversal", 700)
    events = [*attempt("R1", 0, "auth_approved"), *debits, reversal, tick(2 * H)]
    details = dict(txn_ref="R1", debits=3, reversals_and_refunds=1, debited_minor=8500)
    offset = {"event_id": reversal["event_id"], "kind": "reversal", "amount_minor": 3500}
    details.update(offset_minor=3500, offsets=[offset], settlements_ignored=[])
    fields = {
        **seen(alert_id("duplicate_debit", "R1"), 60, 500, debits, 3),
        "summary": "Card tok_ab..kl debited 3 times (85.00 EUR in all) for one purchase (ref"
        " R1) at terminal T-9, 1 given back after 15 min",
        "details": {**details, "currency": "EUR", "reversal_grace_s": 900.0},
        **dict(severity="critical", amount_at_risk_minor=5000, currency="EUR"),
    }
    return events, "duplicate_debit", fields


def missing_reversal() -> Scenario:
    failure = attempt("R1", 0, "network_error", amount=1250, currency="GBP")
    details = dict(txn_ref="R1", amount_minor=1250, currency="GBP", reversal_timeout_s=120.0)
    details["settlements_ignored"] = []
    fields = {
        **seen(alert_id("missing_reversal", "R1"), 1, 1, failure[1:]),
        "summary": "Network error on 12.50 GBP at terminal T-9 (card tok_ab..kl), no reversal"
        " within 2 min: the customer may hold a ghost debit",
        **dict(details=details, currency="GBP"),
    }
    return [*failure, tick(H)], "missing_reversal", fields


def small_amount_burst() -> Scenario:
    """Six small attempts in pounds at two terminals."""
    burst = [
        ev("auth_request", i * 30, f"S{i}", amount=100 + i, terminal=f"T-{i % 2}", currency="GBP")
        for i in range(6)
    ]
    details = dict(scope="card", max_amount_minor=500, min_attempts=5, window_s=600.0)
    amounts = dict(amounts_minor=[100, 101, 102, 103, 104, 105], terminals=["T-0", "T-1"])
    key = alert_id("small_amount_burst", CARD, str(burst[0]["event_id"]))
    fields = {
        **seen(key, 0, 150, burst, 6),
        "summary": "Card tok_ab..kl made 6 attempts of at most 5.00 GBP within 10 min at 2"
        " terminals of merchant M-7: likely card testing",
        **dict(details={**details, "currency": "GBP", **amounts}, currency="GBP"),
        "terminal_id": "T-0",
    }
    return [*burst, tick(H)], "small_amount_burst", fields


def terminal_failure_spike() -> Scenario:
    """13 outcomes, 8 network errors: the spike opens at the 10th outcome, grows with 3 more."""
    error = [i % 2 == 0 or i > 9 for i in range(13)]
    kinds = ["network_error" if e else "auth_approved" for e in error]
    pairs = [attempt(f"F{i}", i * 10, kinds[i], card=f"tok_c{i:08d}") for i in range(13)]
    details = dict(window_s=300.0, min_attempts=10, error_ratio_threshold=0.5)
    ratio = dict(attempts_in_window=13, errors_in_window=8, peak_error_ratio=0.6154)
    key = alert_id("terminal_failure_spike", "T-9", str(pairs[9][1]["event_id"]))
    fields = {
        **seen(key, 1, 121, [pair[1] for i, pair in enumerate(pairs) if error[i]], 8),
        "summary": "Terminal T-9 (merchant M-7): 8 of 13 attempts within 5 min ended in a"
        " network error, 8 in this outage so far: device or link fault",
        **dict(details={**details, **ratio}, card_id=None, currency=None),
    }
    return [e for pair in pairs for e in pair] + [tick(H)], "terminal_failure_spike", fields


def large_amount() -> Scenario:
    request = ev("auth_request", 0, "L1", amount=2_000_000)
    details = dict(txn_ref="L1", amount_minor=2_000_000, currency="EUR", threshold_minor=1_000_000)
    fields = {
        **seen(alert_id("large_amount", "L1"), 0, 0, [request]),
        "summary": "Card tok_ab..kl attempted 20,000.00 EUR at terminal T-9, at or above the"
        " 10,000.00 EUR large-amount threshold",
        **dict(details=details, currency="EUR"),
    }
    return [request], "large_amount", fields


def stale_preauth() -> Scenario:
    hold = ev("preauth_hold", 0, "P1", amount=7000)
    details = dict(txn_ref="P1", amount_minor=7000, currency="EUR", timeout_s=86400.0)
    fields = {
        **seen(alert_id("stale_preauth", "P1"), 0, 0, [hold]),
        "summary": "Hold of 70.00 EUR on card tok_ab..kl at terminal T-9 neither completed nor"
        " released after 24 h",
        **dict(details=details, currency="EUR"),
    }
    return [hold, tick(25 * H)], "stale_preauth", fields


SCENARIOS: list[Callable[[], Scenario]] = [
    ghost_debits, duplicate_debits, missing_reversal, small_amount_burst,
    terminal_failure_spike, large_amount, stale_preauth,
]  # fmt: skip


@pytest.mark.parametrize("batch_size", [1, 1000])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
def test_each_detector_alert_in_full(scenario: Callable[[], Scenario], batch_size: int) -> None:
    """Every field of an alert (docs/detectors.md, "Alerts and updates": identity, entities,
    time span, evidence, count, summary, details, money), whatever the batch boundaries."""
    events, detector, fields = scenario()
    (alert,) = by_detector(score(events, batch_size=batch_size), detector)
    common = dict(detector=detector, severity="warning", terminal_id="T-9", merchant_id="M-7")
    nothing = dict(score=None, model_version=None, amount_at_risk_minor=None)
    # The revision depends on the batch boundaries (docs/contract.md, "Alert"); the rest not.
    assert alert.revision > 0
    assert alert.model_dump(mode="json", exclude={"revision"}) == {
        **common,
        "card_id": CARD,
        **nothing,
        **fields,
    }


# --- the edges of the rules, streamed one event at a time and in one batch -----------------------

FTD, DUP, MR = "failed_then_debited", "duplicate_debit", "missing_reversal"
BURST, SPIKE, LARGE = "small_amount_burst", "terminal_failure_spike", "large_amount"
CARDS = [f"tok_{i:08d}" for i in range(10)]


def errors(terminal: str = "T-9", step: float = 10) -> Events:
    """Ten network errors at one terminal, by ten cards, `step` seconds apart."""
    pairs = (
        attempt(f"{terminal}{i}", i * step, "network_error", card=c) for i, c in enumerate(CARDS)
    )
    return [{**e, "terminal_id": terminal} for pair in pairs for e in pair]


EDGES: dict[str, tuple[Events, dict[str, list[int]]]] = {
    "ghost debit: a manual debit in the very second of the failure": (
        [*declined("R1"), debit(1, "M-1"), tick(2 * H)], {FTD: [1]}),
    "ghost debit: a manual debit exactly unlinked_window after the failure": (
        [*declined("R1"), debit(1801, "M-1"), tick(2 * H)], {FTD: [1]}),
    "ghost debit: a second manual debit takes the next unmatched failure": (
        [*declined("R1"), debit(100, "M-1"), *declined("R2", 300), debit(400, "M-2"), tick(2 * H)],
        {FTD: [2]}),
    "ghost debit: cases of two cards are two alerts": (
        [*declined("R1"), debit(100), *declined("R2", card=CARDS[1]),
         debit(100, "R2", card=CARDS[1]), tick(2 * H)], {FTD: [1, 1]}),
    "ghost debit: an attempt whose earliest outcome, arriving last, is an approval is no match": (
        [ev("auth_request", 0), ev("auth_declined", 10, response_code="05"),
         ev("auth_approved", 5, response_code="00"), debit(100, "M-1"), tick(2 * H)], {}),
    "ghost debit: an approved attempt's debit seen within the lateness takes no failure": (
        [*declined("R1"), *attempt("R2", 30, "auth_approved"), debit(100, "R2"), tick(2 * H)], {}),
    "ghost debit: declined, then approved under one reference: the first outcome decides": (
        [*declined("R1"), ev("auth_approved", 20, response_code="00"), debit(300), tick(2 * H)],
        {FTD: [1]}),
    "missing reversal: decided on the first network error, not on a retransmitted one": (
        [*attempt("R1", 0, "network_error"), ev("network_error", 100), ev("reversal", 200),
         tick(H)], {MR: [1]}),
    "duplicate debit: three debits, two refunds inside the grace leave one": (
        [*attempt("R1", 0, "auth_approved"), debit(60), debit(160), debit(260),
         ev("refund", 300), ev("refund", 400), tick(2 * H)], {}),
    "duplicate debit: a debit exactly at a decision's deadline is not counted by it": (
        [*attempt("R1", 0, "auth_approved"), debit(60), debit(160), ev("reversal", 300),
         debit(1060), ev("reversal", 1500), tick(2 * H)], {}),
    "duplicate debit: debits are ordered by time, not id: the reversal is inside the grace": (
        [*attempt("R1", 0, "auth_approved"), debit(60, event_id="d-b"), debit(400, event_id="d-a"),
         ev("reversal", 1000), tick(2 * H)], {}),
    "card testing: five attempts spanning exactly the window are four in it": (
        [*small(5, step=150), tick(H)], {}),
    "card testing: attempts of exactly the small amount": ([*small(5, 500), tick(H)], {BURST: [5]}),
    "card testing: attempts of zero": ([*small(5, 0), tick(H)], {BURST: [5]}),
    "card testing: the attempt completing the burst ends the input": (small(5), {BURST: [5]}),
    "card testing: two cards at once are two bursts": (
        [*small(5), *(ev("auth_request", i * 60 + 1, f"B{i}", card=CARDS[0], amount=100)
                      for i in range(5)), tick(H)], {BURST: [5, 5]}),
    "card testing: a burst whose first attempt is 590 s before its fifth": (
        [*(ev("auth_request", t, f"S{t}", amount=100) for t in (0, 150, 300, 450, 590, 700, 800)),
         tick(H)], {BURST: [7]}),
    "outage: the outcome completing the spike ends the input": (errors(), {SPIKE: [10]}),
    "outage: two terminals at once are two spikes": (
        [*errors(), *errors("T-8"), tick(H)], {SPIKE: [10, 10], MR: [1] * 20}),
    "outage: ten errors over 270 s, then more outcomes": (
        [*errors(step=30), *(e for i in range(5) for e in attempt(f"A{i}", 300 + i * 30,
         "auth_approved", card=CARDS[i])), tick(H)], {SPIKE: [10], MR: [1] * 10}),
    "large amount: two references are two alerts": (
        [ev("auth_request", 0, "L1", amount=10**6), ev("auth_request", 1, "L2", amount=10**6)],
        {LARGE: [1, 1]}),
    "stale hold: a completion arriving before its hold still closes it": (
        [ev("preauth_completion", 100, "P1"), ev("preauth_hold", 0, "P1"), tick(25 * H)], {}),
    "stale hold: a hold of zero": (
        [ev("preauth_hold", 0, "P1", amount=0), tick(25 * H)], {"stale_preauth": [1]}),
    "stale hold: decided while time passes in five-minute steps": (
        [ev("preauth_hold", 0, "P1"), *(tick(23.5 * H + i * 300) for i in range(20))],
        {"stale_preauth": [1]}),
    "card testing: qualifying attempts within window keep one burst open for 30 min": (
        [*small(30), tick(H)], {BURST: [30]}),
    "a decision is taken when W > D: a reversal at D arriving when W == D is on time": (
        [*attempt("R1", 0, "network_error"), tick(241), ev("reversal", 121), tick(H)], {}),
    "ghost debit: a case exactly group_window after the first case joins its alert": (
        [*declined("R1"), debit(300), tick(2 * H), *declined("R2", 24 * H + 250),
         debit(24 * H + 300, "R2"), tick(26 * H)], {FTD: [2]}),
}  # fmt: skip


@pytest.mark.parametrize(("events", "expected"), EDGES.values(), ids=EDGES.keys())
def test_rule_edges(events: Events, expected: dict[str, list[int]]) -> None:
    """The boundaries of each rule (docs/detectors.md): "before D" is `< D`, "within x of t"
    is `<= t + x`, the first outcome decides, the end of the input releases what is held;
    streamed one event at a time or in one batch."""
    assert counts(score(events, batch_size=1)) == expected
    assert counts(score(events)) == expected


def test_an_attempt_is_forgotten_attempt_ttl_after_its_last_event() -> None:
    """Attempts: once W is more than `attempt_ttl` past a failure, a debit of its reference is
    no longer linked to it (streamed one event at a time: see the report of `make mutate`)."""
    events = [*declined("R1"), tick(3 * H), tick(6.5 * H), debit(7 * H), tick(8 * H)]
    assert counts(score(events, batch_size=1)) == {}


def test_attempt_ttl_must_cover_the_ghost_debit_look_back() -> None:
    """A policy whose `attempt_ttl` is shorter than reversal_grace + unlinked_window +
    allowed_lateness (45 min + 2 min) is refused."""
    with pytest.raises(ValueError, match="attempt_ttl"):
        Policy.model_validate({"state": {"attempt_ttl": 2000}})


# --- what an alert says --------------------------------------------------------------------------

TERMINAL_RULE = {"detectors": {"small_amount_burst": {"terminal_min_attempts": 5}}}
FIVE_CARDS = [ev("auth_request", i, f"S{i}", amount=100, card=CARDS[i]) for i in range(5)]
Says = tuple[dict[str, Any], Events, str, Callable[[Alert], object], object]
SAYS: dict[str, Says] = {
    "large amount alone on its event kind, at its threshold": (
        {"detectors": {"small_amount_burst": {"enabled": False}}},
        [ev("auth_request", 0, "L1", amount=1_000_000)], LARGE, lambda a: a.count, 1),
    "card testing alone on its event kind, at its amount": (
        {"detectors": {"large_amount": {"enabled": False}}}, [*small(5, 500), tick(H)], BURST,
        lambda a: a.count, 5),
    "card testing: a qualifying attempt exactly one window after the last extends the burst": (
        {"detectors": {"small_amount_burst": {"min_attempts": 1}}},
        [*small(2, 100, step=600), tick(H)], BURST, lambda a: a.count, 2),
    "duplicate debit: none given back": (
        {}, [*attempt("R1", 0, "auth_approved"), debit(60), debit(400), tick(2 * H)], DUP,
        lambda a: a.summary.endswith("at terminal T-9, none given back after 15 min"), True),
    "large amount: the threshold of the currency": (
        {"detectors": {"large_amount": {"per_currency": {"JPY": 300_000}}}},
        [ev("auth_request", 0, "J1", amount=300_000, currency="JPY")], LARGE,
        lambda a: (a.details["threshold_minor"], a.summary[-44:]),
        (300_000, "above the 300,000 JPY large-amount threshold")),
    "large amount: retransmissions grow the evidence up to max_evidence": (
        {"state": {"max_evidence": 1}},
        [ev("auth_request", t, "L1", amount=10**6) for t in (0, 1)], LARGE,
        lambda a: (a.count, len(a.event_ids)), (2, 1)),
    "ghost debit: the latest failure is matched, though it arrived first": (
        {}, [*declined("R2", 300), *declined("R1", 250), debit(600, "M-1"), tick(2 * H)], FTD,
        lambda a: a.details["txn_ref"], "R2"),
    "ghost debit: a manual debit's own refund after the grace, seen before the decision": (
        {}, [*declined("R1"), debit(600, "M-1"), ev("refund", 1550, "M-1"), tick(2 * H)], FTD,
        lambda a: a.details["resolved"], True),
    "ghost debit: of two debits at one time, the smaller event id takes the one failure": (
        {}, [*declined("R1"), debit(600, "M-B", event_id="d-b"),
             debit(600, "M-A", event_id="d-a"), tick(2 * H)], FTD,
        lambda a: "'debit_txn_ref': 'M-A'" in str(a.details["cases"]), True),
    "card testing per terminal: keyed and worded by its terminal": (
        TERMINAL_RULE, FIVE_CARDS, BURST, lambda a: (a.alert_id, a.summary[:19], a.summary[-36:]),
        (alert_id(BURST, "terminal", "T-9", str(FIVE_CARDS[0]["event_id"])),
         "Terminal T-9 made 5", "at terminal T-9: likely card testing")),
}  # fmt: skip


@pytest.mark.parametrize("case", SAYS.values(), ids=SAYS.keys())
def test_what_an_alert_says(case: Says) -> None:
    """Summaries, details, keys and evidence beyond the full-alert scenarios; the amount
    bands hold with a detector alone on its event kind; "within window before t" includes
    `window`; equal deadlines are decided by key (the debit's event_id), not arrival."""
    policy, events, detector, read, expected = case
    (alert,) = by_detector(score(events, Policy.model_validate(policy), batch_size=1), detector)
    assert read(alert) == expected


@pytest.mark.parametrize("batch_size", [1, 1000])
@pytest.mark.parametrize(("after", "resolved"), [(0, True), (1, False)])
def test_a_give_back_settles_up_to_group_window_after_the_debit(
    after: float, resolved: bool, batch_size: int
) -> None:
    """A refund after the grace gives the money back when `event_time <= debit + group_window`,
    whether it is seen before the decision or after it."""
    refund = ev("refund", 300 + 24 * H + after)
    for decided in ([], [tick(2 * H)]):
        events = [*declined("R1"), debit(300), *decided, refund, tick(26 * H)]
        (alert,) = by_detector(score(events, batch_size=batch_size), FTD)
        assert alert.details["resolved"] is resolved


def test_evidence_amounts_and_terminals_are_capped() -> None:
    """`max_evidence` caps `event_ids` and `details.amounts_minor` (the cut is reported); the
    details list at most 100 terminals, while every attempt counts."""
    policy = Policy.model_validate({"state": {"max_evidence": 4}})
    (alert,) = by_detector(score([*small(9, step=10), tick(H)], policy), BURST)
    assert (alert.count, len(alert.event_ids), alert.details["evidence_truncated"]) == (9, 4, 5)
    assert alert.details["amounts_minor"] == [200] * 4
    events = [ev("auth_request", i, f"S{i}", amount=100, terminal=f"T-{i:03d}") for i in range(102)]
    (alert,) = by_detector(score([*events, tick(H)]), BURST)
    assert (alert.count, alert.details["terminals"]) == (102, [f"T-{i:03d}" for i in range(100)])


def test_versions_statistics_and_dead_letters_of_a_replay() -> None:
    """An alert is emitted again only when it grows (a later decision counting no more debits
    emits nothing); the run counts messages, rejections, new alerts and every version."""
    debits = [debit(t) for t in (60, 160, 260)]
    large = [ev("auth_request", 2 * H + s, "L1", amount=a) for s, a in ((0, 10**6), (1, 3 * 10**6))]
    events = [*attempt("R1", 0, "auth_approved"), *debits, tick(1100), tick(1200), *large]
    messages = encode(events)
    messages.insert(3, b"{not json")
    sink, stats = replay_messages(messages, Scorer(Policy()), batch_size=1)
    versions = [(a.detector, a.count) for a in sink.alerts]
    assert versions == [(DUP, 3), ("large_amount", 1), ("large_amount", 2)]
    assert sink.alerts[-1].details["amount_minor"] == 3_000_000
    assert [d.reason for d in sink.dead_letters] == ["not_json"]
    assert (stats.messages, dict(stats.rejected)) == (len(messages), {"not_json": 1})
    assert (stats.alerts_emitted, dict(stats.raised)) == (3, {DUP: 1, "large_amount": 1})
    assert stats.latest["large_amount"] == sink.alerts[-1]
