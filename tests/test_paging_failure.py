"""Paging under failure, on the real broker, with the real commands as subprocesses.

- A day of alerts put on the alerts topic at once, the pager down for the first seconds (a
  minute in `make soak`), `posmon dispatch` SIGKILLed twice: every alert reaches the pager and
  every offset of the alerts topic is committed.
- The shipped `config/dispatch.example.yaml` starts with its variables set; a missing secret
  is refused before any connection (one line, exit 2), by `posmon dispatch` and `posmon run`.
- The paging series exist from the start, at zero; `posmon run` whose dispatch loop dies says
  why and exits non-zero; `posmon demo` serves the paging series.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from monitor.core.alerts import Alert
from monitor.streaming.embedded import EmbeddedBroker
from monitor.streaming.settings import KafkaSettings
from monitor.streaming.sink import KafkaSink
from monitor.streaming.topics import committed_offsets, read_topic
from tests.broker import fresh_topic, kafka_settings, monitor_environ
from tests.fake_services import FakeService, pagerduty

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config" / "dispatch.example.yaml"
EXAMPLE_SECRETS = {
    "PD_RISK_KEY": "pd-risk-secret-0123",
    "PD_OPS_KEY": "pd-ops-secret-4567",
    "SLACK_RISK_URL": "https://hooks.slack.invalid/services/T0/B0/secret89",
}
ROUTING_KEY = "rk-paging-failure"


def _posmon(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "monitor", *args],
        cwd=REPO,
        env=env,
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        text=True,
    )


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _scrape(port: int) -> dict[str, float]:
    """/metrics as {series with labels: value}."""
    series = {}
    for line in _get(port, "/metrics")[1].splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            series[name] = float(value)
    return series


def _wait(what: str, check: Callable[[], bool], timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass  # not listening yet
        time.sleep(0.25)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def _stopped(process: subprocess.Popen[str], timeout: float = 30) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=timeout)


# --- a day of alerts, the pager down, the dispatcher killed twice -------------------------------


def _day_of_alerts(tmp_path: Path, seed: int) -> list[Alert]:
    """`posmon simulate --hours 26` and `posmon replay`: a day of alerts (about 60). Each test
    takes its own seed: the dispatch ledger topic is shared by the session's broker."""
    events, alerts = tmp_path / "events.jsonl", tmp_path / "alerts.jsonl"
    for args in (
        ["simulate", "--out", str(events), "--hours", "26", "--seed", str(seed)],
        ["replay", str(events), "--alerts", str(alerts), "--quiet"],
    ):
        subprocess.run([sys.executable, "-m", "monitor", *args], cwd=REPO, check=True)
    return [Alert.model_validate_json(line) for line in alerts.read_text().splitlines()]


def _paging_config(tmp_path: Path, pd_url: str) -> Path:
    """Every alert goes to the pager (no inhibition); the example's storm limits (20 per 5 min
    of event time); short group timings and retries."""
    path = tmp_path / "dispatch.yaml"
    timing = "group_wait: 1s, group_interval: 2s"
    path.write_text(
        f"""
dispatch:
  channels:
    pd: {{type: pagerduty, secret_env: PD_ROUTING_KEY, url: "{pd_url}/v2/enqueue"}}
  routes:
    - {{name: operations, match: {{detectors: [terminal_failure_spike, missing_reversal]}},
       channels: [pd], group_by: [detector, terminal_id], {timing}}}
    - {{name: risk, match: {{severities: [critical]}}, channels: [pd], {timing}}}
  default_route: {{channels: [pd], {timing}}}
  inhibitions: []
delivery: {{initial: 0.2, max_delay: 1s, deadline: 10m}}
"""
    )
    return path


def _end_of(settings: KafkaSettings, topic: str) -> dict[int, int]:
    """The next offset of every partition of `topic` that holds a record."""
    end: dict[int, int] = {}
    for record in read_topic(settings, topic):
        end[record.partition] = max(end.get(record.partition, 0), record.offset + 1)
    return end


def paging_through_failure(
    tmp_path: Path, broker: EmbeddedBroker, outage: float, seed: int
) -> None:
    alerts = _day_of_alerts(tmp_path, seed)
    topic = fresh_topic(broker, partitions=3)
    settings = kafka_settings(broker, topic)
    sink = KafkaSink(settings)
    sink.publish(alerts, [])  # the whole day at once, as after a long downtime
    sink.close()
    pd = FakeService(pagerduty(ROUTING_KEY)).start()
    pd.down()
    started = time.monotonic()
    port = _free_port()
    env = monitor_environ(settings, port, PD_ROUTING_KEY=ROUTING_KEY)
    config, log = _paging_config(tmp_path, pd.url), tmp_path / "dispatch.log"
    command = ("dispatch", "--config", str(config))

    def triggered() -> set[str]:
        return {
            body["dedup_key"]
            for r in pd.requests()
            if r.status == 202 and (body := r.json())["event_action"] == "trigger"
        }

    def holding() -> bool:
        return _scrape(port).get("posmon_dispatch_oldest_undelivered_seconds", 0) > 0

    process = _posmon(*command, env=env, log=log)
    try:
        _wait("the dispatcher to hold the backlog", holding, 60, log)
        process.kill()  # 1: during the outage, retrying, nothing committed
        process.wait()
        process = _posmon(*command, env=env, log=log)
        _wait("the restarted dispatcher to hold the backlog", holding, 60, log)
        time.sleep(max(0.0, outage - (time.monotonic() - started)))
        pd.up()  # the pager is back
        _wait("the first pages", lambda: bool(triggered()), 60, log)
        process.kill()  # 2: while paging, after some pages went out
        process.wait()
        process = _posmon(*command, env=env, log=log)
        expected = {a.alert_id for a in alerts}
        _wait("every alert at the pager", lambda: triggered() >= expected, 120, log)
        group = settings.model_copy(
            update={"topic": settings.alerts_topic, "group": f"{settings.group}-dispatch"}
        )
        end = _end_of(settings, settings.alerts_topic)
        _wait("every offset committed", lambda: committed_offsets(group) == end, 60, log)
        # The second dispatcher may have paged and committed everything before its kill: the
        # third one may not be listening yet.
        _wait("the last dispatcher ready", lambda: _get(port, "/readyz")[0] == 200, 60, log)
        metrics = _scrape(port)
        assert _stopped(process) == 0
    finally:
        if process.poll() is None:
            process.kill()
        pd.down()
    output = log.read_text()
    assert triggered() == expected, output[-3000:]
    assert metrics["posmon_dispatch_oldest_undelivered_seconds"] == 0
    assert metrics['posmon_dispatch_withheld_total{reason="folded"}'] == 0
    assert metrics['posmon_alerts_parked_total{cause="permanent",channel="pd"}'] == 0
    assert ROUTING_KEY not in output


def test_a_day_of_alerts_through_an_outage_and_two_kills(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    paging_through_failure(tmp_path, broker, outage=12.0, seed=11)


@pytest.mark.soak
def test_a_day_of_alerts_through_a_minute_outage_and_two_kills(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    paging_through_failure(tmp_path, broker, outage=60.0, seed=3)


# --- start-up: the shipped example, secrets, the series -----------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A port that accepts connections and remembers them: the bootstrap server a process that
    must not connect is given."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        s.setblocking(False)
        yield s


def _connected(listener: socket.socket) -> bool:
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def test_the_shipped_example_starts_ready_with_its_series_at_zero(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    """`posmon dispatch --config config/dispatch.example.yaml` with its three variables set
    (and the broker's address): it starts, is ready, and serves every paging series, at zero,
    for every channel (its channels point at hosts that are not there; nothing is sent)."""
    settings = kafka_settings(broker, fresh_topic(broker, partitions=1))
    port, log = _free_port(), tmp_path / "dispatch.log"
    env = monitor_environ(settings, port, **EXAMPLE_SECRETS)
    process = _posmon("dispatch", "--config", str(EXAMPLE), env=env, log=log)
    try:
        _wait("/readyz", lambda: _get(port, "/readyz")[0] == 200, 60, log)
        assert _get(port, "/healthz")[0] == 200
        metrics = _scrape(port)
        assert _stopped(process) == 0
    finally:
        if process.poll() is None:
            process.kill()
    for channel in ("pagerduty-risk", "pagerduty-ops", "slack-risk", "alertmanager", "audit"):
        for outcome in ("delivered", "parked_permanent", "parked_deadline"):
            key = f'posmon_alerts_delivered_total{{channel="{channel}",outcome="{outcome}"}}'
            assert metrics[key] == 0, key
        assert metrics[f'posmon_alerts_parked_total{{cause="deadline",channel="{channel}"}}'] == 0
        assert metrics[f'posmon_delivery_retries_total{{channel="{channel}"}}'] == 0
    for reason in ("inhibited", "duplicate", "folded", "unrouted"):
        assert metrics[f'posmon_dispatch_withheld_total{{reason="{reason}"}}'] == 0
    assert metrics["posmon_dispatch_oldest_undelivered_seconds"] == 0
    output = log.read_text()
    assert not any(secret in output for secret in EXAMPLE_SECRETS.values())


@pytest.mark.parametrize("command", ["dispatch", "run"])
def test_a_missing_secret_is_refused_before_any_connection(
    tmp_path: Path, listener: socket.socket, command: str
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("POSMON_")},
        **EXAMPLE_SECRETS,
        "POSMON_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{listener.getsockname()[1]}",
    }
    del env["PD_OPS_KEY"]
    done = subprocess.run(
        [sys.executable, "-m", "monitor", command, "--config", str(EXAMPLE)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == (
        "posmon: error: channel pagerduty-ops: environment variable PD_OPS_KEY is not set\n"
    )
    assert not _connected(listener)


def test_a_secret_named_like_a_setting_is_refused_naming_its_channel(
    tmp_path: Path, listener: socket.socket
) -> None:
    """The example as it was shipped (`POSMON_PD_RISK_KEY`, set): refused at config load with
    one line that names the channel and the rule, not `pd_risk_key: unknown key` alone."""
    old = tmp_path / "dispatch.yaml"
    old.write_text(
        EXAMPLE.read_text().replace("secret_env: PD_RISK_KEY", "secret_env: POSMON_PD_RISK_KEY")
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("POSMON_")},
        **EXAMPLE_SECRETS,
        "POSMON_PD_RISK_KEY": "pd-risk-secret-0123",
        "POSMON_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{listener.getsockname()[1]}",
    }
    done = subprocess.run(
        [sys.executable, "-m", "monitor", "dispatch", "--config", str(old)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "dispatch.channels.pagerduty-risk.secret_env" in done.stderr
    assert "POSMON_PD_RISK_KEY: a secret's variable must not start with POSMON_" in done.stderr
    assert "pd-risk-secret-0123" not in done.stderr
    assert not _connected(listener)


# A `posmon run` whose dispatch loop dies: the real command, with its dispatch loop replaced by
# one that fails after a moment (as a channel bug or a broker refusal would).
_DYING_DISPATCH = """
import sys, time
import monitor.cli.commands as commands
from monitor.cli.main import main

def dying(*args, **kwargs):
    time.sleep(5)
    raise RuntimeError("the ledger topic is gone")

commands.run_dispatcher = dying
sys.exit(main(["run", "--config", sys.argv[1]]))
"""


def test_posmon_run_stops_and_says_why_when_its_dispatch_loop_dies(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    settings = kafka_settings(broker, fresh_topic(broker, partitions=1))
    port, log = _free_port(), tmp_path / "run.log"
    env = monitor_environ(settings, port, **EXAMPLE_SECRETS)
    process = subprocess.Popen(
        [sys.executable, "-c", _DYING_DISPATCH, str(EXAMPLE)],
        cwd=REPO,
        env=env,
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # Its paging series are there from the start (zero), before the loop ever turns.
        key = 'posmon_alerts_delivered_total{channel="audit",outcome="delivered"}'
        _wait("the paging series", lambda: _scrape(port).get(key) == 0, 60, log)
        status = process.wait(timeout=60)  # it stops by itself
    finally:
        if process.poll() is None:
            process.kill()
    output = log.read_text()
    assert status == 1, output[-3000:]
    assert re.search(
        r"the dispatch loop died: RuntimeError: the ledger topic is gone; stopping posmon", output
    ), output[-3000:]


def test_posmon_demo_serves_the_paging_series(tmp_path: Path) -> None:
    log = tmp_path / "demo.log"
    demo = subprocess.Popen(
        [sys.executable, "-m", "monitor", "demo", "--out", str(tmp_path), "--duration", "8",
         "--rate", "1000"],
        cwd=REPO,
        env={**os.environ, "COLUMNS": "120"},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )  # fmt: skip
    ports: list[int] = []
    paging: dict[str, float] = {}

    def announced() -> bool:
        found = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", log.read_text())
        ports.extend([int(found.group(1))] if found else [])
        return bool(found)

    def served() -> bool:
        paging.update(_scrape(ports[0]))
        return 'posmon_alerts_delivered_total{channel="file",outcome="delivered"}' in paging

    try:
        _wait("the demo's metrics port", announced, 60, log)
        _wait("the paging series on the demo's /metrics", served, 60, log)
        demo.wait(timeout=120)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGINT)
            demo.wait(timeout=60)
    assert demo.returncode == 0, log.read_text()[-3000:]
    assert paging['posmon_alerts_parked_total{cause="deadline",channel="file"}'] == 0
    assert "posmon_dispatch_oldest_undelivered_seconds" in paging
