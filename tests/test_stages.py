"""The two stages of the partitioned design give the single scorer's alerts, batch by batch.

A "merchant" stage holds every event of its partitions and runs the rules whose keys live in one
merchant's events; a "card" stage is given only the events its detectors take
(`Scorer.wanted`: small attempts for card testing, requests and outcomes for the model) and
follows the merchant stage's watermark (`Scorer.advance_to`). Together, after every batch, they
emit exactly the versions one scorer holding every event emits: the same ids, contents and
revisions (docs/streaming.md, "Scale-out").
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.cli.anomaly import DEFAULT_MODEL
from monitor.cli.main import main
from monitor.core.alerts import Alert
from monitor.core.events import Event, decode
from monitor.scoring.detectors.small_amount_burst import Settings as SmallAmountBurst
from monitor.scoring.model import Model, ModelSlot, load_model
from monitor.scoring.policy import Detectors, Policy
from monitor.scoring.scorer import Scorer
from tests.builders import encode
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
        card.advance_to(merchant.watermark.value, closing=closing)
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
