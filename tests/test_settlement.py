"""Settlement that cannot be forged (docs/detectors.md, "Settlement"; issue 11, Build item 2).

A reversal or refund gives a ghost or duplicate debit back only when it carries the reference
and the card of the debit, in its currency, and only up to its own amount. Each forged case is
shown next to the same case without the forgery, which settles: the forgery, not the shape of
the case, is what keeps the alert.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from monitor.core.alerts import Alert
from monitor.core.batches import Batch
from monitor.scoring.metrics import Metrics
from monitor.scoring.pipeline import MemorySink, MemorySource, Stats, run, score_batch
from monitor.scoring.policy import Policy
from monitor.scoring.scorer import Scorer
from monitor.scoring.snapshot import dumps, loads
from tests.builders import by_detector, encode, event, score, tick

H = 3600.0
VICTIM = "tok_victim_000001"
THIEF = "tok_thief_0000099"
FTD, DUP, MR = "failed_then_debited", "duplicate_debit", "missing_reversal"
Events = list[dict[str, Any]]


def ev(kind: str, at: float, ref: str = "R1", **kw: Any) -> dict[str, Any]:
    """An event of the victim's card at terminal T-1 of merchant M-1 unless told otherwise."""
    return event(
        kind, at, **{"ref": ref, "card": VICTIM, "terminal": "T-1", "merchant": "M-1", **kw}
    )


def ghost(*give_backs: dict[str, Any]) -> Events:
    """A declined attempt debited anyway (35.00 EUR at 300 s, grace to 1200 s), then give-backs."""
    return [
        ev("auth_request", 0),
        ev("auth_declined", 1, response_code="05"),
        ev("debit_posted", 300),
        *give_backs,
        tick(2 * H),
    ]


def duplicate(*give_backs: dict[str, Any]) -> Events:
    """An approved purchase posted twice (35.00 EUR at 60 s and 400 s, grace to 1300 s)."""
    return [
        ev("auth_request", 0),
        ev("auth_approved", 1, response_code="00"),
        ev("debit_posted", 60),
        ev("debit_posted", 400),
        *give_backs,
        tick(2 * H),
    ]


def only(events: Events, detector: str, **kw: Any) -> Alert | None:
    alerts = by_detector(score(events, **kw), detector)
    assert len(alerts) <= 1
    return alerts[0] if alerts else None


def listed(alert: Alert, key: str) -> list[dict[str, Any]]:
    """A list of objects in the alert's details (`cases`, `settlements_ignored`, `offsets`)."""
    value = alert.details[key]
    assert isinstance(value, list)
    return value


# Each forgery (the give-back's fields) next to the same give-back without it.
FORGERIES: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    "another card": ({"card": THIEF}, {}, "card_mismatch"),
    "another terminal, merchant and card": (
        {"card": THIEF, "terminal": "T-EVIL", "merchant": "M-EVIL"},
        {"terminal": "T-2", "merchant": "M-2"},  # a refund at another till is genuine
        "card_mismatch",
    ),
    "another currency": ({"currency": "USD"}, {}, "currency_mismatch"),
    "another card, another currency, one minor unit": (
        {"card": THIEF, "currency": "USD", "amount": 1},
        {},
        "card_mismatch",
    ),
}
GIVE_BACKS = [
    (FTD, ghost, "reversal", 900.0, 3500),
    (FTD, ghost, "refund", 1100.0, 3500),
    (DUP, duplicate, "reversal", 900.0, 7000),
]


@pytest.mark.parametrize(("forged", "genuine", "reason"), FORGERIES.values(), ids=FORGERIES)
@pytest.mark.parametrize("rule", GIVE_BACKS, ids=[f"{g[0]}-{g[2]}" for g in GIVE_BACKS])
def test_a_forged_give_back_silences_nothing_and_is_listed(
    rule: tuple[str, Any, str, float, int],
    forged: dict[str, Any],
    genuine: dict[str, Any],
    reason: str,
) -> None:
    detector, case, kind, at, at_risk = rule
    assert only(case(ev(kind, at, **genuine)), detector) is None
    give_back = ev(kind, at, **forged)
    alert = only(case(give_back), detector)
    assert alert is not None
    assert alert.severity == "critical"
    assert alert.amount_at_risk_minor == at_risk
    assert alert.details["settlements_ignored"] == [
        {"event_id": give_back["event_id"], "kind": kind, "reason": reason}
    ]
    assert (alert.card_id, alert.terminal_id, alert.merchant_id) == (VICTIM, "T-1", "M-1")
    assert THIEF not in alert.model_dump_json()


@pytest.mark.parametrize("detector", [FTD, DUP])
def test_a_partial_give_back_leaves_the_rest_at_risk(detector: str) -> None:
    case, at_risk = (ghost, 3500) if detector == FTD else (duplicate, 7000)
    assert only(case(ev("reversal", 900)), detector) is None
    one_unit = ev("reversal", 900, amount=1)
    alert = only(case(one_unit), detector)
    assert alert is not None
    assert alert.amount_at_risk_minor == at_risk - 1
    assert alert.details["settlements_ignored"] == []
    offset = {"event_id": one_unit["event_id"], "kind": "reversal", "amount_minor": 1}
    if detector == FTD:
        (shown,) = listed(alert, "cases")
        assert shown["offsets"] == [{**offset, "in_grace": True}]
        assert (shown["offset_minor"], shown["at_risk_minor"]) == (1, 3499)
        assert alert.summary.endswith("34.99 EUR not given back after 15 min")
    else:
        assert alert.details["offsets"] == [offset]
        assert alert.details["offset_minor"] == 1


@pytest.mark.parametrize("detector", [FTD, DUP])
def test_two_partial_give_backs_settle_when_together_they_cover_the_debit(detector: str) -> None:
    case = ghost if detector == FTD else duplicate
    covering = [ev("reversal", 800, amount=2000), ev("refund", 900, amount=1500)]
    assert only(case(*covering), detector) is None
    short = [ev("reversal", 800, amount=2000), ev("refund", 900, amount=1400)]
    alert = only(case(*short), detector)
    assert alert is not None
    assert alert.amount_at_risk_minor == (100 if detector == FTD else 3600)


def test_a_give_back_outside_the_grace_does_not_count_towards_it() -> None:
    """Two partial reversals cover the debit only together: one after the grace leaves the
    rest at risk (and, once it comes, gives it back: the alert resolves)."""
    alert = only(ghost(ev("reversal", 800, amount=2000), ev("reversal", 1300, amount=1500)), FTD)
    assert alert is not None
    assert alert.amount_at_risk_minor == 1500
    (shown,) = listed(alert, "cases")
    assert (shown["given_back_minor"], shown["given_back"]) == (1500, True)
    assert alert.details["resolved"] is True


@pytest.mark.parametrize("batch_size", [1, 1000])
def test_a_late_give_back_resolves_only_with_the_card_and_the_amount(batch_size: int) -> None:
    def late(**kw: Any) -> Alert:
        alert = only(ghost(tick(1500), ev("refund", 2 * H - 60, **kw)), FTD, batch_size=batch_size)
        assert alert is not None
        return alert

    assert late().details["resolved"] is True
    assert late(amount=3499).details["resolved"] is False
    forged = late(card=THIEF)
    assert forged.details["resolved"] is False
    assert [i["reason"] for i in listed(forged, "settlements_ignored")] == ["card_mismatch"]


@pytest.mark.parametrize("batch_size", [1, 1000])
def test_one_give_back_is_not_counted_for_two_cases(batch_size: int) -> None:
    """A failure matched by a manual debit and by its own debit: one reversal of one amount
    gives back one of them (the first decided), not both."""
    events = [
        ev("auth_request", 0),
        ev("network_error", 1),
        ev("debit_posted", 60, "M1"),
        ev("debit_posted", 120),
        tick(1500),
        ev("reversal", 1600),
        tick(2 * H),
    ]
    alert = only(events, FTD, batch_size=batch_size)
    assert alert is not None
    cases = listed(alert, "cases")
    assert [(c["debit_txn_ref"], c["given_back"]) for c in cases] == [
        ("M1", True),
        ("R1", False),
    ]
    assert alert.details["resolved"] is False


def test_the_sharing_of_give_backs_does_not_depend_on_their_arrival_order() -> None:
    """Two cases naming R1 (and M1), three give-backs of both references: every arrival order,
    streamed or in one batch, gives the same alert."""
    head = [ev("auth_request", 0), ev("network_error", 1)]
    head += [ev("debit_posted", 60, "M1"), ev("debit_posted", 120)]
    give_backs = [
        ev("reversal", 1000, amount=2000),
        ev("refund", 1010, "M1", amount=3000),
        ev("reversal", 1020, amount=1500),
    ]
    seen = set()
    for order in itertools.permutations(give_backs):
        for batch_size in (1, 1000):
            alert = only([*head, *order, tick(2 * H)], FTD, batch_size=batch_size)
            assert alert is not None
            seen.add(alert.model_dump_json())
    (final,) = seen
    alert = Alert.model_validate_json(final)
    cases = listed(alert, "cases")
    shown = [(c["debit_txn_ref"], c["given_back_minor"], c["given_back"]) for c in cases]
    assert shown == [("M1", 3500, True), ("R1", 1500, False)]
    assert alert.amount_at_risk_minor == 7000


def test_a_forged_give_back_arriving_first_does_not_rename_the_alert() -> None:
    """The attempt of a reference is created by whichever of its events arrives first: a
    forged reversal sent before the failure must not lend the alert its card and terminal."""
    forged = ev("reversal", 100, card=THIEF, terminal="T-EVIL", merchant="M-EVIL")
    events = ghost()
    alert = only([forged, *events], FTD)
    assert alert is not None
    assert (alert.card_id, alert.terminal_id, alert.merchant_id) == (VICTIM, "T-1", "M-1")
    genuine = only(events, FTD)
    assert genuine is not None
    assert alert.alert_id == genuine.alert_id


@pytest.mark.parametrize(
    ("forged", "reason"),
    [({"card": THIEF}, "card_mismatch"), ({"currency": "USD"}, "currency_mismatch")],
)
def test_a_reversal_for_another_card_is_not_the_reversal_of_a_network_error(
    forged: dict[str, Any], reason: str
) -> None:
    failure = [ev("auth_request", 0), ev("network_error", 1)]
    assert only([*failure, ev("reversal", 60), tick(H)], MR) is None
    reversal = ev("reversal", 60, **forged)
    alert = only([*failure, reversal, tick(H)], MR)
    assert alert is not None
    assert alert.details["settlements_ignored"] == [
        {"event_id": reversal["event_id"], "kind": "reversal", "reason": reason}
    ]


def _counted(events: Events, policy: Policy | None = None) -> tuple[CollectorRegistry, MemorySink]:
    """Replay `events` with the scoring loop's metrics, as `posmon run` keeps them."""
    registry, scorer, stats, sink = (
        CollectorRegistry(),
        Scorer(policy or Policy()),
        Stats(),
        MemorySink(),
    )
    metrics = Metrics(registry)

    def after(batch: Batch, seconds: float) -> None:
        metrics.observe_scorer(scorer, stats, seconds=seconds)

    run(MemorySource(encode(events), 1), sink, scorer, stats, on_batch=after)
    return registry, sink


def _ignored(registry: CollectorRegistry, reason: str) -> float | None:
    return registry.get_sample_value("posmon_settlements_ignored_total", {"reason": reason})


def test_the_counter_exists_from_the_start_for_every_reason() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    assert _ignored(registry, "card_mismatch") == _ignored(registry, "currency_mismatch") == 0.0


def test_a_forged_give_back_is_counted_once_whichever_rules_refuse_it() -> None:
    """A network error debited anyway: the forged reversal is refused by the ghost-debit rule
    and by the missing-reversal rule, and counted once; a genuine one is not counted."""
    events = [
        ev("auth_request", 0),
        ev("network_error", 1),
        ev("reversal", 60, card=THIEF),
        ev("refund", 70, currency="USD"),
        ev("debit_posted", 300),
        ev("reversal", 2 * H, ref="OTHER", card=THIEF),  # names no case: nothing to refuse
        tick(3 * H),
    ]
    registry, sink = _counted(events)
    assert {a.detector for a in sink.final_alerts().values()} == {FTD, MR}
    assert _ignored(registry, "card_mismatch") == 1
    assert _ignored(registry, "currency_mismatch") == 1
    registry, _ = _counted([*ghost(ev("reversal", 900))])
    assert _ignored(registry, "card_mismatch") == _ignored(registry, "currency_mismatch") == 0


def test_a_flood_of_forged_give_backs_is_counted_and_the_listing_is_capped() -> None:
    policy = Policy.model_validate({"state": {"max_evidence": 10}})
    forged = [ev("reversal", 400 + i, card=f"{THIEF}{i}") for i in range(300)]
    registry, sink = _counted(ghost(*forged), policy)
    (alert,) = by_detector(sink.final_alerts(), FTD)
    ids = [i["event_id"] for i in listed(alert, "settlements_ignored")]
    assert ids == [f["event_id"] for f in forged[:10]]
    assert _ignored(registry, "card_mismatch") == 300


def test_a_restored_scorer_goes_on_sharing_give_backs_exactly() -> None:
    """The ledgers of shared give-backs survive a snapshot at every batch boundary."""
    events = [
        ev("auth_request", 0),
        ev("network_error", 1),
        ev("debit_posted", 60, "M1"),
        ev("debit_posted", 120),
        ev("reversal", 500, amount=1000),
        ev("reversal", 510, card=THIEF),
        tick(1500),
        ev("refund", 1600, "M1", amount=2500),
        ev("reversal", 1700, amount=3500),
        tick(2 * H),
    ]
    messages, policy = encode(events), Policy()

    def replay(cut: int | None) -> list[str]:
        scorer, stats, out = Scorer(policy), Stats(), []
        for number, batch in enumerate(iter(MemorySource(messages, 1).poll, None), 1):
            out += [a.model_dump_json() for a in score_batch(batch, scorer, stats)[0]]
            if number == cut:
                scorer, _ = loads(dumps(scorer, policy, {0: number}), policy)
        scorer.close()
        return out + [a.model_dump_json() for a in scorer.take_alerts()[0]]

    expected = replay(None)
    versions = [Alert.model_validate_json(a) for a in expected]
    final = [a for a in versions if a.detector == FTD][-1]
    assert [c["given_back"] for c in listed(final, "cases")] == [True, True]
    assert len(listed(final, "settlements_ignored")) == 1
    for cut in range(1, len(messages)):
        assert replay(cut) == expected, cut
