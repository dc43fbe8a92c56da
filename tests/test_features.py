"""The model's features: exact values on a small fixed stream, no look-ahead, bounded memory,
and the same rows for training (a replay) as for serving (any batch size)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.rows import concat, replay_rows, take
from monitor.core.scored import ScoredRows
from monitor.scoring.features import _PLACES, FEATURE_VERSION, FEATURES, FeatureState
from monitor.scoring.model import ModelSlot, load_model
from monitor.scoring.pipeline import MemorySink, MemorySource, Stats, run
from monitor.scoring.policy import Policy
from monitor.scoring.scorer import Scorer
from tests.builders import encode, event, tick

SHIPPED = Path(__file__).resolve().parent.parent / "monitor" / "data" / "model"
H = 3600.0


def rows_of(
    messages: list[bytes], *, batch_size: int = 1000, model: ModelSlot | None = None
) -> ScoredRows:
    slot = model or ModelSlot(keep_rows=True)
    scorer, parts = Scorer(Policy(), slot), []

    def keep(_batch: object, _seconds: float) -> None:
        parts.extend(slot.take_rows())

    run(MemorySource(messages, batch_size), MemorySink(), scorer, Stats(), on_batch=keep)
    parts.extend(slot.take_rows())

    return concat(parts)


def of_card(rows: ScoredRows, card: str) -> ScoredRows:
    """The rows of one card (the clock's ticks are requests too)."""
    return take(rows, np.asarray(rows.card_id) == card)


def column(rows: ScoredRows, name: str) -> list[float]:
    return [float(v) for v in rows.features[:, FEATURES.index(name)]]


def test_golden_vectors_of_a_small_stream() -> None:
    """Hand-computed values: a card pays at one terminal, again after 30 min, then at a new
    terminal of another merchant with 5 times its amount; one decline in between."""
    card = "tok_golden_01"
    stream = [
        event("auth_request", 0, ref="A", card=card, amount=1000, mcc="5411"),
        event("auth_declined", 1, ref="A", card=card, amount=1000, response_code="05"),
        tick(1799),
        event("auth_request", 1800, ref="B", card=card, amount=1000, mcc="5411"),
        event("auth_approved", 1801, ref="B", card=card, amount=1000, response_code="00"),
        tick(3599),
        event(
            "auth_request",
            3600,
            ref="C",
            card=card,
            amount=5000,
            terminal="T-0002",
            merchant="M-02",
            mcc="5999",
        ),
    ]
    rows = of_card(rows_of(encode(stream)), card)
    assert rows.feature_names == FEATURES and rows.feature_version == FEATURE_VERSION
    assert len(rows) == 3
    decay_half_hour = math.exp(-0.5)
    assert column(rows, "card_attempts_1h") == pytest.approx(
        [0.0, 1 * decay_half_hour, (1 * decay_half_hour + 1) * decay_half_hour], rel=1e-6
    )
    assert column(rows, "seconds_since_previous") == [30 * 86400.0, 1800.0, 1800.0]
    assert column(rows, "first_at_terminal") == [1.0, 0.0, 1.0]
    assert column(rows, "first_at_mcc") == [1.0, 0.0, 1.0]
    assert column(rows, "card_terminals_1h") == [0.0, 1.0, 1.0]
    assert column(rows, "card_merchants_24h") == [0.0, 1.0, 1.0]
    assert column(rows, "amount_minor") == [1000.0, 1000.0, 5000.0]
    # The 30-day mean of two 1000s is 1000 whatever the decay: the third pays 5 times it.
    assert column(rows, "amount_ratio_30d") == pytest.approx([1.0, 1.0, 5.0], rel=1e-6)
    # One decline of two outcomes, 7-day decay over an hour: about 1 / (2 + 1).
    assert column(rows, "card_decline_ratio")[2] == pytest.approx(1 / 3, rel=1e-2)
    assert column(rows, "card_decline_ratio")[1] == pytest.approx(1 / 2, rel=1e-2)
    assert column(rows, "terminal_cards_1h") == [0.0, 1.0, 0.0]
    # 12:00 UTC on a Monday (2026-11-02): the hour's angle is pi, not a weekend.
    assert column(rows, "hour_cos")[0] == pytest.approx(-1.0, abs=1e-6)
    assert column(rows, "weekend") == [0.0, 0.0, 0.0]


def test_robust_z_needs_three_amounts_and_is_capped() -> None:
    card = "tok_golden_02"
    amounts = [1000, 1100, 900, 1000, 100_000]
    stream = [
        event("auth_request", 60 * i, ref=f"R{i}", card=card, amount=a)
        for i, a in enumerate(amounts)
    ]
    z = column(rows_of(encode(stream)), "amount_robust_z")
    assert z[:3] == [0.0, 0.0, 0.0]
    assert z[4] == 50.0  # far beyond the cap


@st.composite
def streams(draw: st.DrawFn) -> list[dict[str, object]]:
    n = draw(st.integers(min_value=1, max_value=40))
    kinds = st.sampled_from(
        ["auth_request", "auth_request", "auth_approved", "auth_declined", "network_error"]
    )
    out, at = [], 0.0
    for i in range(n):
        at += draw(st.floats(min_value=0.0, max_value=500.0))  # below the bad-clock skew
        out.append(
            event(
                draw(kinds),
                at,
                ref=f"R{i}",
                card=f"tok_prop_{draw(st.integers(0, 3)):04d}",
                terminal=f"T-{draw(st.integers(0, 3)):04d}",
                merchant=f"M-{draw(st.integers(0, 2)):02d}",
                amount=draw(st.integers(1, 100_000)),
                mcc=draw(st.sampled_from(["5411", "5999", "5812"])),
            )
        )
    return out


@settings(max_examples=40, deadline=None)
@given(streams(), streams(), st.sampled_from([1, 3, 1000]))
def test_a_feature_never_changes_when_later_events_are_appended(
    first: list[dict[str, object]], later: list[dict[str, object]], batch_size: int
) -> None:
    """Appending events later in event time never changes the rows of the events before."""
    last = max(str(e["event_time"]) for e in first)
    appended = [e for e in later if str(e["event_time"]) > last]
    before = rows_of(encode(first), batch_size=batch_size)
    after = rows_of(encode(first + appended), batch_size=batch_size)
    n = len(before)
    assert after.event_id[:n] == before.event_id
    np.testing.assert_array_equal(after.features[:n], before.features)


def test_training_rows_equal_the_serving_rows(tmp_path: Path) -> None:
    """`posmon train`'s replay and the scorer at any batch size compute the same rows; the
    served scores are the model's scores of those rows."""
    from monitor.simulation.simulator import SimulationSpec, write_simulation

    events = tmp_path / "events.jsonl"
    write_simulation(SimulationSpec(hours=3, seed=3), events, tmp_path / "labels.jsonl")
    trained = replay_rows([events], Policy())
    model = load_model(SHIPPED)
    served = rows_of(
        events.read_bytes().splitlines(), batch_size=37, model=ModelSlot(live=model, keep_rows=True)
    )
    assert served.event_id == trained.rows.event_id
    np.testing.assert_array_equal(served.features, trained.rows.features)
    assert served.score is not None and served.model_version == model.version
    np.testing.assert_allclose(served.score, model.score(trained.rows.features), rtol=0, atol=1e-12)


def test_memory_per_card_is_bounded() -> None:
    """A card paying at ever new terminals keeps at most `_PLACES` of them."""
    state = FeatureState(cap=1000)
    for i in range(10 * _PLACES):
        from monitor.core.events import Event

        state.request(
            Event(
                f"e{i}",
                1_000_000 * i,
                "auth_request",
                f"T{i}",
                f"M{i}",
                "tok_many",
                "R",
                100,
                "EUR",
                None,
                f"{i % 9000 + 1000}",
            )
        )
    card = state.cards.get("tok_many")
    assert card is not None
    assert len(card.terminals) == len(card.merchants) == len(card.mccs) == _PLACES
    assert len(card.amounts) <= 16
