"""The retraining notebooks (models/notebooks) run headless from start to end on a small
simulated feature log, and are stored as they should be: valid, without outputs.

The data: a day of simulated traffic replayed through `posmon replay --feature-log --labels` (the
shipped model scores it), with the labels file the simulator writes, its verdicts known three
hours after the attempt instead of a week (a day holds no label known a week later: the labels'
delay is the gap 03 leaves between fitting and judging, and the supervised stage learns the
labels known by the end of the fit). The notebooks run in order in one working folder (04
publishes what 03 retrained, if the gate lets it) on the `python3` kernel, which is this Python:
the notebooks import the `models` and `monitor` under test.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta
from pathlib import Path

import nbformat
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from models import workflow
from models.labels import read_labels
from monitor.cli.main import main
from monitor.scoring.model import load_model
from monitor.simulation.anomalies import KNOWN_AFTER_US
from monitor.simulation.simulator import SimulationSpec, write_simulation

NOTEBOOKS = sorted(
    (Path(__file__).resolve().parent.parent / "models" / "notebooks").glob("*.ipynb")
)
CELL_TIMEOUT = 120  # seconds a cell may take (each takes a few on this machine)
LABEL_DELAY_US = 3 * 3_600_000_000  # the test's labels are known 3 h after the attempt


def read(path: Path) -> nbformat.NotebookNode:
    notebook: nbformat.NotebookNode = nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]
    return notebook


def test_the_four_notebooks_are_there() -> None:
    assert [p.name for p in NOTEBOOKS] == [
        "01-explore.ipynb",
        "02-labels-and-budget.ipynb",
        "03-retrain-and-compare.ipynb",
        "04-publish.ipynb",
    ]


def test_the_kernel_is_this_python() -> None:
    command = KernelManager(kernel_name="python3").format_kernel_cmd()
    assert command[0] == sys.executable


def sooner(line: str) -> str:
    """A line of the simulator's labels file, a label's `known_at` moved to LABEL_DELAY_US
    after its attempt (the simulator's come KNOWN_AFTER_US after it)."""
    record = json.loads(line)
    if "label" not in record or record.get("known_at") is None:
        return line
    known = datetime.fromisoformat(record["known_at"])
    known -= timedelta(microseconds=KNOWN_AFTER_US - LABEL_DELAY_US)
    record["known_at"] = known.isoformat().replace("+00:00", "Z")
    return json.dumps(record) + "\n"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("notebook-inputs")
    events, simulated = root / "events.jsonl", root / "simulated.labels.jsonl"
    write_simulation(SimulationSpec(hours=26, seed=5, merchants=20), events, simulated)
    labels = root / "events.labels.jsonl"
    labels.write_text("".join(map(sooner, simulated.read_text("utf-8").splitlines(True))), "utf-8")
    alerts, features = root / "alerts.jsonl", root / "features"
    argv = ["replay", str(events), "--alerts", str(alerts), "--feature-log", str(features)]
    argv += ["--labels", str(labels)]
    assert main([*argv, "--quiet"]) == 0
    return {
        "MODELS_FEATURE_LOG": str(features),
        "MODELS_LABELS": str(labels),
        "MODELS_ALERTS": str(alerts),
    }


def test_every_notebook_runs(
    inputs: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work, published = tmp_path / "work", tmp_path / "published"
    for name, value in {
        **inputs,
        "MODELS_WORK": str(work),
        "MODELS_PUBLISH": str(published),
    }.items():
        monkeypatch.setenv(name, value)  # the kernel inherits this process's environment
    monkeypatch.delenv("MODELS_CHAMPION", raising=False)  # the shipped model
    # The kernel's connection files and IPython's history in the test's folder, not in $HOME.
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    printed: dict[str, str] = {}
    for path in NOTEBOOKS:
        notebook = read(path)
        client = NotebookClient(
            notebook,
            timeout=CELL_TIMEOUT,
            kernel_name="python3",
            resources={"metadata": {"path": str(cwd)}},
        )
        client.execute()  # raises CellExecutionError at a cell that fails
        errors = [
            output
            for cell in notebook.cells
            for output in cell.get("outputs", [])
            if output.get("output_type") == "error"
        ]
        assert errors == [], path.name
        printed[path.name] = "".join(
            output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", [])
        )
    assert list(cwd.iterdir()) == []  # every output went where MODELS_WORK and MODELS_PUBLISH say
    check_retrained(Path(inputs["MODELS_FEATURE_LOG"]), Path(inputs["MODELS_LABELS"]), work)
    # The gate in 04: the challenger is published when 03 found it at least as good as the
    # champion, and refused (nothing written, the refusal printed) when it found it worse.
    challenger = load_model(work / "challenger")
    comparison = workflow.read_comparison(work / "comparison")
    assert comparison is not None
    assert comparison.challenger.model_version == challenger.version
    if comparison.judgement.worse:
        assert not published.exists()
        assert f"challenger {challenger.version} not published: " in printed["04-publish.ipynb"]
    else:
        assert load_model(published).version == challenger.version
        assert f"model {challenger.version} published to" in printed["04-publish.ipynb"]


def check_retrained(features: Path, labels: Path, work: Path) -> None:
    """03's challenger: fitted with the supervised stage on the attempts before the gap, on the
    labels known by its end; both models judged on the judged period only."""
    rows = workflow.read_feature_log(features)
    start, end = int(rows.event_time_us.min()), int(rows.event_time_us.max())
    judged_from = end - round((end - start) / 3)  # the last third of the log
    fit_until = judged_from - LABEL_DELAY_US  # a gap as long as the labels' delay
    challenger = load_model(work / "challenger").card
    assert challenger.training.files == ["feature log"]
    fitted = rows.event_time_us < fit_until
    assert challenger.training.rows == int(fitted.sum())
    assert challenger.supervised is not None
    verdicts = read_labels(labels).values()
    known = {
        v.event_id
        for v in verdicts
        if v.label == 1 and v.known_at_us is not None and v.known_at_us <= fit_until
    }
    in_fit = sum(1 for e, f in zip(rows.event_id, fitted.tolist(), strict=True) if f and e in known)
    assert in_fit >= 3  # enough to fit and calibrate; the test data must keep it so
    assert challenger.supervised.labels["rows_labelled_1_known"] == in_fit
    judged = int((rows.event_time_us >= judged_from).sum())
    comparison = workflow.read_comparison(work / "comparison")
    assert comparison is not None
    assert comparison.champion.rows == comparison.challenger.rows == judged
    for role in ("champion", "challenger"):
        assert (work / "comparison" / role / "index.html").is_file()
    assert challenger.evaluation["held_back_rows"] == judged


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_stored_without_outputs(path: Path) -> None:
    notebook = read(path)
    nbformat.validate(notebook)
    assert notebook.nbformat == 4
    assert notebook.metadata.get("kernelspec", {}).get("name") == "python3"
    assert "widgets" not in notebook.metadata
    cells = notebook.cells
    assert cells[0].cell_type == "markdown"  # what the step is for
    code = [cell for cell in cells if cell.cell_type == "code"]
    assert code, "a notebook without code"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
        assert "widgets" not in cell.metadata
    first = code[0].source
    assert "MODELS_FEATURE_LOG" in first and "MODELS_LABELS" in first and "MODELS_WORK" in first
    # posmon reads POSMON_... variables as its settings: the notebooks' are MODELS_...
    assert "POSMON_" not in path.read_text(encoding="utf-8")
