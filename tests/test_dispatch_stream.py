"""`posmon dispatch` on the real broker against a local PagerDuty: a long outage while hundreds
of incidents fire, the dispatcher killed mid-outage and restarted; after recovery every alert is
delivered and none twice (distinct dedup_key count equals alert count)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

from monitor.streaming.embedded import EmbeddedBroker
from monitor.streaming.sink import KafkaSink
from tests.broker import fresh_topic, kafka_settings
from tests.fake_services import FakeService, pagerduty
from tests.test_dispatch import make_alert

REPO = Path(__file__).resolve().parent.parent
ALERTS = 200


def _config(tmp_path: Path, pd_url: str) -> Path:
    path = tmp_path / "posmon.yaml"
    path.write_text(
        f"""
dispatch:
  channels:
    pd: {{type: pagerduty, secret_env: PD_ROUTING_KEY, url: "{pd_url}/v2/enqueue"}}
  routes:
    - name: risk
      match: {{severities: [critical]}}
      channels: [pd]
      group_wait: 0s
      group_interval: 1s
      storm_limit: {{max_notifications: 1000, per: 5m}}
  default_route: {{channels: [pd]}}
delivery:
  initial: 0.2
  max_delay: 1s
  deadline: 10m
"""
    )
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> dict[str, float]:
    """The dispatcher's /metrics as {series with labels: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    series = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            series[name] = float(value)
    return series


def _wait_for_backlog(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if _scrape(port).get("posmon_dispatch_oldest_undelivered_seconds", 0) > 0:
                return
        except OSError:
            pass  # not listening yet
        time.sleep(0.5)
    raise AssertionError("the restarted dispatcher never held a backlog")


def _start(tmp_path: Path, config: Path, environ: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "monitor", "dispatch", "--config", str(config)],
        cwd=REPO,
        env=environ,
        stdout=(tmp_path / "dispatch.log").open("a"),
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_outage_then_recovery_delivers_every_alert_once(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    topic = fresh_topic(broker, partitions=3)
    settings = kafka_settings(broker, topic)
    alerts = [
        make_alert("failed_then_debited", f"ghost{i}", severity="critical") for i in range(ALERTS)
    ]
    sink = KafkaSink(settings)
    sink.publish(alerts, [])
    sink.close()
    pd = FakeService(pagerduty("rk-test")).start()
    pd.down()  # the outage starts before the first page
    environ = {
        **os.environ,
        "PD_ROUTING_KEY": "rk-test",
        "POSMON_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "POSMON_KAFKA__ALERTS_TOPIC": settings.alerts_topic,
        "POSMON_KAFKA__GROUP": f"{topic}-g",
        "POSMON_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "POSMON_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
        "POSMON_METRICS__HOST": "127.0.0.1",
        "POSMON_METRICS__PORT": str(port := _free_port()),
    }
    config = _config(tmp_path, pd.url)
    process = _start(tmp_path, config, environ)
    try:
        time.sleep(8)  # retrying against a dead channel
        process.kill()  # killed mid-outage: nothing was committed
        process.wait()
        process = _start(tmp_path, config, environ)
        _wait_for_backlog(port)  # the restarted dispatcher holds the alerts, the outage goes on
        time.sleep(2)
        pd.up()  # recovery
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            accepted = {r.json()["dedup_key"] for r in pd.requests()}
            if len(accepted) >= ALERTS:
                break
            time.sleep(0.5)
        time.sleep(2)  # anything doubled would show now
        metrics = _scrape(port)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        pd.down()
    log = (tmp_path / "dispatch.log").read_text()
    requests = [r.json() for r in pd.requests()]
    keys = Counter(r["dedup_key"] for r in requests)
    assert set(keys) == {a.alert_id for a in alerts}, log[-2000:]
    assert all(n == 1 for n in keys.values()), keys.most_common(3)  # none twice
    assert "rk-test" not in log  # the routing key is never logged
    assert metrics['posmon_alerts_delivered_total{channel="pd",outcome="delivered"}'] > 0
    assert metrics['posmon_delivery_retries_total{channel="pd"}'] > 0  # the outage was retried
    assert metrics["posmon_dispatch_oldest_undelivered_seconds"] == 0
    assert "rk-test" not in str(metrics)
    assert all(json.dumps(r).count("rk-test") == 1 for r in requests)  # only as the routing_key
