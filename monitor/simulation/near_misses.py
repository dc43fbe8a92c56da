"""Near misses: patterns that come close to a rule and must raise no alert.

Each is one step on the quiet side of a boundary of `docs/detectors.md` (a reversal inside the
grace, a fourth small attempt, a ratio below one half, an amount one unit under the
threshold, ...), on a card and, where it matters, a terminal of its own.
"""

from __future__ import annotations

from monitor.simulation.incidents import (
    BURST,
    DUPLICATE,
    FTD,
    GRACE,
    LARGE,
    LARGE_MINOR,
    MISSING,
    PREAUTH_TIMEOUT,
    SPIKE,
    STALE,
    TIMEOUT,
    failure,
)
from monitor.simulation.lines import (
    AUTH_APPROVED,
    DEBIT_POSTED,
    NETWORK_ERROR,
    PREAUTH_HOLD,
    PREAUTH_RELEASE,
    REFUND,
    REVERSAL,
)
from monitor.simulation.stage import MIN, SEC, Scene, Stage
from monitor.simulation.world import JPY, US_PER_H


def reversal_in_grace(stage: Stage, t0: int) -> None:
    """Declined, debited anyway, reversed 2-12 min after the debit (grace: 15 min)."""
    term, card = stage.terminal(), stage.card()
    amount = term.merchant.draw_amount(stage.rng)
    ref, f = failure(stage, t0, term, card, amount, network_error=False)
    debit = f + stage.between(MIN, 5 * MIN)
    stage.add(debit, DEBIT_POSTED, term, card, ref, amount)
    stage.add(debit + stage.between(2 * MIN, 12 * MIN), REVERSAL, term, card, ref, amount)
    stage.near_miss(FTD, "ghost debit reversed inside the grace", txn_ref=ref)


def reversal_before_debit(stage: Stage, t0: int) -> None:
    """A network error reversed within seconds, then debited anyway: the reversal (before the
    debit's deadline) cancels it, and it came within the timeout."""
    term, card = stage.terminal(), stage.card()
    amount = term.merchant.draw_amount(stage.rng)
    ref, f = stage.attempt(t0, term, card, amount, NETWORK_ERROR)
    stage.add(f + stage.between(5 * SEC, 60 * SEC), REVERSAL, term, card, ref, amount)
    stage.add(f + stage.between(2 * MIN, 8 * MIN), DEBIT_POSTED, term, card, ref, amount)
    stage.near_miss(FTD, "network error reversed in time, debit posted anyway", txn_ref=ref)


def refund_in_grace(stage: Stage, t0: int) -> None:
    """Declined; a manual debit under a new reference 5-20 min later, refunded (under that
    reference) 2-13 min after it."""
    term, card = stage.terminal(), stage.card()
    amount = term.merchant.draw_amount(stage.rng)
    ref, f = failure(stage, t0, term, card, amount, network_error=False)
    manual = f + stage.between(5 * MIN, 20 * MIN)
    debit_ref = stage.ids.ref()
    stage.add(manual, DEBIT_POSTED, term, card, debit_ref, amount)
    stage.add(manual + stage.between(2 * MIN, 13 * MIN), REFUND, term, card, debit_ref, amount)
    stage.near_miss(FTD, "manual debit refunded inside the grace", txn_ref=ref)


def manual_debit_after_window(stage: Stage, t0: int) -> None:
    """Declined; a manual debit with the same card, terminal and amount 31-40 min later,
    outside the 30 min matching window."""
    term, card = stage.terminal(), stage.card()
    amount = term.merchant.draw_amount(stage.rng)
    ref, f = failure(stage, t0, term, card, amount, network_error=False)
    manual = f + stage.between(31 * MIN, 40 * MIN)
    stage.add(manual, DEBIT_POSTED, term, card, stage.ids.ref(), amount)
    stage.near_miss(FTD, "manual debit outside the 30 min window", txn_ref=ref)


def retry_without_ghost(stage: Stage, t0: int) -> None:
    """A network error reversed in time, a retry approved and debited: the normal story."""
    term, card = stage.terminal(), stage.card()
    amount = term.merchant.draw_amount(stage.rng)
    ref, f = stage.attempt(t0, term, card, amount, NETWORK_ERROR)
    stage.add(f + stage.between(5 * SEC, 60 * SEC), REVERSAL, term, card, ref, amount)
    retry, ok = stage.attempt(
        f + stage.between(10 * SEC, 40 * SEC), term, card, amount, AUTH_APPROVED
    )
    stage.add(ok + stage.between(MIN, 10 * MIN), DEBIT_POSTED, term, card, retry, amount)
    stage.near_miss(FTD, "retry approved, failed attempt never debited", txn_ref=ref)


def reversal_just_in_time(stage: Stage, t0: int) -> None:
    """A network error reversed 100-119 s later (timeout: 120 s)."""
    term, card = stage.terminal(), stage.card()
    amount = term.merchant.draw_amount(stage.rng)
    ref, f = stage.attempt(t0, term, card, amount, NETWORK_ERROR)
    stage.add(f + stage.between(100 * SEC, TIMEOUT - SEC), REVERSAL, term, card, ref, amount)
    stage.near_miss(MISSING, "reversal just inside the timeout", txn_ref=ref)


def duplicate_reversed(stage: Stage, t0: int) -> None:
    """Posted twice 1-5 min apart, one posting reversed (or refunded) inside the grace."""
    term, card = stage.terminal(), stage.card()
    amount = term.merchant.draw_amount(stage.rng)
    ref, ok = stage.attempt(t0, term, card, amount, AUTH_APPROVED)
    d1 = ok + stage.between(MIN, 10 * MIN)
    d2 = d1 + stage.between(MIN, 5 * MIN)
    stage.add(d1, DEBIT_POSTED, term, card, ref, amount)
    stage.add(d2, DEBIT_POSTED, term, card, ref, amount)
    undo = REVERSAL if stage.rng.random() < 0.5 else REFUND
    stage.add(d2 + stage.between(MIN, GRACE - 2 * MIN), undo, term, card, ref, amount)
    stage.near_miss(DUPLICATE, f"double posting undone by a {undo.name} in the grace", txn_ref=ref)


def _small_series(stage: Stage, t0: int, gaps: list[int], note: str) -> None:
    rng = stage.rng
    term, card = rng.choice(stage.merchant_terminals()), stage.card()
    t = t0
    for gap in [0, *gaps]:
        t += gap
        amount = rng.randint(10, 50) * 10
        ref, ok = stage.attempt(t, term, card, amount, AUTH_APPROVED)
        stage.maybe(ok + stage.between(MIN, 10 * MIN), DEBIT_POSTED, term, card, ref, amount)
    stage.near_miss(BURST, note, card_id=card)


def four_small(stage: Stage, t0: int) -> None:
    """Four small attempts within 6 min (a burst needs five in 10 min)."""
    gaps = [stage.between(30 * SEC, 2 * MIN) for _ in range(3)]
    _small_series(stage, t0, gaps, "four small attempts in 10 min")


def small_trickle(stage: Stage, t0: int) -> None:
    """A small attempt every 3 min to 3 min 20 s for up to an hour: five requests span at least
    12 min, so no 10 min window holds more than four."""
    room = min(60 * MIN, stage.hi_us - t0)
    gaps: list[int] = []
    while sum(gaps) + 3 * MIN + 20 * SEC <= room:
        gaps.append(stage.between(3 * MIN, 3 * MIN + 20 * SEC))
    _small_series(stage, t0, gaps, f"{len(gaps) + 1} small attempts, one every ~3 min")


def outage_below_ratio(stage: Stage, t0: int) -> None:
    """12 attempts in 4.5 min at one terminal, 4 network errors (all reversed): a third,
    below the one half a spike needs."""
    rng = stage.rng
    term = stage.dedicated()
    errors = set(rng.sample(range(12), 4))
    for i, offset in enumerate(sorted(rng.sample(range(0, 270 * SEC, 1000), 12))):
        card = stage.card()
        amount = term.merchant.draw_amount(rng)
        if i in errors:
            ref, f = stage.attempt(t0 + offset, term, card, amount, NETWORK_ERROR)
            stage.add(f + stage.between(2 * SEC, 60 * SEC), REVERSAL, term, card, ref, amount)
        else:
            ref, ok = stage.attempt(t0 + offset, term, card, amount, AUTH_APPROVED)
            stage.maybe(ok + stage.between(MIN, 10 * MIN), DEBIT_POSTED, term, card, ref, amount)
    stage.near_miss(SPIKE, "12 attempts in 5 min, 4 network errors", terminal_id=term.terminal_id)


def large_just_below(stage: Stage, t0: int) -> None:
    """An approved attempt of 999,999 minor units (threshold: 1,000,000)."""
    term, card = stage.terminal(lambda m: m.currency is not JPY), stage.card()
    ref, ok = stage.attempt(t0, term, card, LARGE_MINOR - 1, AUTH_APPROVED)
    stage.maybe(ok + stage.between(MIN, 30 * MIN), DEBIT_POSTED, term, card, ref, LARGE_MINOR - 1)
    stage.near_miss(LARGE, "one minor unit below the threshold", txn_ref=ref)


def preauth_released_late(stage: Stage, t0: int) -> None:
    """A hold released 23-23.8 h later (timeout: 24 h)."""
    term, card = stage.terminal(lambda m: m.profile.preauth), stage.card()
    amount = term.merchant.to_minor(20_000 + stage.rng.random() * 130_000)
    ref = stage.ids.ref()
    stage.add(t0, PREAUTH_HOLD, term, card, ref, amount)
    release = t0 + stage.between(23 * US_PER_H, 23 * US_PER_H + 48 * MIN)
    stage.add(release, PREAUTH_RELEASE, term, card, ref, amount)
    stage.near_miss(STALE, "hold released after 23 h", txn_ref=ref)


NEAR_MISSES = (
    Scene("reversal_in_grace", reversal_in_grace, 21 * MIN),
    Scene("reversal_before_debit", reversal_before_debit, 24 * MIN),
    Scene("refund_in_grace", refund_in_grace, 36 * MIN),
    Scene("manual_debit_after_window", manual_debit_after_window, 57 * MIN),
    Scene("retry_without_ghost", retry_without_ghost, 27 * MIN),
    Scene("reversal_just_in_time", reversal_just_in_time, 3 * MIN),
    Scene("duplicate_reversed", duplicate_reversed, 32 * MIN),
    Scene("four_small", four_small, 8 * MIN),
    Scene("small_trickle", small_trickle, 20 * MIN),
    Scene("outage_below_ratio", outage_below_ratio, 7 * MIN),
    Scene("large_just_below", large_just_below, MIN),
    Scene("preauth_released_late", preauth_released_late, PREAUTH_TIMEOUT + MIN),
)
