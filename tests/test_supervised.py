"""The supervised stage catches what the forests cannot: purchases at compromised terminals,
labelled a week late, on simulated traffic; its average precision is judged per anomaly kind
beside the forests' and the amount z-score's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from models.labels import Label, known_by, read_verdicts
from models.rows import replay_rows
from models.train import average_precision_by_kind, held_back_split, kind_weights, train
from monitor.core.scored import ScoredRows
from monitor.scoring.features import FEATURES
from monitor.scoring.model import Model
from monitor.scoring.policy import Policy
from monitor.simulation.simulator import SimulationSpec, write_simulation


def fit_supervised_stage(
    rows: ScoredRows, verdicts: list[Label], *, held_back_days: float, files: list[str]
) -> tuple[Model, ScoredRows]:
    """As `posmon train --labels`: the model fitted before a week's gap on the frauds known when
    the held-back days start (kinds balanced); and the held-back rows."""
    fit, judged = held_back_split(rows, held_back_days=held_back_days, gap_days=7)
    known = known_by(verdicts, int(judged.event_time_us.min()))
    fraud = [known[e] if e in known and known[e].label == 1 else None for e in fit.event_id]
    y = np.array([label is not None for label in fraud], np.int64)
    kinds = [None if label is None else label.kind for label in fraud]
    assert "compromised_terminal" in kinds and int(y.sum()) < len(y) / 5
    return train(fit, files=files, events=0, labels=y, kinds=kinds).model, judged


def fit_both(
    tmp_path: Path, spec: SimulationSpec, *, held_back_days: float
) -> tuple[Model, Model, ScoredRows, dict[str, str]]:
    """Simulate, replay with the labels (each from its known_at, a week after the purchase),
    fit the forests alone and with the supervised stage before the gap, on the labels known
    when the held-back days start; the held-back rows and the kind of each label 1."""
    events, labels = tmp_path / "events.jsonl", tmp_path / "labels.jsonl"
    write_simulation(spec, events, labels)
    verdicts = read_verdicts(labels)
    rows = replay_rows([events], Policy(), labels=verdicts).rows
    supervised, judged = fit_supervised_stage(
        rows, verdicts, held_back_days=held_back_days, files=["sim"]
    )
    fit = held_back_split(rows, held_back_days=held_back_days, gap_days=7)[0]
    forests = train(fit, files=["sim"], events=0)
    return supervised, forests.model, judged, kinds_of(verdicts)


def kinds_of(verdicts: list[Label]) -> dict[str, str]:
    return {v.event_id: v.kind or "" for v in verdicts if v.label == 1 and v.event_id is not None}


def baseline_by_kind(rows: ScoredRows, kinds: dict[str, str]) -> dict[str, float]:
    z = rows.features[:, FEATURES.index("amount_robust_z")]
    of = np.array([kinds.get(e, "") for e in rows.event_id])
    figures = {}
    for kind in sorted(set(of.tolist()) - {""}):
        chosen = (of == "") | (of == kind)
        figures[kind] = float(average_precision_score(of[chosen] == kind, z[chosen]))
    return figures


def test_the_supervised_stage_finds_compromised_terminals_the_forests_miss(
    tmp_path: Path,
) -> None:
    """Three weeks and a day of a small world (about 40 s): fit on the days before a week's
    gap, judged on the last four days (measured: 0.42 against the forests' 0.11 and the amount
    z-score's 0.25; in this small world the compromised terminals are 6 % of the purchases). The
    forests barely rank the compromised terminals' purchases above chance; the supervised stage,
    reading the terminals' known frauds, does."""
    spec = SimulationSpec(hours=24 * 24, seed=5, merchants=10)
    supervised, forests, judged, kinds = fit_both(tmp_path, spec, held_back_days=4)
    ours = average_precision_by_kind(supervised, judged, kinds)
    theirs = average_precision_by_kind(forests, judged, kinds)
    baseline = baseline_by_kind(judged, kinds)
    print(f"\naverage precision by kind: supervised {ours}, forests {theirs}, z {baseline}")
    assert ours["compromised_terminal"] > 0.3
    assert ours["compromised_terminal"] > 3 * theirs["compromised_terminal"]
    assert ours["compromised_terminal"] > baseline["compromised_terminal"] + 0.1
    # The features it learned from: the terminal's share of known frauds.
    column = FEATURES.index("terminal_fraud_share_7d")
    assert supervised.stage is not None and column in supervised.stage.columns


def test_kind_weights_balance_a_frequent_kind_against_rare_ones() -> None:
    labels = np.array([1] * 90 + [1] * 10 + [0] * 100)
    kinds = ["terminal"] * 90 + ["spree"] * 10 + [None] * 100
    w = kind_weights(labels, kinds)
    assert w[90] / w[0] == pytest.approx(3.0)  # sqrt(0.9 / 0.1)
    assert w[:100].sum() == pytest.approx(100) and set(w[100:].tolist()) == {1.0}


@pytest.mark.soak
def test_the_published_figures_of_docs_retrain(tmp_path: Path) -> None:
    """The measurement docs/retrain.md reports ("What to expect"; about 10 minutes): trained on
    five simulated weeks, judged on two others."""
    events, labels = tmp_path / "long.jsonl", tmp_path / "long.labels.jsonl"
    write_simulation(SimulationSpec(hours=840, seed=101), events, labels)
    verdicts = read_verdicts(labels)
    rows = replay_rows([events], Policy(), labels=verdicts).rows
    supervised, _ = fit_supervised_stage(rows, verdicts, held_back_days=7, files=["long.jsonl"])
    held = tmp_path / "eval.jsonl"
    write_simulation(SimulationSpec(hours=336, seed=202), held, tmp_path / "eval.labels.jsonl")
    eval_verdicts = read_verdicts(tmp_path / "eval.labels.jsonl")
    eval_rows = replay_rows([held], Policy(), labels=eval_verdicts).rows
    ours = average_precision_by_kind(supervised, eval_rows, kinds_of(eval_verdicts))
    assert ours["compromised_terminal"] == pytest.approx(0.369, abs=0.02)
    assert ours["distant_spree"] == pytest.approx(0.666, abs=0.02)
