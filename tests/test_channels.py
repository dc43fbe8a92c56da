"""Each channel's request against a local fake of its service, and the outcome classification."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from rich.console import Console

from monitor.channels import (
    AlertmanagerChannel,
    ConsoleChannel,
    FileChannel,
    PagerDutyChannel,
    SlackChannel,
    WebhookChannel,
    http_client,
)
from monitor.channels.base import parse_retry_after, worst
from monitor.channels.webhook import verify_signature
from monitor.core.alerts import Alert
from monitor.paging.notification import Notification, Outcome
from tests.fake_services import (
    ROUTING_KEY,
    FakeService,
    Reply,
    accept,
    json_reply,
    make_alert,
    pagerduty,
    running,
    slack,
    text_reply,
)

SLACK_SECRET = "XXSECRETXXslackhookpart"
HOOK_SECRET = "hmac-shared-secret"


@pytest.fixture
def hook() -> Iterator[FakeService]:
    with running(accept) as service:
        yield service


def trigger(*alerts: Alert, summary: str = "") -> Notification:
    return Notification("trigger", alerts, group_key=alerts[0].alert_id, summary=summary)


def pd_channel(service: FakeService, client: httpx.Client) -> PagerDutyChannel:
    return PagerDutyChannel(SecretStr(ROUTING_KEY), client=client, url=f"{service.url}/v2/enqueue")


# --- PagerDuty ----------------------------------------------------------------------------------


def test_pagerduty_trigger_is_one_valid_events_v2_event(
    pd: FakeService, client: httpx.Client
) -> None:
    alert = make_alert(event_ids=[f"e{i}" for i in range(80)])
    outcome = pd_channel(pd, client).send(trigger(alert))

    assert outcome.status == "delivered"
    [request] = pd.requests()
    assert request.status == 202
    body = request.json()
    assert body["routing_key"] == ROUTING_KEY
    assert body["event_action"] == "trigger"
    assert body["dedup_key"] == alert.alert_id
    payload = body["payload"]
    assert payload["summary"] == alert.summary
    assert payload["source"] == "T-0042"
    assert payload["severity"] == "critical"
    assert payload["component"] == "failed_then_debited"
    assert payload["group"] == "M-01"
    details = payload["custom_details"]
    assert details["count"] == 1
    assert details["debited_minor"] == 3500
    assert details["amount_at_risk"] == "35.00 EUR"  # from the alert's typed money fields
    assert details["event_ids"] == [f"e{i}" for i in range(50)]
    assert details["event_ids_omitted"] == 30
    assert "tok_9f31aa00c1" not in request.request.body.decode()  # the card token stays home


def test_pagerduty_maps_severity_and_truncates_the_summary(
    pd: FakeService, client: httpx.Client
) -> None:
    alert = make_alert(severity="info", detector="large_amount", summary="x" * 3000)
    assert pd_channel(pd, client).send(trigger(alert)).status == "delivered"
    payload = pd.requests()[0].json()["payload"]
    assert payload["severity"] == "info"
    assert len(payload["summary"]) == 1024


def test_pagerduty_resolve_carries_the_dedup_key_only(
    pd: FakeService, client: httpx.Client
) -> None:
    alert = make_alert()
    outcome = pd_channel(pd, client).send(Notification("resolve", (alert,), alert.alert_id))
    assert outcome.status == "delivered"
    body = pd.requests()[0].json()
    assert body == {
        "routing_key": ROUTING_KEY,
        "event_action": "resolve",
        "dedup_key": alert.alert_id,
    }


def test_pagerduty_group_sends_one_event_per_alert(pd: FakeService, client: httpx.Client) -> None:
    alerts = [make_alert(n) for n in range(3)]
    outcome = pd_channel(pd, client).send(trigger(*alerts, summary="3 ghost debits at M-01"))
    assert outcome.status == "delivered"
    assert [r.json()["dedup_key"] for r in pd.requests()] == [a.alert_id for a in alerts]


def test_pagerduty_group_stops_at_the_first_retry(pd: FakeService, client: httpx.Client) -> None:
    alerts = [make_alert(n) for n in range(3)]
    pd.script(
        json_reply(202, {"status": "success"}),
        json_reply(429, {"status": "throttled"}, ("Retry-After", "3")),
    )
    outcome = pd_channel(pd, client).send(trigger(*alerts))
    assert (outcome.status, outcome.retry_after) == ("retry", 3.0)
    assert len(pd.requests()) == 2


def test_pagerduty_invalid_event_is_permanent_and_hides_the_key(client: httpx.Client) -> None:
    with running(pagerduty("another-key")) as service:
        outcome = pd_channel(service, client).send(trigger(make_alert()))
    assert outcome.status == "permanent"
    assert outcome.reason.startswith("HTTP 400")
    assert "routing_key" in outcome.reason
    assert ROUTING_KEY not in outcome.reason


# --- classification (the same for every HTTP channel) --------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, "delivered"),
        (202, "delivered"),
        (204, "delivered"),
        (301, "permanent"),
        (400, "permanent"),
        (401, "permanent"),
        (403, "permanent"),
        (404, "permanent"),
        (413, "permanent"),
        (408, "retry"),
        (429, "retry"),
        (500, "retry"),
        (502, "retry"),
        (503, "retry"),
        (504, "retry"),
    ],
)
def test_status_classification(
    hook: FakeService, client: httpx.Client, status: int, expected: str
) -> None:
    hook.script(text_reply(status, "" if status == 204 else f"answer {status}"))
    outcome = WebhookChannel(hook.url, SecretStr(HOOK_SECRET), client=client).send(
        trigger(make_alert())
    )
    assert outcome.status == expected
    if expected != "delivered":
        assert outcome.reason == f"HTTP {status}: answer {status}"
    assert outcome.retry_after is None


def test_retry_after_in_seconds_and_as_an_http_date(
    hook: FakeService, client: httpx.Client
) -> None:
    channel = WebhookChannel(hook.url, SecretStr(HOOK_SECRET), client=client)
    hook.script(text_reply(429, "slow down", ("Retry-After", "7")))
    assert channel.send(trigger(make_alert())).retry_after == 7.0

    # the server's Date header is the reference, so our clock's skew does not matter
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    hook.script(text_reply(503, "maintenance", ("Retry-After", later)))
    retry_after = channel.send(trigger(make_alert())).retry_after
    assert retry_after is not None
    assert 27 <= retry_after <= 31


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("0", 0.0),
        ("120", 120.0),
        (" 5 ", 5.0),
        ("Mon, 02 Nov 2026 12:00:30 GMT", 30.0),
        ("Mon, 02 Nov 2026 11:59:00 GMT", 0.0),  # a date in the past: no wait
        ("soon", None),
        ("-3", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    reference = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
    assert parse_retry_after(value, reference) == expected


def test_connection_refused_is_retry(client: httpx.Client) -> None:
    service = FakeService(accept).start()
    service.down()  # nothing listens on its port any more
    outcome = WebhookChannel(service.url, SecretStr(HOOK_SECRET), client=client).send(
        trigger(make_alert())
    )
    assert outcome.status == "retry"
    assert outcome.reason.startswith("ConnectError")


def test_timeout_is_retry(hook: FakeService) -> None:
    hook.script(Reply(200, b"ok", delay=1.0))
    with http_client(timeout=0.2, connect=0.2, trust_env=False) as short:
        outcome = WebhookChannel(hook.url, SecretStr(HOOK_SECRET), client=short).send(
            trigger(make_alert())
        )
    assert outcome.status == "retry"
    assert "Timeout" in outcome.reason


def test_worst_outcome_prefers_retry_over_permanent() -> None:
    ok, bad, later = (
        Outcome("delivered", "ok"),
        Outcome("permanent", "400"),
        Outcome("retry", "503"),
    )
    assert worst([]).status == "delivered"
    assert worst([ok, bad]) == bad
    assert worst([bad, later, ok]) == later


# --- Slack ----------------------------------------------------------------------------------------


def slack_channel(service: FakeService, client: httpx.Client) -> SlackChannel:
    return SlackChannel(
        SecretStr(f"{service.url}/services/T000/B000/{SLACK_SECRET}"),
        client=client,
        link_template="https://grafana.example/d/posmon?var-alert_id={alert_id}",
    )


def test_slack_message_is_readable(client: httpx.Client) -> None:
    alert = make_alert()
    with running(slack) as service:
        outcome = slack_channel(service, client).send(trigger(alert))
        [request] = service.requests()
    assert outcome.status == "delivered"
    assert request.request.path == f"/services/T000/B000/{SLACK_SECRET}"
    body = request.json()
    assert body["text"] == f"[critical] failed_then_debited — {alert.summary}"
    [block] = body["blocks"]
    text = block["text"]["text"]
    assert "*[critical] failed_then_debited*" in text
    assert "merchant M-01 · terminal T-0042" in text
    assert "debited 35.00 EUR" in text
    assert "terminal T-0042 · 35.00 EUR at risk" in text  # from the alert's typed money fields
    assert f"<https://grafana.example/d/posmon?var-alert_id={alert.alert_id}|" in text


def test_slack_group_lists_its_alerts_under_the_group_summary(client: httpx.Client) -> None:
    alerts = [make_alert(n, summary=f"case <{n}>") for n in range(25)]
    with running(slack) as service:
        slack_channel(service, client).send(trigger(*alerts, summary="25 ghost debits at M-01"))
        body = service.requests()[0].json()
    assert body["text"] == "[critical] 25 x failed_then_debited — 25 ghost debits at M-01"
    assert len(body["blocks"]) == 1 + 20 + 1  # headline, 20 alerts, "and 5 more"
    assert "case &lt;0&gt;" in body["blocks"][1]["text"]["text"]  # Slack's mrkdwn escaping
    assert body["blocks"][-1]["elements"][0]["text"] == "and 5 more"


@pytest.mark.parametrize(
    ("reply", "status", "retry_after"),
    [
        (text_reply(400, "invalid_payload"), "permanent", None),
        (text_reply(403, "invalid_token"), "permanent", None),
        (text_reply(404, "no_service"), "permanent", None),
        (text_reply(429, "rate_limited", ("Retry-After", "1")), "retry", 1.0),
        (text_reply(500, "rollup_error"), "retry", None),
    ],
)
def test_slack_error_answers(
    client: httpx.Client, reply: Reply, status: str, retry_after: float | None
) -> None:
    with running(slack) as service:
        service.script(reply)
        outcome = slack_channel(service, client).send(trigger(make_alert()))
    assert (outcome.status, outcome.retry_after) == (status, retry_after)
    assert reply.body.decode() in outcome.reason
    assert SLACK_SECRET not in outcome.reason


def test_slack_answers_invalid_payload_for_an_empty_message() -> None:
    with running(slack) as service, http_client(trust_env=False) as c:
        response = c.post(f"{service.url}/services/x", json={"attachments": []})
    assert (response.status_code, response.text) == (400, "invalid_payload")


def test_slack_has_no_resolve(client: httpx.Client) -> None:
    with running(slack) as service:
        channel = slack_channel(service, client)
        alert = make_alert()
        outcome = channel.send(Notification("resolve", (alert,), alert.alert_id))
        assert not channel.supports_resolve
        assert outcome.status == "delivered"
        assert service.requests() == []


def test_slack_url_is_absent_from_failures(client: httpx.Client) -> None:
    service = FakeService(slack).start()
    channel = slack_channel(service, client)
    service.down()
    outcome = channel.send(trigger(make_alert()))
    assert outcome.status == "retry"
    assert SLACK_SECRET not in outcome.reason


# --- webhook --------------------------------------------------------------------------------------


def test_webhook_body_is_signed_and_timestamped(hook: FakeService, client: httpx.Client) -> None:
    alerts = (make_alert(0), make_alert(1))
    channel = WebhookChannel(
        f"{hook.url}/posmon", SecretStr(HOOK_SECRET), client=client, clock=lambda: 1_790_000_000.5
    )
    assert channel.send(Notification("trigger", alerts, "M-01", "2 alerts")).status == "delivered"

    [recorded] = hook.requests()
    request = recorded.request
    signature = request.headers["X-Posmon-Signature"]
    assert signature.startswith("sha256=")
    assert verify_signature(request.body, signature, HOOK_SECRET)
    assert not verify_signature(request.body, signature, "wrong secret")
    assert not verify_signature(request.body + b" ", signature, HOOK_SECRET)
    assert request.headers["X-Posmon-Timestamp"] == "1790000000"
    body = request.json()
    assert (body["kind"], body["group_key"], body["summary"]) == ("trigger", "M-01", "2 alerts")
    assert tuple(Alert.model_validate(a) for a in body["alerts"]) == alerts


# --- Alertmanager (shape; the real server is in test_alertmanager.py) -----------------------------


def test_alertmanager_body(hook: FakeService, client: httpx.Client) -> None:
    alert = make_alert()
    resolved_at = datetime(2026, 11, 2, 13, 0, tzinfo=UTC)
    channel = AlertmanagerChannel(
        hook.url + "/",
        client=client,
        generator_url="https://grafana.example/alerts/{alert_id}?m={merchant_id}",
        now=lambda: resolved_at,
    )
    assert channel.send(trigger(alert)).status == "delivered"
    assert channel.send(Notification("resolve", (alert,), alert.alert_id)).status == "delivered"

    firing, resolved = hook.requests()
    assert firing.request.path == "/api/v2/alerts"
    [posted] = firing.json()
    assert posted["labels"] == {
        "alertname": "posmon_failed_then_debited",
        "detector": "failed_then_debited",
        "severity": "critical",
        "merchant_id": "M-01",
        "terminal_id": "T-0042",
        "alert_id": alert.alert_id,
    }
    assert posted["annotations"]["summary"] == alert.summary
    assert json.loads(posted["annotations"]["description"]) == alert.details
    assert " " not in posted["annotations"]["description"]
    assert posted["startsAt"] == "2026-11-02T12:00:00+00:00"
    assert "endsAt" not in posted
    assert posted["generatorURL"] == f"https://grafana.example/alerts/{alert.alert_id}?m=M-01"
    assert "tok_9f31aa00c1" not in firing.request.body.decode()
    assert resolved.json()[0]["endsAt"] == resolved_at.isoformat()


# --- console and file -----------------------------------------------------------------------------


def test_console_prints_one_line_per_alert() -> None:
    out = io.StringIO()
    channel = ConsoleChannel(Console(file=out, width=300, color_system=None))
    alert = make_alert(summary="odd [bold]markup[/bold] in a summary")
    assert channel.send(trigger(alert)).status == "delivered"
    assert channel.send(Notification("resolve", (alert,), "g")).status == "delivered"
    first, second = out.getvalue().splitlines()
    assert first == (
        f"[critical] failed_then_debited odd [bold]markup[/bold] in a summary ({alert.alert_id})"
    )
    assert second.startswith("RESOLVED [critical] failed_then_debited")


def test_file_appends_one_line_per_notification(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    channel = FileChannel(path, clock=lambda: 1_790_000_000.0)
    alerts = (make_alert(0), make_alert(1))
    assert channel.send(Notification("trigger", alerts, "M-01", "two")).status == "delivered"
    assert channel.send(Notification("resolve", alerts[:1], "M-01")).status == "delivered"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [
        {
            "sent_at": "2026-09-21T14:13:20+00:00",
            "kind": "trigger",
            "group_key": "M-01",
            "summary": "two",
            "alert_ids": [alerts[0].alert_id, alerts[1].alert_id],
        },
        {
            "sent_at": "2026-09-21T14:13:20+00:00",
            "kind": "resolve",
            "group_key": "M-01",
            "summary": alerts[0].summary,
            "alert_ids": [alerts[0].alert_id],
        },
    ]


def test_file_write_failure_is_retry(tmp_path: Path) -> None:
    channel = FileChannel(tmp_path / "missing" / "audit.jsonl")
    outcome = channel.send(trigger(make_alert()))
    assert outcome.status == "retry"
    assert "FileNotFoundError" in outcome.reason


# --- secrets and the notification itself ---------------------------------------------------


def test_secrets_are_absent_from_repr(client: httpx.Client) -> None:
    channels = [
        PagerDutyChannel(SecretStr(ROUTING_KEY), client=client),
        SlackChannel(SecretStr(f"https://hooks.slack.com/services/{SLACK_SECRET}"), client=client),
        WebhookChannel("https://hooks.example/posmon", SecretStr(HOOK_SECRET), client=client),
    ]
    for channel in channels:
        text = f"{channel!r} {channel}"
        for secret in (ROUTING_KEY, SLACK_SECRET, HOOK_SECRET):
            assert secret not in text
        assert "**********" in text


def test_a_notification_needs_an_alert() -> None:
    with pytest.raises(ValueError, match="at least one alert"):
        Notification("trigger", (), "g")


def test_slack_shows_no_money_for_a_rule_that_puts_none_at_risk(client: httpx.Client) -> None:
    """Money comes from `amount_at_risk_minor` and `currency`, never from `details` keys."""
    alert = make_alert(detector="large_amount", severity="warning").model_copy(
        update={"amount_at_risk_minor": None}
    )
    with running(slack) as service:
        slack_channel(service, client).send(trigger(alert))
        text = service.requests()[0].json()["blocks"][0]["text"]["text"]
    assert "at risk" not in text
    assert "merchant M-01 · terminal T-0042\n" in text
