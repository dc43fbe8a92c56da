"""The two stages of the partitioned design give the single scorer's alerts, batch by batch.

A "merchant" stage holds every event of its partitions and runs the rules whose keys live in one
merchant's events; a "card" stage is given only the events its detectors take
(`Scorer.wanted`: small attempts for card testing, requests and outcomes for the model) and
computes its watermark from the merchant stages' frontiers (`Scorer.frontiers`, `follow`).
Together, after every batch, they emit exactly the versions one scorer holding every event
emits: the same ids, contents and revisions (docs/streaming.md, "Scale-out"). With the events
split into partitions by the Kafka partitioner and the partitions among several merchant
members, the card stage's watermark and card-level alerts are still the single monitor's.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.partitioner.default import murmur2  # type: ignore[import-untyped]

from monitor.cli.anomaly import DEFAULT_MODEL
from monitor.cli.main import main
from monitor.core.alerts import Alert
from monitor.core.events import Event, decode
from monitor.scoring.detectors.small_amount_burst import Settings as SmallAmountBurst
from monitor.scoring.model import Model, ModelSlot, load_model
from monitor.scoring.policy import Detectors, Policy
from monitor.scoring.scorer import Scorer
from tests.builders import encode, event
from tests.test_properties import arrival_order, random_stream

TERMINAL_RULE = Policy(
    detectors=Detectors(small_amount_burst=SmallAmountBurst(terminal_min_attempts=4))
)


def _events(messages: list[bytes]) -> list[Event]:
    decoded = [decode(m) for m in messages]
    return [e for e in decoded if type(e) is Event]


def _wants(scorer: Scorer, ev: Event) -> bool:
    return any(low <= ev.amount_minor <= high for low, high in scorer.wanted().get(ev.kind, ()))


def _batches(events: list[Event], size: int) -> list[list[Event]]:
    return [events[i : i + size] for i in range(0, len(events), size)] or [[]]


def _emitted(scorer: Scorer) -> dict[str, Alert]:
    alerts, _ = scorer.take_alerts()
    return {a.alert_id: a for a in alerts}


def staged_and_single(
    events: list[Event], size: int, policy: Policy, model: Model | None = None
) -> tuple[list[dict[str, Alert]], list[dict[str, Alert]]]:
    """The versions emitted after each batch: by the merchant and card stages together, and by
    one scorer."""
    single = Scorer(policy, None if model is None else ModelSlot(live=model))
    merchant = Scorer(policy, stage="merchant")
    card = Scorer(policy, None if model is None else ModelSlot(live=model), stage="card")
    together, alone = [], []
    batches = _batches(events, size)
    for n, chunk in enumerate(batches):
        closing = n == len(batches) - 1
        single.process_many(chunk)
        merchant.process_many(chunk)
        card.process_many([ev for ev in chunk if _wants(card, ev)])
        single.advance(closing=closing)
        merchant.advance(closing=closing)
        card.follow(merchant.frontiers(), closing=closing)
        emitted = _emitted(merchant)
        from_card = _emitted(card)
        assert not emitted.keys() & from_card.keys()  # an alert belongs to one stage
        together.append({**emitted, **from_card})
        alone.append(_emitted(single))
    return together, alone


def test_each_detector_runs_in_exactly_one_stage_except_the_two_scopes_of_card_testing() -> None:
    names = {
        stage: sorted(type(d).__name__ for d in Scorer(TERMINAL_RULE, stage=stage).detectors)
        for stage in ("all", "merchant", "card")
    }
    assert names["card"] == ["SmallAmountBurst"]  # no model loaded: model_outlier is off
    assert sorted(names["merchant"] + names["card"]) == sorted([*names["all"], "SmallAmountBurst"])
    merchant_only = Scorer(Policy(), stage="merchant").detectors
    assert "SmallAmountBurst" not in {type(d).__name__ for d in merchant_only}


def test_the_card_stage_takes_small_requests_only_without_a_model() -> None:
    card = Scorer(Policy(), stage="card")
    assert card.wanted() == {"auth_request": ((0, 500),)}
    assert Scorer(Policy(), stage="merchant").wanted()["auth_request"] == ((1_000_000, math.inf),)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    attempts=st.integers(1, 60),
    shuffle=st.integers(0, 2**32),
    size=st.integers(1, 64),
    terminal_rule=st.booleans(),
)
def test_the_stages_emit_the_single_scorers_versions_batch_by_batch(
    seed: int, attempts: int, shuffle: int, size: int, terminal_rule: bool
) -> None:
    stream: list[dict[str, Any]] = arrival_order(random_stream(seed, attempts), shuffle)
    policy = TERMINAL_RULE if terminal_rule else Policy()
    together, alone = staged_and_single(_events(encode(stream)), size, policy)
    assert together == alone


def test_with_the_shipped_model_the_card_stage_scores_as_the_single_scorer(tmp_path: Path) -> None:
    """A simulated day with the shipped model: the card stage computes every feature from the
    requests and outcomes it is given, and its outliers are the single scorer's."""
    path = tmp_path / "events.jsonl"
    assert main(["simulate", "--out", str(path), "--hours", "26", "--seed", "7"]) == 0
    model = load_model(DEFAULT_MODEL)
    events = _events(path.read_bytes().splitlines())
    card = Scorer(Policy(), ModelSlot(live=model), stage="card")
    share = sum(_wants(card, ev) for ev in events) / len(events)
    together, alone = staged_and_single(events, 1000, Policy(), model)
    assert together == alone
    outliers = {i for batch in alone for i, a in batch.items() if a.detector == "model_outlier"}
    assert outliers  # the model found something to compare
    assert 0.5 < share < 0.8  # requests and outcomes: what the card stage is given


# --- several merchant members, one card stage -----------------------------------------------------

MERCHANTS = [f"M-{i:02d}" for i in range(12)]


def busy_world(seed: int, minutes: int) -> list[dict[str, Any]]:
    """Every merchant busy (a purchase every few seconds somewhere, so no partition goes quiet
    for `max_future_skew`), cards that pay across merchants, and card-testing runs of small
    amounts spread over merchants of different partitions."""
    rng = random.Random(seed)
    cards = [f"tok_{seed}_{i:03d}" for i in range(40)]
    events: list[dict[str, Any]] = []
    for n in range(minutes * 20):
        at = n * 3 + rng.uniform(0, 3)
        merchant = rng.choice(MERCHANTS)
        kw: dict[str, Any] = {
            "ref": f"P{seed}-{n}",
            "card": rng.choice(cards),
            "terminal": f"T-{merchant}-{rng.randrange(2)}",
            "merchant": merchant,
            "amount": rng.choice([350, 2500, 4200, 9900]),
        }
        events.append(event("auth_request", at, **kw))
        events.append(event(rng.choice(["auth_approved", "auth_declined"]), at + 1, **kw))
    for run in range(rng.randrange(1, 4)):  # card testing across merchants
        card, start = rng.choice(cards), rng.uniform(0, minutes * 60 - 600)
        for k in range(rng.randrange(4, 9)):
            merchant = rng.choice(MERCHANTS)
            kw = {
                "ref": f"S{seed}-{run}-{k}",
                "card": card,
                "terminal": f"T-{merchant}-0",
                "merchant": merchant,
                "amount": rng.randrange(50, 500),
            }
            events.append(event("auth_request", start + k * 40, **kw))
    return events


def _partition(ev: Event, partitions: int) -> int:
    """The Kafka default partitioner's choice for the event's key, its merchant."""
    return _partition_of(ev.merchant_id, partitions)


def _card_level(alerts: dict[str, Alert]) -> dict[str, Alert]:
    return {
        i: a
        for i, a in alerts.items()
        if a.detector == "model_outlier" or a.details.get("scope") == "card"
    }


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    partitions=st.integers(2, 6),
    members=st.integers(1, 4),
    assignment=st.integers(0, 2**32),
    size=st.integers(1, 50),
)
def test_merchant_members_frontiers_give_the_card_stage_the_single_monitors_watermark(
    seed: int, partitions: int, members: int, assignment: int, size: int
) -> None:
    """Each round every partition delivers a chunk: one monitor holding every partition scores
    them all; each merchant member scores its own partitions and gives its frontiers to the card
    stage. The card stage's watermark and card-level alerts equal the single monitor's."""
    stream = arrival_order(busy_world(seed, minutes=40), seed)
    by_partition: dict[int, list[Event]] = {p: [] for p in range(partitions)}
    for ev in _events(encode(stream)):
        by_partition[_partition(ev, partitions)].append(ev)
    owner = {p: random.Random(assignment).randrange(members) for p in range(partitions)}
    single = Scorer(Policy())
    merchants = [Scorer(Policy(), stage="merchant") for _ in range(members)]
    card = Scorer(Policy(), stage="card")
    every = set(range(partitions))
    held = [{p for p in every if owner[p] == m} for m in range(members)]
    rounds = max(len(events) for events in by_partition.values()) // size + 1
    for n in range(rounds):
        closing = n == rounds - 1
        for p, events in by_partition.items():
            chunk = events[n * size : (n + 1) * size]
            single.use_partition(p, every)
            single.process_many(chunk)
            merchants[owner[p]].use_partition(p, held[owner[p]])
            merchants[owner[p]].process_many(chunk)
            card.process_many([ev for ev in chunk if _wants(card, ev)])
        single.advance(every, closing=closing)
        markers: dict[int, int] = {}
        for member, partitions_held in zip(merchants, held, strict=True):
            member.advance(partitions_held or None, closing=closing)
            markers.update(member.frontiers())
            member.take_alerts()
        card.follow(markers, every, closing=closing)
        assert card.watermark.value == single.watermark.value
        assert _emitted(card) == _card_level(_emitted(single))


def test_the_busy_world_has_card_testing_across_partitions() -> None:
    """What the property compares is there: card-testing bursts whose attempts fall on merchants
    of different partitions, caught by the single monitor."""
    spanning = 0
    for seed in range(5):
        events = _events(encode(busy_world(seed, minutes=40)))
        single = Scorer(Policy())
        single.process_many(sorted(events, key=lambda ev: (ev.t, ev.event_id)))
        single.close()
        alerts, _ = single.take_alerts()
        for alert in alerts:
            if alert.details.get("scope") == "card":
                merchants = {ev.merchant_id for ev in events if ev.event_id in alert.event_ids}
                spanning += len({_partition_of(m, 4) for m in merchants}) > 1
    assert spanning >= 3


def _partition_of(merchant: str, partitions: int) -> int:
    return int(murmur2(merchant.encode()) & 0x7FFFFFFF) % partitions
