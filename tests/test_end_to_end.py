"""Simulate, replay with the real command, score against the labels.

Every labelled incident must be matched by exactly one alert (its last emitted version) and every
alert by exactly one incident: recall and precision 1.0 for each detector. Every malformed line
must reach the dead-letter file with its labelled reason, and no injected card number may appear
anywhere the monitor writes: alerts, dead letters, stdout, stderr.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from monitor.cli.settings import load_policy
from monitor.scoring.pipeline import replay_messages
from monitor.scoring.scorer import Scorer
from monitor.simulation.simulator import SimulationSpec, SimulationStats, write_simulation

REPO = Path(__file__).resolve().parent.parent
ENTITY_FIELDS = ("card_id", "terminal_id", "txn_ref")
Record = dict[str, Any]

SCENARIOS = {
    # a day and two hours: every detector, stale pre-authorisations included
    "day": SimulationSpec(seed=7, hours=26.0, merchants=12),
    # a quiet night at a bigger scale, another seed
    "night": SimulationSpec(
        seed=1234, hours=3.0, merchants=60, start=datetime(2026, 11, 6, 22, 30, tzinfo=UTC)
    ),
}


@dataclass
class Replayed:
    stats: SimulationStats
    lines: list[bytes]
    labels: list[Record]
    alerts: list[Record]  # every emitted version, in order
    dead_letters: list[Record]
    outputs: str  # alerts file, dead-letter file, stdout and stderr, as text


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def replayed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Replayed:
    spec = SCENARIOS[request.param]
    tmp = tmp_path_factory.mktemp(request.param)
    events, labels = tmp / "events.jsonl", tmp / "labels.jsonl"
    alerts, dlq = tmp / "alerts.jsonl", tmp / "dlq.jsonl"
    stats = write_simulation(spec, events, labels)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "monitor",
            "replay",
            *(str(events), "--alerts", str(alerts)),
            *("--dlq", str(dlq)),
        ],
        cwd=REPO,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    alerts_text, dlq_text = alerts.read_text("utf-8"), dlq.read_text("utf-8")
    return Replayed(
        stats=stats,
        lines=events.read_bytes().split(b"\n")[:-1],
        labels=[json.loads(x) for x in labels.read_text("utf-8").splitlines()],
        alerts=[json.loads(x) for x in alerts_text.splitlines()],
        dead_letters=[json.loads(x) for x in dlq_text.splitlines()],
        outputs="\n".join(
            (
                alerts_text,
                dlq_text,
                done.stdout.decode(errors="replace"),
                done.stderr.decode(errors="replace"),
            )
        ),
    )


def _field(alert: Record, name: str) -> object:
    return alert["details"].get("txn_ref") if name == "txn_ref" else alert.get(name)


def test_every_incident_is_one_alert_and_every_alert_one_incident(replayed: Replayed) -> None:
    # The last version of each id wins. The rules' alerts are matched to the incidents; the
    # anomaly model's are judged against the anomaly labels by `posmon evaluate`
    # (tests/test_evaluate.py, docs/model.md), not one by one.
    final = {a["alert_id"]: a for a in replayed.alerts if a["detector"] != "model_outlier"}
    incidents = [x for x in replayed.labels if x["type"] == "incident"]
    alert_hits: dict[str, list[int]] = defaultdict(list)
    problems: list[str] = []
    found: Counter[str] = Counter()
    for i, label in enumerate(incidents):
        fields = [f for f in ENTITY_FIELDS if f in label]
        hits = [
            aid
            for aid, alert in final.items()
            if alert["detector"] == label["detector"]
            and all(_field(alert, f) == label[f] for f in fields)
        ]
        for aid in hits:
            alert_hits[aid].append(i)
        if len(hits) != 1:
            problems.append(f"{len(hits)} alerts for {label}")
            continue
        found[label["detector"]] += 1
        alert = final[hits[0]]
        if "count" in label and alert["count"] != label["count"]:
            problems.append(f"count {alert['count']} != {label['count']} for {label}")
    for aid, alert in final.items():
        if len(alert_hits[aid]) != 1:
            problems.append(f"{len(alert_hits[aid])} labels for alert {json.dumps(alert)[:600]}")
    expected = Counter(x["detector"] for x in incidents)
    raised = Counter(a["detector"] for a in final.values())
    score = {
        d: (
            found[d] / expected[d] if expected[d] else 1.0,
            found[d] / raised[d] if raised[d] else 1.0,
        )
        for d in expected | raised
    }
    assert not problems, "\n".join(problems)
    assert score == {d: (1.0, 1.0) for d in score}
    assert set(expected) >= {
        "failed_then_debited", "duplicate_debit", "missing_reversal", "small_amount_burst",
        "terminal_failure_spike", "large_amount",
    }  # fmt: skip


def test_every_malformed_line_is_dead_lettered_with_its_reason(replayed: Replayed) -> None:
    malformed = sorted(
        (x for x in replayed.labels if x["type"] == "malformed"), key=lambda x: x["line"]
    )
    assert [d["reason"] for d in replayed.dead_letters] == [x["reason"] for x in malformed]
    for d in replayed.dead_letters:
        assert set(d) >= {"reason", "error", "raw"}


def test_no_injected_card_number_is_written_anywhere(replayed: Replayed) -> None:
    pans = [x for x in replayed.labels if x["type"] == "malformed" and x["reason"] == "pan"]
    assert pans
    for label in pans:
        written = json.loads(replayed.lines[label["line"] - 1])["card_id"]
        digits = written.replace(" ", "").replace("-", "")
        for form in {written, digits, written.replace(" ", "-"), written.replace("-", " ")}:
            assert form not in replayed.outputs, f"card number of line {label['line']} leaked"
        assert digits[-4:] in replayed.outputs  # masked, not dropped


def test_redeliveries_and_late_events_are_counted(replayed: Replayed) -> None:
    scorer = Scorer(load_policy(None))
    replay_messages(replayed.lines, scorer)
    assert scorer.duplicates == replayed.stats.redeliveries
    assert scorer.late == replayed.stats.late
