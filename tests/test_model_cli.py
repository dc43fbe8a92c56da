"""`posmon train`, `posmon evaluate` and the model flags of `posmon replay`, through the command."""

from __future__ import annotations

import json
from pathlib import Path

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
