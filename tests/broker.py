"""The real broker for the tests: one embedded Tansu per session, a fresh topic per test.

Load it as a plugin (`pytest_plugins = ["tests.broker"]` in tests/conftest.py), then ask for the
`broker` fixture and call `fresh_topic(broker)` and `kafka_settings(broker, topic)`. For broker
outages, `proxied_broker()` starts a dedicated broker behind a `BlackholeProxy`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitor.streaming.embedded import EmbeddedBroker, broker_binary
from monitor.streaming.settings import KafkaSettings

Broker = EmbeddedBroker  # the fixture's type, for annotations

# A group join on Tansu takes about half the session timeout: keep it short, keep joins few.
TEST_TIMINGS: dict[str, Any] = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """A started embedded broker shared by the whole session (it starts in well under 1 s)."""
    with EmbeddedBroker() as started:
        yield started


def fresh_topic(broker: EmbeddedBroker, partitions: int = 6) -> str:
    """A new uniquely named topic, with its `<name>.dlq` (1 partition, so dead letters keep their
    order) and `<name>.alerts` (`partitions` partitions, keyed by alert id)."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    broker.create_topics({name: partitions, f"{name}.dlq": 1, f"{name}.alerts": partitions})
    return name


def kafka_settings(broker: EmbeddedBroker, topic: str, **overrides: Any) -> KafkaSettings:
    """Settings for `topic` on `broker`: its alerts and labels topics (a test's own, not the
    session's shared `posmon.labels`), a group of its own, test timings."""
    values: dict[str, Any] = {
        "bootstrap_servers": broker.bootstrap_servers,
        "topic": topic,
        "alerts_topic": f"{topic}.alerts",
        "labels_topic": f"{topic}.labels",
        "group": f"{topic}-group",
        **TEST_TIMINGS,
        **overrides,
    }
    return KafkaSettings(**values)


def monitor_environ(settings: KafkaSettings, metrics_port: int, **extra: str) -> dict[str, str]:
    """The environment of a `posmon run` (or `dispatch`) process for `settings`: test timings,
    an idle rule of one second, `/metrics` on `metrics_port` of the loopback."""
    return {
        **os.environ,
        "POSMON_KAFKA__BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "POSMON_KAFKA__TOPIC": settings.topic,
        "POSMON_KAFKA__GROUP": settings.group,
        "POSMON_KAFKA__ALERTS_TOPIC": settings.alerts_topic,
        "POSMON_KAFKA__LABELS_TOPIC": settings.labels_topic or "",
        "POSMON_KAFKA__SESSION_TIMEOUT_MS": str(TEST_TIMINGS["session_timeout_ms"]),
        "POSMON_KAFKA__HEARTBEAT_INTERVAL_MS": str(TEST_TIMINGS["heartbeat_interval_ms"]),
        "POSMON_KAFKA__IDLE_PARTITION_S": "1",
        "POSMON_METRICS__HOST": "127.0.0.1",
        "POSMON_METRICS__PORT": str(metrics_port),
        **extra,
    }


def wait_for(
    condition: Callable[[], object], timeout: float, what: str, every: float = 0.1
) -> None:
    """Poll `condition` every `every` seconds until it holds; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BlackholeProxy:
    """A loopback TCP proxy in front of a broker that can be switched into a blackhole and back.

    As a blackhole it accepts and keeps connections (new ones too) but drops every byte both
    ways, as a firewall that silently discards packets does. Connections whose first request
    names a client id in `spare` (a test's own producer) are never blackholed, so traffic keeps
    arriving while the monitor is cut off. `restore()` forwards again and resets the connections
    that lost bytes: a TCP stream with a hole in it cannot go on. `blackhole(at_produce=True)`
    goes dark only at the next Produce request of a client not spared, which it drops: a
    publish is then surely caught in the outage (`dark_since` says when).
    """

    def __init__(self, *, spare: Collection[str] = ()) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.bootstrap_servers = f"127.0.0.1:{self.port}"
        self.target: Callable[[], tuple[str, int]] | None = None  # asked at each connection
        self._spare = {name.encode() for name in spare}
        self._dark = threading.Event()
        self._armed = threading.Event()
        self.dark_since: float | None = None  # time.monotonic() when it went dark
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def blackhole(self, *, at_produce: bool = False) -> None:
        if at_produce:
            self._armed.set()
        else:
            self._go_dark()

    def _go_dark(self) -> None:
        self._armed.clear()
        self.dark_since = time.monotonic()
        self._dark.set()

    def restore(self) -> None:
        self._armed.clear()
        self._dark.clear()
        self.dark_since = None
        with self._lock:
            broken = [link for link in self._links if link.dropped]
        for link in broken:
            link.close()

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            assert self.target is not None, "set the proxy's target before connecting"
            try:
                upstream = socket.create_connection(self.target(), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            link = _Link(client, upstream)
            with self._lock:
                self._links = [old for old in self._links if not old.closed] + [link]
            for source, target, first in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(
                    target=self._pump, args=(link, source, target, first), daemon=True
                ).start()

    def _pump(self, link: _Link, source: socket.socket, target: socket.socket, up: bool) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                link.close()
                return
            if up and link.client_id is None:
                link.client_id = _client_id(data)
            spared = link.client_id in self._spare
            if up and _PRODUCE in link.api_keys(data) and self._armed.is_set() and not spared:
                self._go_dark()
            if self._dark.is_set() and not spared:
                link.dropped = True
                continue
            try:
                target.sendall(data)
            except OSError:
                link.close()
                return


class _Link:
    """One proxied connection: the client's socket and the broker's."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.sockets = (client, upstream)
        self.client_id: bytes | None = None
        self.dropped = False
        self.closed = False
        self._left = 0  # bytes of the current request not seen yet
        self._head = b""  # the start of a request whose size and api key are not all seen yet

    def api_keys(self, data: bytes) -> list[int]:
        """The api key of each request that starts in `data`, the next bytes from the client
        (a request: its size, then its api key)."""
        keys: list[int] = []
        data, self._head = self._head + data, b""
        at = 0
        while at < len(data):
            if self._left:
                step = min(self._left, len(data) - at)
                self._left -= step
                at += step
            elif len(data) - at < 6:
                self._head = data[at:]
                break
            else:
                size, key = struct.unpack(">ih", data[at : at + 6])
                keys.append(key)
                self._left = 4 + size
        return keys

    def close(self) -> None:
        self.closed = True
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


_PRODUCE = 0  # the api key of a Produce request


def _client_id(request: bytes) -> bytes:
    """The client id of a Kafka request: size, api key, version, correlation id, then the id as
    a length-prefixed string (in every request header version)."""
    if len(request) < 14:
        return b""
    (length,) = struct.unpack(">h", request[12:14])
    return request[14 : 14 + max(length, 0)]


@contextlib.contextmanager
def proxied_broker(
    *, spare: Collection[str] = ()
) -> Iterator[tuple[EmbeddedBroker, BlackholeProxy]]:
    """A dedicated embedded broker that advertises a `BlackholeProxy` in front of it, so every
    client, after its bootstrap too, talks to the broker through the proxy.

    Tansu advertises what `--advertised-listener-url` says; `EmbeddedBroker` passes its own
    address there, so its binary is wrapped by a script that passes the proxy's instead (topic
    commands go through unchanged, to the broker's own port).
    """
    proxy = BlackholeProxy(spare=spare)
    with tempfile.TemporaryDirectory(prefix="posmon-proxied-") as folder:
        wrapper = Path(folder) / "tansu"
        wrapper.write_text(
            f"#!{sys.executable}\n"
            "import os, sys\n"
            "argv = sys.argv[1:]\n"
            "if argv[:1] == ['broker']:\n"
            "    argv[argv.index('--advertised-listener-url') + 1] = "
            f"'tcp://{proxy.bootstrap_servers}'\n"
            f"os.execv({broker_binary()!r}, [{broker_binary()!r}, *argv])\n"
        )
        wrapper.chmod(0o755)
        broker = EmbeddedBroker(binary=str(wrapper))
        proxy.target = lambda: _address(broker.bootstrap_servers)
        with broker:
            try:
                yield broker, proxy
            finally:
                proxy.close()  # before the broker stops: no connection to a broker that is gone


def _address(servers: str) -> tuple[str, int]:
    host, _, port = servers.rpartition(":")
    return host, int(port)


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the `/metrics` on `port`, by name and labels (none while it is not up)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """`posmon` processes a test starts: any still running at its end is killed."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()
