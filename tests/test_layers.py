"""The layers of ARCHITECTURE.md are enforced: `lint-imports` (in `make lint`) passes on the
package as it is and fails on a copy with one forbidden import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "COLUMNS": "300"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "monitor", tmp_path / "monitor", ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _inject(module: Path, line: str) -> None:
    text = module.read_text()
    head, _, rest = text.partition("from __future__ import annotations\n")
    module.write_text(f"{head}from __future__ import annotations\n{line}\n{rest}")


def test_the_package_keeps_its_import_contracts(copy: Path) -> None:
    result = _lint(copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" in result.stdout and " 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("core/events.py", "import monitor.scoring.scorer", "Layers"),
        ("scoring/scorer.py", "import monitor.cli.settings", "Layers"),
        ("paging/dispatcher.py", "import monitor.channels.slack", "no HTTP"),
        ("scoring/state.py", "import kafka", "Only the streaming edge talks to Kafka"),
        ("streaming/sink.py", "import monitor.scoring.scorer", "never a loop's state"),
    ],
)
def test_a_forbidden_import_fails(copy: Path, module: str, line: str, contract: str) -> None:
    _inject(copy / "monitor" / module, line)
    result = _lint(copy)
    assert result.returncode != 0
    broken = [row for row in result.stdout.splitlines() if row.endswith("BROKEN")]
    assert any(contract in row for row in broken), result.stdout
