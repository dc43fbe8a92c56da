"""Labelled incidents: each scene makes exactly the alerts its labels announce.

Semantics follow `docs/detectors.md` with the default policy. Two consequences worth knowing:

- A ghost debit after a *network error* is always a `missing_reversal` too: a reversal within
  the 2 min timeout would come before the debit's grace deadline and cancel the ghost debit. So
  such scenes also label the `missing_reversal` of their failed attempt.
- Each scene has a card of its own; failure scenes also have a terminal that no other scene
  uses, and spikes a dedicated terminal, so no alert gathers evidence across scenes.
"""

from __future__ import annotations

import math

from monitor.simulation.lines import (
    AUTH_APPROVED,
    AUTH_DECLINED,
    DEBIT_POSTED,
    NETWORK_ERROR,
    PREAUTH_HOLD,
    REVERSAL,
)
from monitor.simulation.stage import MIN, SEC, Scene, Stage
from monitor.simulation.world import JPY, US_PER_H, Terminal

FTD = "failed_then_debited"
DUPLICATE = "duplicate_debit"
MISSING = "missing_reversal"
BURST = "small_amount_burst"
SPIKE = "terminal_failure_spike"
LARGE = "large_amount"
STALE = "stale_preauth"

GRACE = 15 * MIN  # reversal_grace
TIMEOUT = 2 * MIN  # reversal_timeout
PREAUTH_TIMEOUT = 24 * US_PER_H
LARGE_MINOR = 1_000_000

GHOST_DECLINES = ("91", "96", "05", "51")
TESTING_DECLINES = ("14", "54", "55", "05")


def failure(
    stage: Stage, t: int, term: Terminal, card: str, amount: int, *, network_error: bool
) -> tuple[str, int]:
    """A failed attempt: a network error (never reversed here) or a decline."""
    if network_error:
        return stage.attempt(t, term, card, amount, NETWORK_ERROR)
    code = stage.rng.choice(GHOST_DECLINES)
    return stage.attempt(t, term, card, amount, AUTH_DECLINED, code=code)


def _companion(stage: Stage, ref: str, network_error: bool) -> None:
    if network_error:
        stage.incident(
            MISSING, "the network error behind a ghost debit, never reversed", txn_ref=ref
        )


def _ftd(stage: Stage, note: str, card: str, term: Terminal, ref: str, *, count: int = 1) -> None:
    stage.incident(FTD, note, count=count, card_id=card, terminal_id=term.terminal_id, txn_ref=ref)


def ftd_linked(stage: Stage, t0: int, network_error: bool) -> None:
    """The attempt fails; the ledger debits its own reference 1-8 min later; nothing
    reverses it. The customer walks away (no retry)."""
    term, card = stage.terminal(), stage.card()
    amount = term.merchant.draw_amount(stage.rng)
    ref, f = failure(stage, t0, term, card, amount, network_error=network_error)
    debit = f + stage.between(MIN, min(8 * MIN, stage.hi_us - f - GRACE))
    stage.add(debit, DEBIT_POSTED, term, card, ref, amount)
    stage.due(debit + GRACE)
    how = "network error" if network_error else "decline"
    _ftd(stage, f"linked ghost debit after a {how}", card, term, ref)
    _companion(stage, ref, network_error)


def ftd_unlinked(stage: Stage, t0: int) -> None:
    """The attempt fails (mostly a decline); operations post a manual debit with a new
    reference, same card, terminal and amount, 5-25 min later. Half the customers also retry
    and are approved and debited normally, so they pay twice."""
    rng = stage.rng
    term, card = stage.terminal(), stage.card()
    amount = term.merchant.draw_amount(rng)
    network_error = rng.random() < 0.25
    ref, f = failure(stage, t0, term, card, amount, network_error=network_error)
    if rng.random() < 0.5:
        retry, ok = stage.attempt(
            f + stage.between(10 * SEC, 40 * SEC), term, card, amount, AUTH_APPROVED
        )
        stage.maybe(ok + stage.between(MIN, 10 * MIN), DEBIT_POSTED, term, card, retry, amount)
    manual = f + stage.between(5 * MIN, min(25 * MIN, stage.hi_us - f - GRACE))
    stage.add(manual, DEBIT_POSTED, term, card, stage.ids.ref(), amount)
    stage.due(manual + GRACE)
    _ftd(stage, "manual debit under a new reference after a failure", card, term, ref)
    _companion(stage, ref, network_error)


def ftd_repeated(stage: Stage, t0: int) -> None:
    """Two ghost debits of one card at one terminal, 1-60 min apart: one alert, count 2,
    keyed by the first case's attempt."""
    rng = stage.rng
    term, card = stage.terminal(), stage.card()
    ne1, ne2 = rng.random() < 0.3, rng.random() < 0.3
    amount = term.merchant.draw_amount(rng)
    ref1, f1 = failure(stage, t0, term, card, amount, network_error=ne1)
    d1 = f1 + stage.between(MIN, 3 * MIN)
    stage.add(d1, DEBIT_POSTED, term, card, ref1, amount)
    t2 = d1 + stage.between(MIN, min(60 * MIN, stage.hi_us - d1 - 4 * MIN - GRACE))
    amount2 = term.merchant.draw_amount(rng)
    ref2, f2 = failure(stage, t2, term, card, amount2, network_error=ne2)
    d2 = f2 + stage.between(MIN, 3 * MIN)
    stage.add(d2, DEBIT_POSTED, term, card, ref2, amount2)
    stage.due(d2 + GRACE)
    _ftd(stage, "two ghost debits of one card at one terminal", card, term, ref1, count=2)
    _companion(stage, ref1, ne1)
    _companion(stage, ref2, ne2)


def ftd_retry_double_charge(stage: Stage, t0: int) -> None:
    """A network error, a retry approved and debited, and the failed attempt debited too
    (never reversed): the customer paid twice; the first attempt is the incident."""
    term, card = stage.terminal(), stage.card()
    amount = term.merchant.draw_amount(stage.rng)
    ref1, f = failure(stage, t0, term, card, amount, network_error=True)
    ref2, ok = stage.attempt(
        f + stage.between(10 * SEC, 40 * SEC), term, card, amount, AUTH_APPROVED
    )
    stage.add(ok + stage.between(MIN, 5 * MIN), DEBIT_POSTED, term, card, ref2, amount)
    d1 = f + stage.between(MIN, min(10 * MIN, stage.hi_us - f - GRACE))
    stage.add(d1, DEBIT_POSTED, term, card, ref1, amount)
    stage.due(d1 + GRACE)
    _ftd(
        stage, "retry double charge: failed attempt debited as well as the retry", card, term, ref1
    )
    _companion(stage, ref1, True)


def duplicate_debit(stage: Stage, t0: int) -> None:
    """An approved attempt posted twice (a third time in a third of the cases, inside the
    second posting's grace), never reversed."""
    term, card = stage.terminal(), stage.card()
    amount = term.merchant.draw_amount(stage.rng)
    ref, ok = stage.attempt(t0, term, card, amount, AUTH_APPROVED)
    room = stage.hi_us - ok - GRACE
    d1 = ok + stage.between(MIN, min(20 * MIN, room - 6 * MIN))
    d2 = d1 + stage.between(MIN, min(10 * MIN, stage.hi_us - d1 - GRACE))
    stage.add(d1, DEBIT_POSTED, term, card, ref, amount)
    stage.add(d2, DEBIT_POSTED, term, card, ref, amount)
    count = 2
    if stage.rng.random() < 1 / 3:
        stage.add(d2 + stage.between(MIN, 5 * MIN), DEBIT_POSTED, term, card, ref, amount)
        count = 3
    stage.due(d2 + GRACE)
    stage.incident(DUPLICATE, f"one reference posted {count} times", count=count, txn_ref=ref)


def missing_reversal(stage: Stage, t0: int) -> None:
    """A network error whose reversal never comes (or comes 3-10 min late); the customer
    retries and is approved; the failed attempt is not debited."""
    term, card = stage.terminal(), stage.card()
    amount = term.merchant.draw_amount(stage.rng)
    ref, f = stage.attempt(t0, term, card, amount, NETWORK_ERROR)
    note = "network error never reversed"
    if stage.rng.random() < 0.5:
        late = f + stage.between(3 * MIN, min(10 * MIN, stage.hi_us - f))
        stage.add(late, REVERSAL, term, card, ref, amount)
        note = "network error reversed only after the 2 min timeout"
    retry, ok = stage.attempt(
        f + stage.between(10 * SEC, 40 * SEC), term, card, amount, AUTH_APPROVED
    )
    stage.maybe(ok + stage.between(MIN, 10 * MIN), DEBIT_POSTED, term, card, retry, amount)
    stage.due(f + TIMEOUT)
    stage.incident(MISSING, note, txn_ref=ref)


def small_amount_burst(stage: Stage, t0: int) -> None:
    """Card testing: 6-12 attempts of 100-500 minor units, 10-43 s apart (all inside 10 min),
    mostly declined, sometimes walking along the terminals of one merchant."""
    rng = stage.rng
    terms = stage.merchant_terminals()
    walk = len(terms) > 1 and rng.random() < 0.5
    term = rng.choice(terms)
    card = stage.card()
    n = rng.randint(6, 12)
    t = t0
    for i in range(n):
        if walk:
            term = rng.choice(terms)
        amount = rng.randint(10, 50) * 10
        if rng.random() < 0.15:
            ref, out = stage.attempt(t, term, card, amount, AUTH_APPROVED)
            stage.maybe(out + stage.between(MIN, 10 * MIN), DEBIT_POSTED, term, card, ref, amount)
        else:
            _, out = stage.attempt(
                t, term, card, amount, AUTH_DECLINED, code=rng.choice(TESTING_DECLINES)
            )
        stage.due(t)
        if i < n - 1:
            t = out + stage.between(10 * SEC, 40 * SEC)
    where = "across terminals of one merchant" if walk else "at one terminal"
    stage.incident(BURST, f"{n} small attempts in under 10 min {where}", count=n, card_id=card)


def terminal_failure_spike(stage: Stage, t0: int) -> None:
    """A broken terminal: 15-22 attempts of different cards within 4 min, 75-100 % network
    errors, each reversed 2-60 s later (so none is a missing reversal)."""
    rng = stage.rng
    term = stage.dedicated()
    n = rng.randint(15, 22)
    errors = set(rng.sample(range(n), rng.randint(math.ceil(0.75 * n), n)))
    for i, offset in enumerate(sorted(rng.sample(range(0, 240 * SEC, 1000), n))):
        card = stage.card()
        amount = term.merchant.draw_amount(rng)
        if i in errors:
            ref, f = stage.attempt(t0 + offset, term, card, amount, NETWORK_ERROR)
            stage.add(f + stage.between(2 * SEC, 60 * SEC), REVERSAL, term, card, ref, amount)
            stage.due(f + TIMEOUT)
        elif rng.random() < 0.5:
            stage.attempt(
                t0 + offset, term, card, amount, AUTH_DECLINED, code=rng.choice(("91", "96"))
            )
        else:
            ref, ok = stage.attempt(t0 + offset, term, card, amount, AUTH_APPROVED)
            stage.maybe(ok + stage.between(MIN, 10 * MIN), DEBIT_POSTED, term, card, ref, amount)
    stage.incident(
        SPIKE, f"{n} attempts in 4 min, {len(errors)} network errors", terminal_id=term.terminal_id
    )


def _large(stage: Stage, t0: int, amount: int) -> None:
    rng = stage.rng
    term = stage.terminal(lambda m: m.currency is not JPY)
    card = stage.card()
    if rng.random() < 0.8:
        ref, ok = stage.attempt(t0, term, card, amount, AUTH_APPROVED)
        stage.maybe(ok + stage.between(MIN, 30 * MIN), DEBIT_POSTED, term, card, ref, amount)
    else:
        ref, _ = stage.attempt(t0, term, card, amount, AUTH_DECLINED, code="61")
    stage.due(t0)
    stage.incident(LARGE, f"attempt of {amount} minor units", txn_ref=ref)


def large_amount(stage: Stage, t0: int) -> None:
    """An attempt of 10,000-25,000 (EUR, USD or GBP; the default threshold is not meant for
    yen)."""
    _large(stage, t0, stage.rng.randint(LARGE_MINOR, 2_500_000))


def large_amount_at_threshold(stage: Stage, t0: int) -> None:
    """An attempt of exactly the threshold, which fires (`>=`)."""
    _large(stage, t0, LARGE_MINOR)


def stale_preauth(stage: Stage, t0: int) -> None:
    """A hotel or car-rental hold never completed nor released (needs 24 h inside the run)."""
    term = stage.terminal(lambda m: m.profile.preauth)
    card = stage.card()
    amount = term.merchant.to_minor(20_000 + stage.rng.random() * 130_000)
    ref = stage.ids.ref()
    stage.add(t0, PREAUTH_HOLD, term, card, ref, amount)
    stage.due(t0 + PREAUTH_TIMEOUT)
    stage.incident(STALE, "hold neither completed nor released within 24 h", txn_ref=ref)


INCIDENTS = (
    Scene("ftd_linked_network_error", lambda s, t: ftd_linked(s, t, True), 18 * MIN),
    Scene("ftd_linked_decline", lambda s, t: ftd_linked(s, t, False), 18 * MIN),
    Scene("ftd_unlinked_manual_debit", ftd_unlinked, 22 * MIN),
    Scene("ftd_repeated", ftd_repeated, 24 * MIN),
    Scene("ftd_retry_double_charge", ftd_retry_double_charge, 18 * MIN),
    Scene("duplicate_debit", duplicate_debit, 24 * MIN, per_12h=4, at_least=3),
    Scene("missing_reversal", missing_reversal, 4 * MIN, per_12h=3, at_least=2),
    Scene("small_amount_burst", small_amount_burst, 10 * MIN, per_12h=4, at_least=3),
    Scene("terminal_failure_spike", terminal_failure_spike, 7 * MIN, per_12h=3, at_least=2),
    Scene("large_amount", large_amount, 2 * MIN, per_12h=3, at_least=2),
    Scene("large_amount_at_threshold", large_amount_at_threshold, 2 * MIN),
    Scene("stale_preauth", stale_preauth, PREAUTH_TIMEOUT + MIN, per_12h=2, at_least=2),
)
