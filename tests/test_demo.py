"""`posmon demo` as a person runs it: everything comes up, alerts appear, nothing is left behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _brokers_on(output: str) -> set[int]:
    """Pids of Tansu brokers still listening where the demo said its broker was (from /proc:
    no extra dependency; other brokers on the machine are not the demo's business)."""
    match = re.search(r"broker 127\.0\.0\.1:(\d+)", output)
    assert match, output
    listener = f"tcp://127.0.0.1:{match.group(1)}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"tansu" in cmdline and listener in cmdline:
                found.add(int(entry.name))
    return found


def _demo(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.Popen(
        [sys.executable, "-m", "monitor", "demo", "--out", str(tmp_path), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def test_demo_runs_end_to_end_and_cleans_up(tmp_path: Path) -> None:
    demo = _demo(tmp_path, "--duration", "6", "--rate", "1500")
    output, _ = demo.communicate(timeout=120)
    assert demo.returncode == 0, output
    assert "metrics on http://127.0.0.1:" in output
    assert "posmon demo: summary" in output
    alerts = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    detectors = {a["detector"] for a in alerts}
    assert {"failed_then_debited", "missing_reversal", "large_amount"} <= detectors
    pages = [
        json.loads(line) for line in (tmp_path / "notifications.jsonl").read_text().splitlines()
    ]
    paged = {alert_id for page in pages for alert_id in page["alert_ids"]}
    assert paged and paged <= {a["alert_id"] for a in alerts}  # the dispatcher delivered them
    # It ends with the page of `posmon report` over its alerts, and says where.
    page = tmp_path / "report" / "index.html"
    assert f"report (open in a browser): {page}\n" in output
    assert (tmp_path / "report" / "alerts_over_time.png").stat().st_size > 0
    assert "failed_then_debited" in page.read_text()
    assert _brokers_on(output) == set()  # no broker left behind


def test_ctrl_c_stops_everything(tmp_path: Path) -> None:
    demo = _demo(tmp_path, "--duration", "120", "--rate", "500")
    deadline = time.monotonic() + 60
    assert demo.stdout is not None
    head = []
    for line in demo.stdout:  # wait until the demo is up and producing
        head.append(line)
        if "Ctrl-C stops" in line or time.monotonic() > deadline:
            break
    time.sleep(3)
    os.killpg(demo.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
    output, _ = demo.communicate(timeout=60)
    output = "".join(head) + output
    assert demo.returncode == 0, output
    assert "posmon demo: summary" in output
    assert _brokers_on(output) == set()
