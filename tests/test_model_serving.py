"""Serving the model: the shadow never alerts, drift moves when the traffic moves, reasons name
what is unusual in words."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.rows import concat
from models.train import train
from monitor.cli.anomaly import DEFAULT_MODEL
from monitor.core.scored import ScoredRows
from monitor.scoring.features import FEATURES
from monitor.scoring.model import SCORE, Drift, Model, ModelSlot, load_model, psi
from monitor.scoring.pipeline import MemorySink, MemorySource, Stats, run
from monitor.scoring.policy import Policy
from monitor.scoring.reasons import reasons
from monitor.scoring.scorer import Scorer
from monitor.simulation.simulator import Simulation, SimulationSpec

LINES = list(Simulation(SimulationSpec(seed=5, hours=26.0, merchants=20)).lines())
H_US = 3_600_000_000


@pytest.fixture(scope="module")
def shipped() -> Model:
    return load_model(DEFAULT_MODEL)


def _eager(model: Model) -> Model:
    """Other forests (fitted on the replay itself, over every feature) with a threshold that
    flags far more attempts: its scores differ from the shipped model's."""
    rows = replay_rows_of(LINES)
    trained = train(
        rows, files=["lines"], events=len(LINES), alert_rate=0.05, groups={"all": FEATURES}
    )
    assert trained.model.threshold < model.threshold
    return trained.model


def replay_rows_of(lines: list[bytes]) -> ScoredRows:
    slot = ModelSlot(keep_rows=True)
    run(MemorySource(lines), MemorySink(), Scorer(Policy(), slot), Stats())
    return concat(slot.take_rows())


def _replay(slot: ModelSlot) -> MemorySink:
    sink = MemorySink()
    run(MemorySource(LINES), sink, Scorer(Policy(), slot), Stats())
    return sink


def test_the_shadow_is_scored_on_the_same_batches_and_never_alerts(shipped: Model) -> None:
    eager = _eager(shipped)
    alone = _replay(ModelSlot(live=shipped)).final_alerts()
    slot = ModelSlot(live=shipped, shadow=eager, keep_rows=True)
    both = _replay(slot).final_alerts()
    assert both == alone  # the shadow changes no alert
    outliers = [a for a in both.values() if a.detector == "model_outlier"]
    assert outliers and {a.model_version for a in outliers} == {shipped.version}
    rows = concat(slot.take_rows())
    assert rows.shadow_version == eager.version and rows.model_version == shipped.version
    assert rows.score is not None and rows.shadow_score is not None
    assert not np.array_equal(rows.shadow_score, rows.score)  # other forests
    # Live, it would have raised many more alerts than the shipped model.
    as_live = _replay(ModelSlot(live=eager)).final_alerts().values()
    assert sum(a.detector == "model_outlier" for a in as_live) > 3 * len(outliers)
    shadow_scored = sum(len(s) for s in slot.tally.shadow_scores)
    assert shadow_scored == len(rows) == sum(len(s) for s in slot.tally.scores)


def test_a_shadow_alone_scores_and_alerts_nothing(shipped: Model) -> None:
    slot = ModelSlot(shadow=_eager(shipped))
    alerts = _replay(slot).final_alerts()
    assert not [a for a in alerts.values() if a.detector == "model_outlier"]
    assert sum(len(s) for s in slot.tally.shadow_scores) > 1000


def test_drift_is_low_on_traffic_like_the_training_and_high_when_it_shifts(shipped: Model) -> None:
    slot = ModelSlot(live=shipped)
    _replay(slot)
    # Over a day (the default window) `weekend` is left out: a day holds no weekly cycle.
    assert set(slot.tally.psi) == {*FEATURES, SCORE} - {"weekend"}
    # Rows drawn from the training quantiles, feature by feature: no drift.
    rng = np.random.default_rng(0)
    like_training = np.column_stack(
        [
            np.interp(rng.uniform(size=20_000), np.linspace(0, 1, 101), shipped.card.quantiles[f])
            for f in FEATURES
        ]
    ).astype(np.float32)
    drift = Drift(shipped.card, window_us=24 * H_US)
    drift.add(0, like_training, shipped.score(like_training))
    calm = drift.psi()
    assert max(v for k, v in calm.items() if k != SCORE) < 0.1
    # Everyone at 02:00 UTC: the hour drifts far, in the next window.
    at_night = like_training.copy()
    at_night[:, FEATURES.index("hour_sin")] = 0.5
    at_night[:, FEATURES.index("hour_cos")] = 0.866
    drift.add(48 * H_US, at_night, shipped.score(at_night))  # the first slice has left the window
    assert drift.psi()["hour_cos"] > 0.25
    week = Drift(shipped.card, window_us=7 * 24 * H_US)
    week.add(0, like_training, shipped.score(like_training))
    assert "weekend" in week.psi()
    assert psi(np.array([10.0, 10.0]), [0.5, 0.5]) == pytest.approx(0.0)


def test_reasons_say_what_is_unusual_in_words(shipped: Model) -> None:
    row = np.array(shipped.card.parity[0].features, dtype=np.float32)
    row[FEATURES.index("card_terminals_1h")] = 6
    row[FEATURES.index("card_merchants_1h")] = 5
    row[FEATURES.index("amount_ratio_30d")] = 48  # the shipped model does not read amounts
    said = reasons(row, shipped.card, "EUR", 3)
    assert 1 <= len(said) <= 3
    assert "6 terminals in 1 h" in said and "5 merchants in 1 h" in said
    assert not any("amount" in reason for reason in said)  # only what the model reads
    row[FEATURES.index("hour_sin")], row[FEATURES.index("hour_cos")] = 0.5, 0.866  # 02:00 UTC
    assert any("02:00-02:59 UTC, a rare hour" in r for r in reasons(row, shipped.card, "EUR", 9))
    # Nothing unusual: still one reason, the most extreme.
    ordinary = np.array([np.median(q) for q in (shipped.card.quantiles[n] for n in FEATURES)])
    assert len(reasons(ordinary.astype(np.float32), shipped.card, "EUR", 3)) >= 1


def test_the_shipped_model_is_installed_with_the_package() -> None:
    assert Path(__file__).resolve().parent.parent / "monitor" / "data" / "model" == DEFAULT_MODEL
    assert {p.name for p in DEFAULT_MODEL.iterdir()} >= {"card.json", "forest.npz"}
