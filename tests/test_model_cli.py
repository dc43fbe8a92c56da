"""`posmon train`, `posmon evaluate` and the model flags of `posmon replay`, through the command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest

from monitor.cli.anomaly import DEFAULT_MODEL
from monitor.cli.main import main
from monitor.scoring.model import load_model
from monitor.simulation.simulator import SimulationSpec, write_simulation


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("model-cli")
    path = root / "events.jsonl"
    write_simulation(SimulationSpec(hours=30, seed=21, merchants=15), path, root / "labels.jsonl")
    return path


def test_train_then_evaluate_then_replay_with_the_new_model(
    events: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir = tmp_path / "model"
    assert main(["train", str(events), "--out", str(model_dir), "--alert-rate", "0.002"]) == 0
    model = load_model(model_dir)
    assert model.card.alert_rate == 0.002 and model.card.training.files == ["events.jsonl"]
    assert f"model {model.version}" in capsys.readouterr().out
    out = tmp_path / "evaluation"
    labels = events.with_name("labels.jsonl")
    argv = ["evaluate", str(events), "--labels", str(labels), "--model", str(model_dir)]
    assert main([*argv, "--out", str(out)]) == 0
    figures = json.loads((out / "evaluation.json").read_text())
    assert figures["model_version"] == model.version and figures["positives"] > 0
    assert (out / "index.html").is_file() and list(out.glob("*.png"))
    # Champion (the shipped model) and challenger (the new one) side by side on one page.
    both = tmp_path / "both"
    argv = ["evaluate", str(events), "--labels", str(labels), "--challenger", str(model_dir)]
    assert main([*argv, "--out", str(both)]) == 0
    side_by_side = json.loads((both / "evaluation.json").read_text())
    assert side_by_side["model_version"] == load_model(DEFAULT_MODEL).version
    assert side_by_side["challenger_version"] == model.version
    assert side_by_side["challenger"] == figures["model"]  # the same model, the same figures
    page = (both / "index.html").read_text()
    assert "<th>champion</th><th>challenger</th><th>baseline</th>" in page
    alerts, features = tmp_path / "alerts.jsonl", tmp_path / "features"
    replay = ["replay", str(events), "--alerts", str(alerts), "--model", str(model_dir)]
    assert main([*replay, "--feature-log", str(features), "--quiet"]) == 0
    table = ds.dataset(features, partitioning="hive").to_table()
    assert table.num_rows == figures["rows"]
    assert set(table.column("model_version").to_pylist()) == {model.version}
    outliers = [json.loads(line) for line in alerts.read_text().splitlines()]
    assert {a["model_version"] for a in outliers if a["detector"] == "model_outlier"} <= {
        model.version
    }


def test_no_model_means_no_model_alerts(events: Path, tmp_path: Path) -> None:
    alerts = tmp_path / "alerts.jsonl"
    argv = ["replay", str(events), "--alerts", str(alerts), "--no-model", "--quiet"]
    assert main(argv) == 0
    assert '"model_outlier"' not in alerts.read_text()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "missing.jsonl", "--out", "m"], "no such events file"),
        (["train", "{events}", "--out", "m", "--alert-rate", "2"], "--alert-rate"),
        (
            ["replay", "{events}", "--alerts", "a.jsonl", "--model", "nowhere"],
            "cannot use the model",
        ),
        (
            ["evaluate", "{events}", "--labels", "{events}", "--out", "e", "--model", "nowhere"],
            "model",
        ),
    ],
)
def test_mistakes_are_one_line_and_exit_2(
    events: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(events.parent)
    assert main([a.replace("{events}", str(events)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("posmon: error: ") and message in err and err.count("\n") == 1


@pytest.mark.soak
def test_make_model_rebuilds_the_shipped_model_byte_for_byte(tmp_path: Path) -> None:
    """What `make model` runs gives the shipped files exactly (about a minute: `make soak`)."""
    events = tmp_path / "train.jsonl"
    assert main(["simulate", "--out", str(events), "--hours", "336", "--seed", "101"]) == 0
    assert main(["train", str(events), "--out", str(tmp_path / "model"), "--seed", "0"]) == 0
    for name in ("card.json", "forest.npz"):
        assert (tmp_path / "model" / name).read_bytes() == (DEFAULT_MODEL / name).read_bytes()


def test_train_refuses_a_challenger_worse_than_the_champion_on_the_held_back_days(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Labels chosen so that the champion ranks the held-back anomalies first: the challenger
    is refused (nothing written) unless forced; labels the challenger ranks first: it is
    written, with the held-back figures in its card."""
    from models.rows import replay_rows
    from models.train import held_back_split
    from monitor.scoring.policy import Policy

    events = tmp_path / "events.jsonl"
    write_simulation(SimulationSpec(hours=96, seed=23, merchants=8), events, tmp_path / "l.jsonl")
    rows = replay_rows([events], Policy()).rows
    judged = held_back_split(rows, held_back_days=1, gap_days=0.5)[1]
    champion = load_model(DEFAULT_MODEL)

    def labels_for(scores: object, name: str) -> Path:
        top = np.argsort(np.asarray(scores))[-5:]
        path = tmp_path / name
        lines = [json.dumps({"event_id": judged.event_id[i], "label": 1}) for i in top]
        path.write_text("\n".join(lines) + "\n")
        return path

    train = ["train", str(events), "--held-back-days", "1", "--gap-days", "0.5", "--no-supervised"]
    champions = labels_for(champion.score(judged.features), "champion.jsonl")
    refused = tmp_path / "refused"
    assert main([*train, "--labels", str(champions), "--out", str(refused)]) == 2
    assert "worse than the champion" in capsys.readouterr().err and not refused.exists()
    forced = tmp_path / "forced"
    assert main([*train, "--labels", str(champions), "--out", str(forced), "--force"]) == 0
    challenger = load_model(forced)
    theirs, ours = (
        challenger.card.evaluation["champion_average_precision"],
        challenger.card.evaluation["held_back_average_precision"],
    )
    assert theirs is not None and ours is not None and theirs > ours
    challengers = labels_for(challenger.score(judged.features), "challenger.jsonl")
    written = tmp_path / "written"
    assert main([*train, "--labels", str(challengers), "--out", str(written)]) == 0
    card = load_model(written).card
    # The same challenger (same rows, same seed), judged on labels it ranks first.
    ours, theirs = (
        card.evaluation["held_back_average_precision"],
        card.evaluation["champion_average_precision"],
    )
    assert ours is not None and theirs is not None and ours >= theirs
    assert card.training.rows < len(rows) - len(judged)  # fitted before the gap only


def test_train_with_labels_fits_a_supervised_stage_that_scores_as_its_arrays(
    tmp_path: Path,
) -> None:
    """Labels known an hour after each anomaly: the written model has a supervised stage; its
    score is the calibrated probability over the features and the forests' score; a replay
    with it writes both scores to the feature log."""
    from models.rows import replay_rows
    from monitor.scoring.model import STAGE_INPUTS, stage_score
    from monitor.scoring.policy import Policy

    events = tmp_path / "events.jsonl"
    labels = tmp_path / "labels.jsonl"
    write_simulation(SimulationSpec(hours=96, seed=23, merchants=8), events, labels)
    soon = tmp_path / "soon.jsonl"
    rows = replay_rows([events], Policy()).rows
    time_of = dict(zip(rows.event_id, rows.event_time_us.tolist(), strict=True))
    lines = []
    for line in labels.read_text().splitlines():
        record = json.loads(line)
        if record.get("label") == 1 and record["event_id"] in time_of:
            t = time_of[record["event_id"]] + 3_600_000_000
            known = np.datetime_as_string(np.datetime64(t, "us"), unit="us") + "Z"
            lines.append(json.dumps({**record, "known_at": known}))
    soon.write_text("\n".join(lines) + "\n")
    out = tmp_path / "supervised"
    train = ["train", str(events), "--labels", str(soon), "--out", str(out), "--force"]
    assert main([*train, "--held-back-days", "1", "--gap-days", "0.1"]) == 0
    model = load_model(out)
    card = model.card
    assert model.stage is not None and card.supervised is not None
    assert card.version.startswith("supervised-") and card.supervised.calibrated
    assert card.supervised.features == list(STAGE_INPUTS)
    assert int(card.supervised.labels["positives"] or 0) > 0
    x = rows.features[:500]
    score, forests = model.scores(x)
    inputs = np.column_stack((x.astype(np.float64), forests))
    np.testing.assert_array_equal(score, stage_score(model.stage, inputs))
    calibrated = model.stage.score(inputs)  # scikit-learn's calibrated probability (parity tested)
    assert np.max(np.abs(score - calibrated)) <= 1e-6
    assert np.all((score >= 0) & (score <= 1))
    log = tmp_path / "log"
    replayed = ["replay", str(events), "--alerts", str(tmp_path / "a.jsonl"), "--quiet"]
    assert (
        main([*replayed, "--model", str(out), "--labels", str(soon), "--feature-log", str(log)])
        == 0
    )
    table = ds.dataset(log, partitioning="hive").to_table()
    assert table.num_rows == len(rows)
    assert table.column("score").to_pylist() != table.column("unsupervised_score").to_pylist()
