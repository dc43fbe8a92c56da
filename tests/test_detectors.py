"""Table-driven tests of every rule detector (docs/detectors.md), positives and near misses.

Each case is a list of events (seconds after T0) and the alerts expected at the end of the
replay, as {detector: [count, ...]}. A `tick` moves the watermark far enough for the decisions.
"""

from __future__ import annotations

from typing import Any

import pytest

from monitor.core.alerts import Alert, alert_id
from monitor.scoring.policy import Policy
from tests.builders import by_detector, event, score, tick

H = 3600.0
Case = tuple[str, list[dict[str, Any]], dict[str, list[int]]]


def _attempt(ref: str, at: float, outcome: str, **kw: Any) -> list[dict[str, Any]]:
    extra: dict[str, Any] = (
        {"response_code": "00" if outcome == "auth_approved" else "05"}
        if outcome != "network_error"
        else {}
    )
    return [
        event("auth_request", at, ref=ref, **kw),
        event(outcome, at + 1, ref=ref, **kw, **extra),
    ]


FAILED_THEN_DEBITED: list[Case] = [
    (
        "decline then linked debit",
        [*_attempt("R1", 0, "auth_declined"), event("debit_posted", 300, ref="R1"), tick(2 * H)],
        {"failed_then_debited": [1]},
    ),
    (
        "network error then linked debit (and no reversal at all)",
        [*_attempt("R1", 0, "network_error"), event("debit_posted", 300, ref="R1"), tick(2 * H)],
        {"failed_then_debited": [1], "missing_reversal": [1]},
    ),
    (
        "manual debit with a new reference, same card, terminal and amount",
        [
            *_attempt("R1", 0, "auth_declined"),
            event("debit_posted", 600, ref="MANUAL-1"),
            tick(2 * H),
        ],
        {"failed_then_debited": [1]},
    ),
    (
        "manual debit after the 30 min window",
        [
            *_attempt("R1", 0, "auth_declined"),
            event("debit_posted", 1802, ref="MANUAL-1"),
            tick(2 * H),
        ],
        {},
    ),
    (
        "manual debit of another amount",
        [
            *_attempt("R1", 0, "auth_declined"),
            event("debit_posted", 600, ref="M-1", amount=3600),
            tick(2 * H),
        ],
        {},
    ),
    (
        "reversal inside the grace",
        [
            *_attempt("R1", 0, "network_error"),
            event("reversal", 100, ref="R1"),
            event("debit_posted", 300, ref="R1"),
            tick(2 * H),
        ],
        {},
    ),
    (
        "refund inside the grace",
        [
            *_attempt("R1", 0, "auth_declined"),
            event("debit_posted", 300, ref="R1"),
            event("refund", 1100, ref="R1"),
            tick(2 * H),
        ],
        {},
    ),
    (
        "refund after the grace",
        [
            *_attempt("R1", 0, "auth_declined"),
            event("debit_posted", 300, ref="R1"),
            event("refund", 1200, ref="R1"),
            tick(2 * H),
        ],
        {"failed_then_debited": [1]},
    ),
    (
        "refund of the manual debit's reference inside the grace",
        [
            *_attempt("R1", 0, "auth_declined"),
            event("debit_posted", 600, ref="M-1"),
            event("refund", 900, ref="M-1"),
            tick(2 * H),
        ],
        {},
    ),
    (
        "retry approved without a ghost debit",
        [
            *_attempt("R1", 0, "auth_declined"),
            *_attempt("R2", 30, "auth_approved"),
            event("debit_posted", 600, ref="R2"),
            tick(2 * H),
        ],
        {},
    ),
    (
        "retry double charge: the failed first attempt was debited too",
        [
            *_attempt("R1", 0, "network_error"),
            event("reversal", 20, ref="R1-other"),
            *_attempt("R2", 30, "auth_approved"),
            event("debit_posted", 600, ref="R2"),
            event("debit_posted", 610, ref="R1"),
            tick(2 * H),
        ],
        {"failed_then_debited": [1], "missing_reversal": [1]},
    ),
    (
        "two cases of one card at one terminal within 24 h: one alert, count 2",
        [
            *_attempt("R1", 0, "auth_declined"),
            event("debit_posted", 300, ref="R1"),
            *_attempt("R2", 5 * H, "auth_declined"),
            event("debit_posted", 5 * H + 300, ref="R2"),
            tick(7 * H),
        ],
        {"failed_then_debited": [2]},
    ),
    (
        "two cases more than 24 h apart: two alerts",
        [
            *_attempt("R1", 0, "auth_declined"),
            event("debit_posted", 300, ref="R1"),
            *_attempt("R2", 25 * H, "auth_declined"),
            event("debit_posted", 25 * H + 300, ref="R2"),
            tick(27 * H),
        ],
        {"failed_then_debited": [1, 1]},
    ),
    (
        "decision waits for the grace: the input ends before it",
        [*_attempt("R1", 0, "auth_declined"), event("debit_posted", 300, ref="R1"), tick(1100)],
        {},
    ),
    (
        "approved attempt debited: no incident",
        [*_attempt("R1", 0, "auth_approved"), event("debit_posted", 300, ref="R1"), tick(2 * H)],
        {},
    ),
]

DUPLICATE_DEBIT: list[Case] = [
    (
        "one reference debited twice",
        [
            *_attempt("R1", 0, "auth_approved"),
            event("debit_posted", 60, ref="R1"),
            event("debit_posted", 400, ref="R1"),
            tick(2 * H),
        ],
        {"duplicate_debit": [2]},
    ),
    (
        "second debit reversed inside the grace",
        [
            *_attempt("R1", 0, "auth_approved"),
            event("debit_posted", 60, ref="R1"),
            event("debit_posted", 400, ref="R1"),
            event("reversal", 900, ref="R1"),
            tick(2 * H),
        ],
        {},
    ),
    (
        "three debits, one refund inside the grace: two remain",
        [
            *_attempt("R1", 0, "auth_approved"),
            event("debit_posted", 60, ref="R1"),
            event("debit_posted", 400, ref="R1"),
            event("debit_posted", 500, ref="R1"),
            event("refund", 700, ref="R1"),
            tick(2 * H),
        ],
        {"duplicate_debit": [3]},
    ),
    (
        "a third debit after the first decision: three debits, one reversal, still one too many",
        [
            *_attempt("R1", 0, "auth_approved"),
            event("debit_posted", 60, ref="R1"),
            event("debit_posted", 400, ref="R1"),
            event("reversal", 900, ref="R1"),
            event("debit_posted", 1900, ref="R1"),
            tick(2 * H),
        ],
        {"duplicate_debit": [3]},
    ),
    (
        "a single debit",
        [*_attempt("R1", 0, "auth_approved"), event("debit_posted", 60, ref="R1"), tick(2 * H)],
        {},
    ),
]

MISSING_REVERSAL: list[Case] = [
    (
        "network error, never reversed",
        [*_attempt("R1", 0, "network_error"), tick(H)],
        {"missing_reversal": [1]},
    ),
    (
        "reversed after 60 s",
        [*_attempt("R1", 0, "network_error"), event("reversal", 61, ref="R1"), tick(H)],
        {},
    ),
    (
        "reversed exactly at the timeout",
        [*_attempt("R1", 0, "network_error"), event("reversal", 121, ref="R1"), tick(H)],
        {},
    ),
    (
        "reversed one second after the timeout",
        [*_attempt("R1", 0, "network_error"), event("reversal", 122, ref="R1"), tick(H)],
        {"missing_reversal": [1]},
    ),
    (
        "a refund is not a reversal",
        [*_attempt("R1", 0, "network_error"), event("refund", 30, ref="R1"), tick(H)],
        {"missing_reversal": [1]},
    ),
]


def _small(ref: str, at: float, amount: int = 200, **kw: Any) -> dict[str, Any]:
    return event(
        "auth_request", at, ref=ref, amount=amount, card=kw.pop("card", "tok_testing_01"), **kw
    )


SMALL_AMOUNT_BURST: list[Case] = [
    (
        "five small attempts in ten minutes",
        [_small(f"S{i}", i * 100) for i in range(5)] + [tick(H)],
        {"small_amount_burst": [5]},
    ),
    ("four small attempts", [_small(f"S{i}", i * 100) for i in range(4)] + [tick(H)], {}),
    (
        "a slow trickle: one every three minutes for an hour",
        [_small(f"S{i}", i * 180) for i in range(21)] + [tick(2 * H)],
        {},
    ),
    (
        "five attempts of 5.01",
        [_small(f"S{i}", i * 60, amount=501) for i in range(5)] + [tick(H)],
        {},
    ),
    (
        "eight attempts, across terminals: one burst",
        [_small(f"S{i}", i * 30, terminal=f"T-{i % 3}") for i in range(8)] + [tick(H)],
        {"small_amount_burst": [8]},
    ),
    (
        "two bursts an hour apart",
        [_small(f"S{i}", i * 60) for i in range(5)]
        + [_small(f"U{i}", H + i * 60) for i in range(6)]
        + [tick(3 * H)],
        {"small_amount_burst": [5, 6]},
    ),
    (
        "an attempt that did not qualify on its own joins the burst with the next one",
        # 700 s: four small attempts in its window, not enough on its own; 710 s: five again.
        [_small(f"S{i}", i * 60) for i in range(5)]
        + [_small("S5", 700), _small("S6", 710)]
        + [tick(H)],
        {"small_amount_burst": [7]},
    ),
    (
        "five small attempts by five cards at one terminal: off by default",
        [_small(f"S{i}", i * 60, card=f"tok_many_{i:04d}") for i in range(6)] + [tick(H)],
        {},
    ),
]

TERMINAL_FAILURE_SPIKE: list[Case] = [
    (
        "ten attempts in five minutes, half of them network errors",
        [
            e
            for i in range(10)
            for e in _attempt(
                f"F{i}", i * 20, "network_error" if i % 2 else "auth_approved", card=f"tok_c{i:08d}"
            )
            + ([event("reversal", i * 20 + 5, ref=f"F{i}", card=f"tok_c{i:08d}")] if i % 2 else [])
        ]
        + [tick(H)],
        {"terminal_failure_spike": [5]},
    ),
    (
        "an outage below the ratio: 12 attempts, 4 network errors",
        [
            e
            for i in range(12)
            for e in _attempt(
                f"F{i}",
                i * 20,
                "network_error" if i % 3 == 0 else "auth_approved",
                card=f"tok_c{i:08d}",
            )
            + (
                [event("reversal", i * 20 + 5, ref=f"F{i}", card=f"tok_c{i:08d}")]
                if i % 3 == 0
                else []
            )
        ]
        + [tick(H)],
        {},
    ),
    (
        "the tenth attempt, a decline, completes the spike",
        [
            *[
                e
                for i in range(4)
                for e in _attempt(f"A{i}", i * 10, "auth_approved", card=f"tok_a{i:08d}")
            ],
            *[
                e
                for i in range(5)
                for e in [
                    *_attempt(f"N{i}", 50 + i * 10, "network_error", card=f"tok_n{i:08d}"),
                    event("reversal", 55 + i * 10, ref=f"N{i}", card=f"tok_n{i:08d}"),
                ]
            ],
            *_attempt("D0", 120, "auth_declined", card="tok_d00000000"),
            tick(H),
        ],
        {"terminal_failure_spike": [5]},
    ),
    (
        "two outages an hour apart: two spikes",
        [
            e
            for start in (0, H)
            for i in range(10)
            for e in [
                *_attempt(f"N{start}-{i}", start + i * 10, "network_error", card=f"tok_n{i:08d}"),
                event("reversal", start + i * 10 + 5, ref=f"N{start}-{i}", card=f"tok_n{i:08d}"),
            ]
        ]
        + [tick(3 * H)],
        {"terminal_failure_spike": [10, 10]},
    ),
    (
        "nine attempts, all network errors: too few",
        [
            e
            for i in range(9)
            for e in [
                *_attempt(f"F{i}", i * 20, "network_error"),
                event("reversal", i * 20 + 5, ref=f"F{i}"),
            ]
        ]
        + [tick(H)],
        {},
    ),
]

LARGE_AMOUNT: list[Case] = [
    ("at the threshold", [event("auth_request", 0, amount=1_000_000)], {"large_amount": [1]}),
    ("just below", [event("auth_request", 0, amount=999_999)], {}),
    (
        "an approval of a large amount is not an attempt",
        [event("auth_approved", 0, amount=5_000_000)],
        {},
    ),
]

STALE_PREAUTH: list[Case] = [
    (
        "hold never closed",
        [event("preauth_hold", 0, ref="P1"), tick(25 * H)],
        {"stale_preauth": [1]},
    ),
    (
        "completed after 23 h",
        [
            event("preauth_hold", 0, ref="P1"),
            event("preauth_completion", 23 * H, ref="P1"),
            tick(25 * H),
        ],
        {},
    ),
    (
        "released exactly at 24 h",
        [
            event("preauth_hold", 0, ref="P1"),
            event("preauth_release", 24 * H, ref="P1"),
            tick(25 * H),
        ],
        {},
    ),
    ("the input ends before the deadline", [event("preauth_hold", 0, ref="P1"), tick(23 * H)], {}),
]

ALL = (
    FAILED_THEN_DEBITED
    + DUPLICATE_DEBIT
    + MISSING_REVERSAL
    + SMALL_AMOUNT_BURST
    + TERMINAL_FAILURE_SPIKE
    + LARGE_AMOUNT
    + STALE_PREAUTH
)


def _counts(alerts: dict[str, Alert]) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for alert in alerts.values():
        found.setdefault(alert.detector, []).append(alert.count)
    return {detector: sorted(counts) for detector, counts in found.items()}


@pytest.mark.parametrize(("name", "events", "expected"), ALL, ids=[c[0] for c in ALL])
def test_detector_table(
    name: str, events: list[dict[str, Any]], expected: dict[str, list[int]]
) -> None:
    assert _counts(score(events)) == {d: sorted(c) for d, c in expected.items()}


def test_ghost_debit_alert_carries_its_evidence_and_numbers() -> None:
    failure = _attempt("R1", 0, "network_error", card="tok_9f31aa77c1")
    debit = event("debit_posted", 300, ref="R1", card="tok_9f31aa77c1", terminal="T-0001")
    (alert,) = by_detector(score([*failure, debit, tick(2 * H)]), "failed_then_debited")
    assert alert.alert_id == alert_id("failed_then_debited", "tok_9f31aa77c1", "T-0001", "R1")
    assert alert.event_ids == [failure[1]["event_id"], debit["event_id"]]
    assert alert.severity == "critical"
    assert alert.details["debited_minor"] == 3500
    assert alert.summary == (
        "Card tok_9f..c1 debited 1 x 35.00 EUR at terminal T-0001 after a network error,"
        " no reversal after 15 min"
    )


def test_unlinked_debits_take_the_latest_unmatched_failure_first() -> None:
    events = [
        *_attempt("R1", 0, "auth_declined"),
        *_attempt("R2", 300, "auth_declined"),
        event("debit_posted", 600, ref="M-1"),
        event("debit_posted", 700, ref="M-2"),
        tick(3 * H),
    ]
    (alert,) = by_detector(score(events), "failed_then_debited")
    cases = alert.details["cases"]
    assert isinstance(cases, list)
    assert [c["txn_ref"] for c in cases] == ["R2", "R1"]
    assert alert.alert_id == alert_id("failed_then_debited", "tok_card_0001", "T-0001", "R2")
    assert alert.count == 2


def test_terminal_rule_for_small_attempts_when_enabled() -> None:
    policy = Policy.model_validate(
        {"detectors": {"small_amount_burst": {"terminal_min_attempts": 5}}}
    )
    events = [_small(f"S{i}", i * 60, card=f"tok_many_{i:04d}") for i in range(6)] + [tick(H)]
    (alert,) = by_detector(score(events, policy), "small_amount_burst")
    assert alert.details["scope"] == "terminal"
    assert alert.card_id is None
    assert alert.count == 6


def test_large_amount_threshold_per_currency() -> None:
    policy = Policy.model_validate(
        {"detectors": {"large_amount": {"per_currency": {"JPY": 300_000}}}}
    )
    events = [
        event("auth_request", 0, ref="J1", amount=300_000, currency="JPY"),
        event("auth_request", 1, ref="E1", amount=300_000),
    ]
    (alert,) = by_detector(score(events, policy), "large_amount")
    assert alert.details["txn_ref"] == "J1"
    assert "300,000 JPY" in alert.summary


def test_disabled_detector_stays_silent() -> None:
    policy = Policy.model_validate({"detectors": {"large_amount": {"enabled": False}}})
    assert score([event("auth_request", 0, amount=5_000_000)], policy) == {}


def test_burst_evidence_is_every_small_attempt() -> None:
    attempts = [_small(f"S{i}", i * 30) for i in range(7)]
    (alert,) = by_detector(score([*attempts, tick(H)]), "small_amount_burst")
    assert alert.event_ids == [a["event_id"] for a in attempts]
    assert alert.alert_id == alert_id(
        "small_amount_burst", "tok_testing_01", str(attempts[0]["event_id"])
    )


def test_evidence_is_capped_and_the_cut_is_reported() -> None:
    policy = Policy.model_validate({"state": {"max_evidence": 4}})
    attempts = [_small(f"S{i}", i * 10) for i in range(9)]
    (alert,) = by_detector(score([*attempts, tick(H)], policy), "small_amount_burst")
    assert alert.count == 9
    assert len(alert.event_ids) == 4
    assert alert.details["evidence_truncated"] == 5


def test_a_refund_after_the_grace_gives_the_money_back_and_resolves_the_alert() -> None:
    events = [
        *_attempt("R1", 0, "auth_declined"),
        event("debit_posted", 300, ref="R1"),
        *_attempt("R2", 3600, "auth_declined"),
        event("debit_posted", 3900, ref="R2"),
        event("refund", 2 * H, ref="R1"),
        tick(3 * H),
    ]
    (alert,) = by_detector(score(events), "failed_then_debited")
    cases = alert.details["cases"]
    assert isinstance(cases, list)
    assert [c["given_back"] for c in cases] == [True, False]
    assert alert.details["resolved"] is False
    (alert,) = by_detector(
        score([*events, event("reversal", 3 * H, ref="R2"), tick(4 * H)]), "failed_then_debited"
    )
    assert alert.details["resolved"] is True


@pytest.mark.parametrize("batch_size", [1, 1000])
def test_a_late_give_back_settles_every_case_of_its_reference(batch_size: int) -> None:
    """A failure matched by a manual debit and by its own debit: one reversal of the attempt
    after the grace, of both amounts, gives both back, whether it is seen before the decisions
    or after them (one of a single amount gives back one: tests/test_settlement.py)."""
    events = [
        *_attempt("R1", 0, "network_error"),
        event("debit_posted", 60, ref="M1"),
        event("debit_posted", 120, ref="R1"),
        tick(1500),  # one event at a time, this takes both decisions before the reversal is seen
        event("reversal", 1600, ref="R1", amount=7000),
        tick(2 * H),
    ]
    (alert,) = by_detector(score(events, batch_size=batch_size), "failed_then_debited")
    cases = alert.details["cases"]
    assert isinstance(cases, list)
    assert [(c["debit_txn_ref"], c["given_back"]) for c in cases] == [("M1", True), ("R1", True)]
    assert alert.details["resolved"] is True


def test_a_give_back_past_the_group_window_no_longer_settles_the_case() -> None:
    events = [
        *_attempt("R1", 0, "auth_declined"),
        event("debit_posted", 300, ref="R1"),
        event("refund", 300 + 24 * H + 1, ref="R1"),
        tick(26 * H),
    ]
    (alert,) = by_detector(score(events), "failed_then_debited")
    assert alert.details["resolved"] is False
