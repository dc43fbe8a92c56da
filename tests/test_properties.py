"""Invariants of the scoring core, over random streams with every kind of incident in them.

- any arrival order within `allowed_lateness` gives exactly the alerts of the sorted stream;
- batch boundaries do not matter;
- a redelivered event never changes the result.
"""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from monitor.core.alerts import Alert
from monitor.scoring.pipeline import replay_messages
from monitor.scoring.policy import Policy
from monitor.scoring.scorer import Scorer
from tests.builders import encode, event, final_states

LATENESS = Policy().allowed_lateness


def random_stream(seed: int, attempts: int) -> list[dict[str, Any]]:
    """A dense little world: few cards and terminals, so every detector gets work."""
    rng = random.Random(seed)
    cards = [f"tok_prop_{i:04d}" for i in range(3)]
    terminals = ["T-A", "T-B"]
    events: list[dict[str, Any]] = []
    for n in range(attempts):
        ref = f"R{seed}-{n}"
        at = rng.uniform(0, 2 * 3600)
        kw: dict[str, Any] = {
            "ref": ref,
            "card": rng.choice(cards),
            "terminal": rng.choice(terminals),
            "amount": rng.choice([200, 450, 3500, 1_000_000]),
        }
        if rng.random() < 0.1:
            events.append(event("preauth_hold", at, **kw))
            if rng.random() < 0.5:
                events.append(
                    event(
                        rng.choice(["preauth_release", "preauth_completion"]),
                        at + rng.uniform(0, 4000),
                        **kw,
                    )
                )
            continue
        events.append(event("auth_request", at, **kw))
        outcome = rng.choice(["auth_approved", "auth_declined", "network_error", "network_error"])
        events.append(event(outcome, at + rng.uniform(0, 3), **kw))
        if outcome == "network_error" and rng.random() < 0.6:
            events.append(event("reversal", at + rng.uniform(0, 200), **kw))
        if rng.random() < 0.5:
            debit_ref = ref if rng.random() < 0.7 else f"M{seed}-{n}"
            debit_at = at + rng.uniform(0, 1500)
            events.append(event("debit_posted", debit_at, **{**kw, "ref": debit_ref}))
            if rng.random() < 0.2:
                events.append(
                    event(
                        "debit_posted", debit_at + rng.uniform(0, 600), **{**kw, "ref": debit_ref}
                    )
                )
            if rng.random() < 0.3:
                events.append(
                    event(
                        rng.choice(["refund", "reversal"]),
                        debit_at + rng.uniform(0, 1500),
                        **{**kw, "ref": debit_ref},
                    )
                )
    if rng.random() < 0.5:  # an outage: a terminal's attempts mostly end in network errors
        start = rng.uniform(0, 2 * 3600)
        for n in range(rng.randrange(8, 16)):
            at = start + rng.uniform(0, 240)
            kw = {
                "ref": f"O{seed}-{n}",
                "card": rng.choice(cards),
                "terminal": "T-A",
                "amount": 3500,
            }
            events.append(
                event("network_error" if rng.random() < 0.8 else "auth_approved", at, **kw)
            )
    return events


def _time(e: dict[str, Any]) -> str:
    return str(e["event_time"])


def _seconds(e: dict[str, Any]) -> float:
    return datetime.fromisoformat(_time(e)).timestamp()


def arrival_order(events: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Shuffle so that every event arrives at most `allowed_lateness` behind the newest one."""
    rng = random.Random(seed)
    keyed = [(_seconds(e) + LATENESS * rng.random(), n) for n, e in enumerate(events)]
    return [events[n] for _, n in sorted(keyed)]


def replay(events: list[dict[str, Any]], batch_size: int = 1000) -> tuple[dict[str, Alert], Scorer]:
    scorer = Scorer(Policy())
    sink, _ = replay_messages(encode(events), scorer, batch_size)
    return final_states(sink.alerts), scorer


@given(
    seed=st.integers(0, 2**32),
    attempts=st.integers(1, 60),
    shuffle=st.integers(0, 2**32),
    batch=st.integers(1, 64),
)
def test_any_order_within_the_lateness_gives_the_sorted_streams_alerts(
    seed: int, attempts: int, shuffle: int, batch: int
) -> None:
    events = random_stream(seed, attempts)
    in_order, _ = replay(sorted(events, key=_time))
    shuffled, scorer = replay(arrival_order(events, shuffle), batch)
    assert scorer.late == 0
    assert shuffled == in_order


@given(
    seed=st.integers(0, 2**32),
    attempts=st.integers(1, 60),
    copies=st.integers(1, 30),
    where=st.integers(0, 2**32),
)
def test_a_redelivered_event_never_changes_the_result(
    seed: int, attempts: int, copies: int, where: int
) -> None:
    events = arrival_order(random_stream(seed, attempts), seed)
    rng = random.Random(where)
    redelivered = list(events)
    for _ in range(copies):
        # A copy arrives up to 50 messages later, within the dedup horizon (1 h) of the original.
        i = rng.randrange(len(events))
        j = i + 1
        while (
            j < len(redelivered)
            and j < i + 50
            and _seconds(redelivered[j]) - _seconds(events[i]) < 1800
        ):
            j += 1
        redelivered.insert(j, events[i])
    original, _ = replay(events)
    again, scorer = replay(redelivered, batch_size=rng.randrange(1, 100))
    assert scorer.duplicates == copies
    assert again == original


def test_the_random_world_exercises_every_rule_detector() -> None:
    """Guards the two properties above against a generator that stopped producing incidents."""
    detectors = set()
    for seed in range(20):
        alerts, _ = replay(sorted(random_stream(seed, 60), key=_time))
        detectors |= {a.detector for a in alerts.values()}
    assert detectors >= {
        "failed_then_debited",
        "duplicate_debit",
        "missing_reversal",
        "small_amount_burst",
        "terminal_failure_spike",
        "large_amount",
    }
