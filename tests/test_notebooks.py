"""The retraining notebooks (models/notebooks) run headless from start to end on a small
simulated feature log, and are stored as they should be: valid, without outputs.

The data: a day of simulated traffic replayed through `posmon replay --feature-log` (the shipped
model scores it), with the labels file the simulator writes. The notebooks run in order in one
working folder (04 publishes what 03 retrained) on the `python3` kernel, which is this Python:
the notebooks import the `models` and `monitor` under test.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from monitor.cli.main import main
from monitor.scoring.model import load_model
from monitor.simulation.simulator import SimulationSpec, write_simulation

NOTEBOOKS = sorted(
    (Path(__file__).resolve().parent.parent / "models" / "notebooks").glob("*.ipynb")
)
CELL_TIMEOUT = 120  # seconds a cell may take (each takes a few on this machine)


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


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("notebook-inputs")
    events, labels = root / "events.jsonl", root / "events.labels.jsonl"
    write_simulation(SimulationSpec(hours=26, seed=5, merchants=20), events, labels)
    alerts, features = root / "alerts.jsonl", root / "features"
    argv = ["replay", str(events), "--alerts", str(alerts), "--feature-log", str(features)]
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
    challenger = load_model(work / "challenger")
    model = load_model(published)
    assert model.version == challenger.version
    assert model.card.training.files == ["feature log"]
    for role in ("champion", "challenger"):
        assert (work / "comparison" / role / "index.html").is_file()
    assert list(cwd.iterdir()) == []  # every output went where MODELS_WORK and MODELS_PUBLISH say


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
