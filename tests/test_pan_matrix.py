"""The PAN matrix: every form of a card number (tests/pans.py) in every string field, in unknown
fields, as an amount and in invalid lines, through decode, replay, report, every channel payload
and the stream on the real broker. Zero card numbers in clear anywhere: each output is scanned
after NFKC and after undoing JSON escapes."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Final

import httpx
import pytest
from pydantic import SecretStr
from rich.console import Console

from monitor.channels.alertmanager import AlertmanagerChannel
from monitor.channels.console import ConsoleChannel
from monitor.channels.file import FileChannel
from monitor.channels.pagerduty import PagerDutyChannel
from monitor.channels.slack import SlackChannel
from monitor.channels.webhook import WebhookChannel
from monitor.cli.logs import log_to_stderr
from monitor.core.alerts import Alert
from monitor.core.events import Event, Rejection, decode
from monitor.paging.notification import Notification
from monitor.simulation.simulator import Simulation, SimulationSpec
from monitor.streaming.embedded import EmbeddedBroker
from monitor.streaming.topics import committed_offsets, read_topic
from tests.fake_services import ROUTING_KEY, accept, make_alert, pagerduty, running, slack
from tests.pans import PANS, forms, pans_in_clear
from tests.test_stream import _start, _stop, _stream, _up, _wait_for

REPO = Path(__file__).resolve().parent.parent
ID_FIELDS: Final = ("event_id", "terminal_id", "merchant_id", "card_id", "txn_ref")
GOOD: Final = {
    "event_id": "evt-matrix",
    "event_time": "2026-11-02T12:00:00+00:00",
    "kind": "auth_request",
    "terminal_id": "T-0001",
    "merchant_id": "M-0001",
    "card_id": "tok_9f31aa00c1",
    "txn_ref": "R-0001",
    "amount_minor": 1500,
    "currency": "EUR",
}
PLACEHOLDER: Final = "@@FORM@@"


def line(field: str, form: str, **update: object) -> bytes:
    """A raw line with `form` written as-is inside the JSON string of `field` (escapes kept)."""
    body: dict[str, object] = {**GOOD, **update, field: PLACEHOLDER}
    return json.dumps(body, ensure_ascii=False).replace(PLACEHOLDER, form).encode()


def hostile_lines() -> list[tuple[str, bytes]]:
    """(what, line) for every form of every PAN in every place."""
    out: list[tuple[str, bytes]] = []
    for n, pan in enumerate(PANS):
        for name, form in forms(pan).items():
            for field in ID_FIELDS:
                out.append((f"{field}:{name}", line(field, form, event_id=f"evt-{n}-{name}")))
            out.append((f"unknown:{name}", line("note", form, event_id=f"evt-u{n}-{name}")))
            out.append((f"invalid:{name}", line("card_id", form)[:-20]))
            out.append((f"not_json:{name}", f"card {form} oops".encode()))
        out.append((f"amount:{n}", json.dumps({**GOOD, "amount_minor": int(pan)}).encode()))
        out.append((f"amount_text:{n}", json.dumps({**GOOD, "amount_minor": pan}).encode()))
    return out


def assert_clean(what: str, blob: bytes | str) -> None:
    found = pans_in_clear(blob)
    assert not found, f"{what}: card number in clear"


# -- decode ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("what", "raw"), hostile_lines(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_decode_rejects_every_form_and_its_dead_letter_is_clean(what: str, raw: bytes) -> None:
    result = decode(raw)
    place = what.split(":", maxsplit=1)[0]
    if place == "unknown":  # unknown fields are dropped at decode: never kept, never sent on
        assert isinstance(result, Event)
        assert_clean(what, repr(result))
        return
    assert isinstance(result, Rejection), what
    expected = {
        "invalid": "not_json",
        "not_json": "not_json",
        "amount": "schema",
        "amount_text": "schema",
    }.get(place, "pan")
    assert result.reason == expected, (what, result.error)
    assert_clean(what, json.dumps(result.as_dead_letter()))
    assert_clean(what, json.dumps(result.as_dead_letter(), ensure_ascii=False))


# -- replay, its summary and the report -----------------------------------------------------------


@pytest.fixture(scope="module")
def traffic() -> list[bytes]:
    """An hour of simulated traffic (with alerts) and the hostile lines spread through it."""
    lines = [m for m in Simulation(SimulationSpec(seed=11, hours=1, merchants=8)).lines()]
    hostile = [raw for _, raw in hostile_lines()]
    step = max(1, len(lines) // len(hostile))
    mixed: list[bytes] = []
    for i, raw in enumerate(lines):
        mixed.append(raw)
        if i % step == 0 and hostile:
            mixed.append(hostile.pop())
    return mixed + hostile


def _posmon(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "monitor", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        check=False,
        timeout=600,
    )


def test_replay_and_report_show_no_card_number(traffic: list[bytes], tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(traffic) + b"\n")
    alerts, dlq = tmp_path / "alerts.jsonl", tmp_path / "dlq.jsonl"
    replay = _posmon("replay", events, "--alerts", alerts, "--dlq", dlq)
    assert replay.returncode == 0, replay.stderr.decode()[-2000:]
    assert alerts.read_bytes() and dlq.read_bytes()
    for what, blob in (
        ("stdout", replay.stdout),
        ("stderr", replay.stderr),
        ("alerts", alerts.read_bytes()),
        ("dead letters", dlq.read_bytes()),
    ):
        assert_clean(f"replay {what}", blob)
    out = tmp_path / "report"
    report = _posmon("report", alerts, "--dlq", dlq, "--out", out)
    assert report.returncode == 0, report.stderr.decode()[-2000:]
    assert_clean("report", report.stdout + report.stderr + (out / "index.html").read_bytes())


def test_an_error_line_quoting_a_path_shows_no_card_number_and_no_escape(tmp_path: Path) -> None:
    missing = tmp_path / f"card {PANS[0]} \x1b]8;;https://evil.example\x1b\\.jsonl"
    replay = _posmon("replay", missing, "--alerts", tmp_path / "alerts.jsonl")
    assert replay.returncode == 2
    assert replay.stderr.count(b"\n") == 1
    assert b"\x1b" not in replay.stderr
    assert_clean("error line", replay.stderr)


def test_log_lines_are_masked_and_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    log_to_stderr(logging.WARNING)
    log = logging.getLogger("posmon.test")
    for pan in PANS:
        for name, form in forms(pan).items():
            log.warning("%s: %s \x1b[2J", name, json.loads(f'"{form}"'))
    try:
        raise ValueError(f"bad value {PANS[0]}")
    except ValueError:
        log.exception("with a traceback")
    err = capsys.readouterr().err
    assert err.count("WARNING posmon.test") == len(PANS) * len(forms(PANS[0]))
    assert "\x1b" not in err and "ValueError" in err
    assert_clean("log lines", err)


def hostile_alerts() -> list[Alert]:
    """Alerts as a foreign producer could write them: every text field holding a card number."""
    alerts = []
    every_form = [item for pan in PANS for item in forms(pan).items()]
    for n, (name, form) in enumerate(every_form):
        value = str(json.loads(f'"{form}"'))
        alert = make_alert(
            n,
            terminal=value,
            merchant=value,
            summary=f"card {value} at risk",
            event_ids=[value, f"e-{name}"],
        )
        raw = json.loads(alert.model_dump_json())
        raw.update(card_id=value, details={"note": value, value: [value]})
        alerts.append(Alert.model_validate(raw))  # as the dispatcher and the report read them
    return alerts


def test_report_of_a_hand_made_alerts_file_shows_no_card_number(tmp_path: Path) -> None:
    alerts_file = tmp_path / "alerts.jsonl"
    raw_lines = []
    for alert in hostile_alerts():
        raw = json.loads(alert.model_dump_json())
        raw.update(terminal_id=f"T {PANS[0]}", summary=f"x {forms(PANS[1])['fullwidth']} y")
        raw_lines.append(json.dumps(raw, ensure_ascii=False))
    alerts_file.write_text("\n".join(raw_lines) + "\n", encoding="utf-8")
    assert pans_in_clear(alerts_file.read_bytes())  # the input does hold them
    out = tmp_path / "report"
    report = _posmon("report", alerts_file, "--out", out)
    assert report.returncode == 0, report.stderr.decode()[-2000:]
    assert_clean("report", report.stdout + report.stderr + (out / "index.html").read_bytes())


# -- every channel payload ------------------------------------------------------------------------


def test_every_channel_payload_is_clean(tmp_path: Path) -> None:
    alerts = tuple(hostile_alerts())
    notification = Notification(
        "trigger", alerts, group_key=alerts[0].alert_id, summary=f"{len(alerts)} alerts"
    )
    sent: list[bytes] = []
    with httpx.Client(timeout=5) as client:
        with running(slack) as service:
            SlackChannel(SecretStr(f"{service.url}/hook"), client=client).send(notification)
            sent += [r.request.body for r in service.recorded]
        with running(pagerduty(ROUTING_KEY)) as service:
            PagerDutyChannel(
                SecretStr(ROUTING_KEY), client=client, url=f"{service.url}/v2/enqueue"
            ).send(notification)
            sent += [r.request.body for r in service.recorded]
        with running(accept) as service:
            WebhookChannel(f"{service.url}/hook", SecretStr("s"), client=client).send(notification)
            AlertmanagerChannel(service.url, client=client).send(notification)
            sent += [r.request.body for r in service.recorded]
    assert len(sent) >= 4
    file = tmp_path / "alerts.jsonl"
    FileChannel(file).send(notification)
    console = Console(record=True, width=200)
    ConsoleChannel(console).send(notification)
    for n, body in enumerate([*sent, file.read_bytes(), console.export_text().encode()]):
        assert_clean(f"channel payload {n}", body)


# -- the stream, on the real broker ---------------------------------------------------------------


def test_the_stream_publishes_no_card_number(broker: EmbeddedBroker, traffic: list[bytes]) -> None:
    stream = _stream(broker, lines=traffic)
    process = _start(stream)
    try:
        _wait_for(lambda: _up(stream, "readyz"), 90, "/readyz")
        _wait_for(
            lambda: sum(committed_offsets(stream.settings).values()) >= len(traffic),
            120,
            "every message committed",
        )
    finally:
        output = _stop(stream, process)
    assert_clean("posmon run output", output)
    topic = stream.settings.topic
    dead = read_topic(stream.settings, f"{topic}.dlq")
    alerts = read_topic(stream.settings, stream.settings.alerts_topic)
    assert dead and alerts
    for record in [*dead, *alerts]:
        assert_clean("a published record", (record.key or b"") + b" " + (record.value or b""))
