"""Local stand-ins for the on-call services that live on the internet, over real loopback HTTP.

`FakeService` is a threaded `http.server` on 127.0.0.1 that records every request (arrival time
on the monotonic clock, path, headers, raw body, the status it answered) and answers through a
*responder* implementing one service's documented contract:

- `pagerduty`: Events API v2. Validates the body (routing key, `event_action`, `dedup_key`, and
  for a trigger the `payload` with `summary` <= 1024 chars, `source`, `severity`); 202
  `{"status": "success", "dedup_key": ...}`; 400 `{"status": "invalid event", "errors": [...]}`.
- `slack`: an incoming webhook. 200 `ok`; 400 `invalid_payload` without `text` or `blocks`.
- `accept`: any POST gets 200 (a generic webhook receiver; Alertmanager's webhook target).

A test scripts faults on top of the contract: `script(...)` answers the next requests with given
replies (429 + `Retry-After`, 5xx, a hang longer than the client's timeout), `down()`/`up()` closes
and reopens the listening socket on the same port (connection refused in between).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from monitor.core.alerts import Alert, Detector, Severity, alert_id


@dataclass(frozen=True, slots=True)
class Request:
    """One request as received (before the reply is chosen)."""

    at: float  # time.monotonic() on arrival
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "application/json"
    delay: float = 0.0  # seconds to wait before answering (a hang when > the client's timeout)


@dataclass(frozen=True, slots=True)
class Recorded:
    request: Request
    status: int

    @property
    def at(self) -> float:
        return self.request.at

    def json(self) -> Any:
        return self.request.json()


Responder = Callable[[Request], Reply]


def json_reply(status: int, document: object, *headers: tuple[str, str]) -> Reply:
    return Reply(status, json.dumps(document).encode(), tuple(headers))


def text_reply(status: int, text: str, *headers: tuple[str, str]) -> Reply:
    return Reply(status, text.encode(), tuple(headers), content_type="text/plain")


@dataclass
class FakeService:
    """A recording HTTP server on 127.0.0.1 with a scriptable fault queue."""

    responder: Responder
    port: int = 0
    recorded: list[Recorded] = field(default_factory=list)
    _script: deque[Reply] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeService:
        self.up()
        return self

    def up(self) -> None:
        """Listen (again) on the same port."""
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        # a short poll interval: `down()` waits up to one interval for the loop to notice
        self._thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    def down(self) -> None:
        """Close the listening socket: connections are refused until `up()`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    stop = down

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with these replies, in order, instead of the responder."""
        with self._lock:
            self._script.extend(replies)

    def fail_next(self, n: int, status: int = 503, retry_after: str | None = None) -> None:
        headers = (("Retry-After", retry_after),) if retry_after is not None else ()
        self.script(*[json_reply(status, {"status": "error"}, *headers) for _ in range(n)])

    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self.recorded)

    def _answer(self, request: Request) -> Reply:
        with self._lock:
            scripted = self._script.popleft() if self._script else None
        reply = scripted or self.responder(request)
        with self._lock:
            self.recorded.append(Recorded(request, reply.status))
        return reply


def _handler(service: FakeService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            request = Request(
                time.monotonic(), "POST", self.path, dict(self.headers), self.rfile.read(length)
            )
            reply = service._answer(request)
            if reply.delay:
                time.sleep(reply.delay)
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
                for name, value in reply.headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(reply.body)
            except OSError:
                pass  # the client gave up (a scripted hang): nothing to answer

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean; requests are recorded instead

    return Handler


@contextmanager
def running(responder: Responder) -> Iterator[FakeService]:
    service = FakeService(responder).start()
    try:
        yield service
    finally:
        service.down()


ROUTING_KEY = "R0UTINGKEY0123456789abcdef012345"  # the fake PagerDuty's key


# --- service contracts ------------------------------------------------------------------------

PD_ACTIONS = {"trigger", "acknowledge", "resolve"}
PD_SEVERITIES = {"critical", "error", "warning", "info"}


def pagerduty(routing_key: str | None = None) -> Responder:
    """PagerDuty Events API v2 (`POST /v2/enqueue`); `routing_key`, when given, must match."""

    def respond(request: Request) -> Reply:
        errors = pagerduty_errors(request, routing_key)
        if errors:
            return json_reply(
                400,
                {"status": "invalid event", "message": "Event object is invalid", "errors": errors},
            )
        body = request.json()
        return json_reply(
            202, {"status": "success", "message": "Event processed", "dedup_key": body["dedup_key"]}
        )

    return respond


def pagerduty_errors(request: Request, routing_key: str | None) -> list[str]:
    if request.path != "/v2/enqueue":
        return [f"unknown path {request.path}"]
    try:
        body = request.json()
    except ValueError:
        return ["body is not JSON"]
    if not isinstance(body, dict):
        return ["body is not an object"]
    errors = []
    key = body.get("routing_key")
    if not isinstance(key, str) or not key or (routing_key is not None and key != routing_key):
        errors.append("'routing_key' is invalid")
    if body.get("event_action") not in PD_ACTIONS:
        errors.append("'event_action' is invalid")
    dedup = body.get("dedup_key")
    if not isinstance(dedup, str) or not 0 < len(dedup) <= 255:
        errors.append("'dedup_key' is invalid")
    if body.get("event_action") == "trigger":
        payload = body.get("payload")
        if not isinstance(payload, dict):
            return [*errors, "'payload' is missing"]
        summary = payload.get("summary")
        if not isinstance(summary, str) or not 0 < len(summary) <= 1024:
            errors.append("'payload.summary' is invalid")
        if not isinstance(payload.get("source"), str) or not payload["source"]:
            errors.append("'payload.source' is missing")
        if payload.get("severity") not in PD_SEVERITIES:
            errors.append("'payload.severity' is invalid")
        if "custom_details" in payload and not isinstance(payload["custom_details"], dict):
            errors.append("'payload.custom_details' must be an object")
    return errors


def slack(request: Request) -> Reply:
    """A Slack incoming webhook: 200 `ok`, or 400 `invalid_payload`."""
    try:
        body = request.json()
    except ValueError:
        return text_reply(400, "invalid_payload")
    if not isinstance(body, dict) or not (body.get("text") or body.get("blocks")):
        return text_reply(400, "invalid_payload")
    return text_reply(200, "ok")


def accept(request: Request) -> Reply:
    return text_reply(200, "ok")


# --- alerts for channel tests -------------------------------------------------------------------

T0 = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)


def make_alert(
    n: int = 0,
    *,
    detector: Detector = "failed_then_debited",
    severity: Severity = "critical",
    merchant: str = "M-01",
    terminal: str = "T-0042",
    first_seen: datetime = T0,
    summary: str | None = None,
    event_ids: list[str] | None = None,
) -> Alert:
    """A valid alert whose id is deterministic in (`detector`, `n`)."""
    return Alert(
        alert_id=alert_id(detector, str(n)),
        detector=detector,
        severity=severity,
        terminal_id=terminal,
        merchant_id=merchant,
        card_id="tok_9f31aa00c1",
        first_seen=first_seen,
        last_seen=first_seen + timedelta(minutes=15),
        event_ids=event_ids if event_ids is not None else [f"e{n}-fail", f"e{n}-debit"],
        count=1,
        summary=summary
        if summary is not None
        else f"Card tok_9f..c1 debited 35.00 EUR at terminal {terminal} after a network error",
        details={"currency": "EUR", "debited_minor": 3500, "reversal_grace_s": 900},
        amount_at_risk_minor=3500,
        currency="EUR",
    )
