"""Waiting for the broker at start-up, in a way a stop can interrupt at any moment.

kafka-python's constructors bootstrap eagerly: against an unreachable or blackholed broker they
block for 30 s, deaf to SIGTERM, then raise a long traceback. So `posmon run` and `posmon
dispatch` first wait here: every `RETRY_EVERY_S` one probe (a TCP connect, TLS when configured,
and an ApiVersions round trip, which a broker answers before any SASL authentication) runs on a
worker thread while the caller watches the stop event; each failed attempt logs one line naming
the bootstrap servers, and after `kafka.startup_timeout` the wait raises `BrokerUnreachable`
(one line, exit status 2). Only then are the clients built, and they bootstrap at once.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from kafka.errors import KafkaError  # type: ignore[import-untyped]

from monitor.streaming.settings import KafkaSettings

log = logging.getLogger("posmon.kafka")

RETRY_EVERY_S = 5.0
_API_VERSIONS = 18  # the request every Kafka client sends first; version 0 needs no body
_WATCH_S = 0.05  # how often the caller looks at the stop event while a probe runs

T = TypeVar("T")


class BrokerUnreachable(RuntimeError):  # noqa: N818 - reads as the condition it reports
    """No bootstrap server answered within `kafka.startup_timeout`; the message is one line."""


def connect(settings: KafkaSettings, stop: threading.Event, build: Callable[[], T]) -> T | None:
    """`build()` (the kafka-python clients) once a bootstrap server answers; None when `stop` is
    set first. A broker that vanishes in the moment between the probe and the clients' own
    bootstrap makes their constructor raise after its 30 s: reported as `BrokerUnreachable`."""
    if not wait_for_broker(settings, stop):
        return None
    try:
        return build()
    except KafkaError as exc:
        raise BrokerUnreachable(
            f"the Kafka broker at {settings.bootstrap_servers} answered, then not: {exc}"
        ) from exc


def wait_for_broker(
    settings: KafkaSettings,
    stop: threading.Event,
    *,
    every_s: float = RETRY_EVERY_S,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """True once a bootstrap server answers, False as soon as `stop` is set; raises
    `BrokerUnreachable` when `settings.startup_timeout` passes first."""
    servers = settings.bootstrap_servers
    deadline = clock() + settings.startup_timeout
    while True:
        started = clock()
        probe = _Probe(settings, timeout_s=max(min(every_s, deadline - started), 1.0))
        while not probe.done.wait(_WATCH_S):
            if stop.is_set():
                return False
        if probe.error is None:
            return True
        left = deadline - clock()
        if left <= 0:
            raise BrokerUnreachable(
                f"no Kafka broker answered at {servers} within {settings.startup_timeout:g} s"
                f" (kafka.startup_timeout); last error: {probe.error}"
            )
        log.warning(
            "Kafka broker not reachable at %s (%s); retrying every %g s, giving up in %.0f s",
            servers,
            probe.error,
            every_s,
            left,
        )
        if stop.wait(min(max(started + every_s - clock(), 0.0), left)):
            return False


class _Probe:
    """One attempt on a daemon thread: the first bootstrap server that answers wins. It ends by
    itself within its timeout per server, so one abandoned by a stop leaks nothing."""

    def __init__(self, settings: KafkaSettings, *, timeout_s: float) -> None:
        self.done = threading.Event()
        self.error: str | None = "no bootstrap server"
        self._settings, self._timeout_s = settings, timeout_s
        threading.Thread(target=self._run, name="posmon-broker-probe", daemon=True).start()

    def _run(self) -> None:
        try:
            for server in self._settings.bootstrap_servers.split(","):
                try:
                    api_versions(self._settings, server.strip(), self._timeout_s)
                except (OSError, ValueError) as exc:
                    self.error = f"{server.strip()}: {exc or type(exc).__name__}"
                else:
                    self.error = None
                    return
        finally:
            self.done.set()


def api_versions(settings: KafkaSettings, server: str, timeout_s: float) -> None:
    """One ApiVersions round trip with `server` (HOST:PORT), each step within `timeout_s`;
    raises `OSError` (refused, timed out, TLS) or `ValueError` (not a Kafka answer)."""
    host, colon, port = server.rpartition(":")
    if not colon or (host.startswith("[") and not host.endswith("]")):
        host, port = server, "9092"  # no port: Kafka's, as kafka-python assumes
    host = host.strip("[]")  # an IPv6 literal
    client_id = settings.client_id.encode()
    correlation = 1
    request = struct.pack(">hhih", _API_VERSIONS, 0, correlation, len(client_id)) + client_id
    with socket.create_connection((host, int(port)), timeout=timeout_s) as raw:
        tls = _tls(settings)
        sock = tls.wrap_socket(raw, server_hostname=host) if tls else raw
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _read(sock, 4))
        if size < 6 or struct.unpack(">i", _read(sock, 4))[0] != correlation:
            raise ValueError("the answer is not a Kafka ApiVersions response")


def _read(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionResetError("the connection closed before an answer")
        data += chunk
    return data


def _tls(settings: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS context the clients would use (kafka-python checks the host name by default)."""
    if settings.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    context = ssl.create_default_context(cafile=settings.ssl_cafile)
    if settings.ssl_certfile is not None:
        password = settings.ssl_password.get_secret_value() if settings.ssl_password else None
        context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile, password)
    return context
