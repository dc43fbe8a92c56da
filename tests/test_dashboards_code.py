"""The committed dashboards (dashboards/*.json) are what their code (dashboards/generate.py,
with Grafana's SDK) writes: nobody edits the JSON by hand, and nobody forgets to regenerate it.

The generator runs as `make dashboards` runs it, in a process of its own, so the test sees the
same imports (dashboards/ on the path) and the same output.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = ROOT / "dashboards" / "generate.py"
REGENERATE = "make dashboards (or: python dashboards/generate.py), then commit dashboards/*.json"


def _check(hash_seed: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    return subprocess.run(
        [sys.executable, str(GENERATOR), "--check"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd=ROOT,
        env=env,
    )


@pytest.mark.parametrize("hash_seed", ["0", "1", "4242"])
def test_the_committed_dashboards_are_what_the_generator_writes(hash_seed: str) -> None:
    """Byte for byte, whatever the hash seed: the output does not depend on set or dict order."""
    result = _check(hash_seed)
    assert result.returncode == 0, (
        f"generate.py --check failed; if stale: {REGENERATE}\n{result.stderr}\n{result.stdout}"
    )
    assert not result.stdout, result.stdout


def test_both_dashboards_are_generated() -> None:
    """Every dashboard JSON has its code: the generator names each file it writes."""
    source = GENERATOR.read_text()
    for path in sorted((ROOT / "dashboards").glob("*.json")):
        assert f'"{path.name}"' in source, f"{path.name} is not written by {GENERATOR.name}"


def test_check_names_a_stale_file_and_shows_the_difference(tmp_path: Path) -> None:
    """On a copy: a panel title edited by hand in one file is found, and only that file."""
    for path in (ROOT / "dashboards").glob("*.*"):
        if path.suffix in {".py", ".json"}:
            (tmp_path / path.name).write_bytes(path.read_bytes())
    stale = tmp_path / "posmon-health.json"
    stale.write_text(stale.read_text().replace('"State sizes"', '"State sizes (edited)"'))
    result = subprocess.run(
        [sys.executable, str(tmp_path / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 1
    assert "stale: dashboards/posmon-health.json;" in result.stderr
    assert "make dashboards" in result.stderr
    assert '-      "title": "State sizes (edited)",' in result.stdout
    assert '+      "title": "State sizes",' in result.stdout
    assert "pos-risk-overview" not in result.stdout + result.stderr
