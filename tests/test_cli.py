"""The `posmon` command as a person meets it: outputs, summaries, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from monitor.simulation.simulator import Simulation, SimulationSpec
from monitor.streaming.embedded import EmbeddedBroker
from monitor.streaming.topics import read_topic
from tests.broker import fresh_topic, kafka_settings
from tests.builders import encode, event

REPO = Path(__file__).resolve().parent.parent


def posmon(
    *args: str, env: dict[str, str] | None = None, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitor", *args],
        check=False,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_replay_from_stdin_writes_alerts_rejects_and_a_summary(tmp_path: Path) -> None:
    lines = [*encode([event("auth_request", 0, amount=2_000_000)]), b"{oops"]
    done = posmon(
        "replay", "-", "--alerts", str(tmp_path / "a.jsonl"), stdin=b"\n".join(lines) + b"\n"
    )
    assert done.returncode == 0, done.stderr
    (alert,) = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert alert["detector"] == "large_amount"
    (dead,) = [json.loads(line) for line in (tmp_path / "a.dlq.jsonl").read_text().splitlines()]
    assert dead["reason"] == "not_json"
    assert "rejected: not_json" in done.stdout
    assert "alerts: large_amount" in done.stdout


def test_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy:\n  detectors:\n    nope: {}\n")
    for args, env, message in [
        (
            ["replay", str(tmp_path / "missing.jsonl"), "--alerts", str(tmp_path / "a")],
            {},
            "no such input file",
        ),
        (
            ["replay", "-", "--alerts", str(tmp_path / "a"), "--config", str(bad)],
            {},
            "nope: unknown key",
        ),
        (["run"], {"POSMON_KAFKA__SESSION_TIMEOUT_MS": "soon"}, "kafka.session_timeout_ms"),
        (["run"], {"POSMON_METRICS__PORTT": "1"}, "metrics.portt: unknown key"),
    ]:
        done = posmon(*args, env=env, stdin=b"")
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_schemas_are_json_schema() -> None:
    for which in ("events", "alert"):
        done = posmon("schema", which)
        schema = json.loads(done.stdout)
        assert schema["type"] == "object"
        assert "event_id" in schema["properties"] or "alert_id" in schema["properties"]


def test_simulate_to_a_topic_keys_by_merchant(broker: EmbeddedBroker) -> None:
    topic = fresh_topic(broker, partitions=3)
    spec = SimulationSpec(seed=3, hours=0.5, merchants=3)
    expected = list(Simulation(spec).lines())
    done = posmon(
        "simulate", "--topic", topic, "--bootstrap-servers", broker.bootstrap_servers,
        "--hours", "0.5", "--merchants", "3", "--seed", "3", "--rate", "5000",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    records = read_topic(kafka_settings(broker, topic), topic)
    assert sorted(r.value for r in records) == sorted(expected)
    keyed = 0
    for r in records:
        try:
            body = json.loads(r.value)
        except ValueError:  # the simulator's malformed lines
            continue
        if isinstance(body, dict) and isinstance(body.get("merchant_id"), str):
            assert r.key == body["merchant_id"].encode()
            keyed += 1
    assert keyed > 0.9 * len(records)
