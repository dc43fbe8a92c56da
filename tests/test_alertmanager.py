"""`AlertmanagerChannel` against a real Prometheus Alertmanager (Debian `prometheus-alertmanager`).

The test starts Alertmanager on a free loopback port with a route whose receiver is a recording
webhook (`tests.fake_services`), posts alerts through the channel, and checks what Alertmanager
holds (`GET /api/v2/alerts`), how it groups them (`group_by: [alertname, merchant_id]`) and what
reaches the receiver, firing and resolved. The binary is installed with apt when missing and the
test runs as root; it is skipped only when it is absent and cannot be installed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from monitor.channels import AlertmanagerChannel, http_client
from monitor.paging.notification import Notification
from tests.fake_services import FakeService, accept, make_alert, running

BINARY = "prometheus-alertmanager"
AMTOOL = "amtool"
INSTALL = ["apt-get", "install", "-y", "--no-install-recommends", "prometheus-alertmanager"]


def _binaries() -> tuple[str, str]:
    """The two binaries, installing the Debian package when missing and possible."""
    missing = not (shutil.which(BINARY) and shutil.which(AMTOOL))
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
        subprocess.run(INSTALL, env=env, capture_output=True, check=False)
    binary, amtool = shutil.which(BINARY), shutil.which(AMTOOL)
    if not (binary and amtool):
        pytest.skip(
            f"{BINARY} and {AMTOOL} are not installed and could not be installed"
            " (needs root and apt: apt-get install -y prometheus-alertmanager)"
        )
    return binary, amtool


def _check_config(amtool: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [amtool, "check-config", str(config)], capture_output=True, text=True, check=False
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _config(receiver: str) -> str:
    return f"""\
route:
  receiver: recorder
  group_by: [alertname, merchant_id]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: recorder
    webhook_configs:
      - url: {receiver}/hook
        send_resolved: true
        max_alerts: 0
"""


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def receiver() -> Iterator[FakeService]:
    with running(accept) as service:
        yield service


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory, receiver: FakeService) -> Iterator[str]:
    binary, amtool = _binaries()
    workdir: Path = tmp_path_factory.mktemp("alertmanager")
    config = workdir / "am.yml"
    config.write_text(_config(receiver.url))
    check = _check_config(amtool, config)
    assert check.returncode == 0, check.stdout + check.stderr

    port = _free_port()
    log = (workdir / "alertmanager.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            f"--storage.path={workdir / 'data'}",
            f"--config.file={config}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with http_client(timeout=2, connect=1, trust_env=False) as client:

            def ready() -> bool:
                assert process.poll() is None, (workdir / "alertmanager.log").read_text()
                try:
                    return client.get(f"{url}/-/ready").status_code == 200
                except httpx.TransportError:
                    return False

            _wait_for(ready, "Alertmanager to be ready")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _hooks(receiver: FakeService) -> list[dict[str, Any]]:
    return [r.json() for r in receiver.requests() if r.request.path == "/hook"]


def test_amtool_accepts_the_config(tmp_path: Path) -> None:
    _, amtool = _binaries()
    config = tmp_path / "am.yml"
    config.write_text(_config("http://127.0.0.1:9"))
    check = _check_config(amtool, config)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout


def test_alerts_reach_alertmanager_grouped_and_resolve(
    alertmanager: str, receiver: FakeService
) -> None:
    started = (datetime.now(UTC) - timedelta(minutes=10)).replace(microsecond=0)
    m1 = [make_alert(n, merchant="M-01", terminal=f"T-{n}", first_seen=started) for n in (1, 2)]
    m2 = make_alert(3, merchant="M-02", terminal="T-3", first_seen=started)
    other = make_alert(4, detector="large_amount", severity="warning", first_seen=started)

    with http_client(timeout=5, connect=1, trust_env=False) as client:
        channel = AlertmanagerChannel(alertmanager, client=client)
        # one post with a group, then single posts: grouping is Alertmanager's, by labels
        assert channel.send(Notification("trigger", tuple(m1), "M-01")).status == "delivered"
        for alert in (m2, other):
            assert channel.send(Notification("trigger", (alert,), alert.alert_id)).status == (
                "delivered"
            )

        held = client.get(f"{alertmanager}/api/v2/alerts").json()
        by_id = {a["labels"]["alert_id"]: a for a in held}
        assert set(by_id) == {a.alert_id for a in (*m1, m2, other)}
        first = by_id[m1[0].alert_id]
        assert first["labels"] == {
            "alertname": "posmon_failed_then_debited",
            "detector": "failed_then_debited",
            "severity": "critical",
            "merchant_id": "M-01",
            "terminal_id": "T-1",
            "alert_id": m1[0].alert_id,
        }
        assert first["annotations"]["summary"] == m1[0].summary
        assert first["status"]["state"] == "active"
        assert datetime.fromisoformat(first["startsAt"]) == started

        # the receiver gets one notification per (alertname, merchant_id) group
        def groups() -> dict[tuple[str, str], set[str]]:
            seen: dict[tuple[str, str], set[str]] = {}
            for hook in _hooks(receiver):
                if hook["status"] == "firing":
                    key = (hook["groupLabels"]["alertname"], hook["groupLabels"]["merchant_id"])
                    seen.setdefault(key, set()).update(
                        a["labels"]["alert_id"] for a in hook["alerts"]
                    )
            return seen

        expected = {
            ("posmon_failed_then_debited", "M-01"): {m1[0].alert_id, m1[1].alert_id},
            ("posmon_failed_then_debited", "M-02"): {m2.alert_id},
            ("posmon_large_amount", "M-01"): {other.alert_id},
        }
        _wait_for(lambda: groups() == expected, f"grouped webhooks {expected}, got {groups()}")
        hook = next(h for h in _hooks(receiver) if h["groupLabels"].get("merchant_id") == "M-02")
        assert hook["receiver"] == "recorder"
        assert hook["alerts"][0]["annotations"]["summary"] == m2.summary

        # resolving: endsAt = now; Alertmanager stops listing it and tells the receiver
        assert channel.send(Notification("resolve", (m2,), m2.alert_id)).status == "delivered"

        def resolved() -> bool:
            return any(
                h["status"] == "resolved"
                and [a["labels"]["alert_id"] for a in h["alerts"]] == [m2.alert_id]
                for h in _hooks(receiver)
            )

        _wait_for(resolved, "the resolved notification")
        active = client.get(f"{alertmanager}/api/v2/alerts", params={"active": "true"}).json()
        assert m2.alert_id not in {
            a["labels"]["alert_id"] for a in active if a["status"]["state"] == "active"
        }


def test_alertmanager_refuses_an_invalid_alert_permanently(alertmanager: str) -> None:
    """An alert that ends before it starts is invalid to Alertmanager: 400, not retried."""
    alert = make_alert(9, first_seen=datetime.now(UTC) + timedelta(hours=1))
    with http_client(timeout=5, connect=1, trust_env=False) as client:
        channel = AlertmanagerChannel(alertmanager, client=client)
        outcome = channel.send(Notification("resolve", (alert,), alert.alert_id))
    assert outcome.status == "permanent"
    assert outcome.reason.startswith("HTTP 400")
