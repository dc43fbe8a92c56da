"""The `dispatch:` section: validated at start-up, and which routes each alert takes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from monitor.core.alerts import Alert, alert_id
from monitor.paging.routing import (
    ChannelConfig,
    DispatchConfig,
    Inhibition,
    Matcher,
    Route,
    routes_for,
)

T0 = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)

EXAMPLE = """
dispatch:
  channels:
    pagerduty-risk: {type: pagerduty, secret_env: PD_RISK_KEY,
                     link_template: "https://grafana.example/d/posmon?var-alert={alert_id}"}
    pagerduty-ops: {type: pagerduty, secret_file: /run/secrets/pd-ops}
    slack-risk: {type: slack, secret_env: SLACK_RISK_URL}
    alertmanager: {type: alertmanager, url: "http://alertmanager:9093"}
    audit: {type: file, path: /var/lib/posmon/notifications.jsonl}
  routes:
    - name: operations
      match: {detectors: [terminal_failure_spike, missing_reversal]}
      channels: [pagerduty-ops, alertmanager]
      group_by: [detector, terminal_id]
      group_wait: 30s
      group_interval: 5m
      repeat_interval: 4h
      storm_limit: {max_notifications: 20, per: 5m}
    - name: audit
      channels: [audit]
      continue: true
    - name: risk-pager
      match: {severities: [critical]}
      channels: [pagerduty-risk, slack-risk]
      group_by: [detector, merchant_id]
      group_wait: 10s
    - name: risk-warnings
      match: {severities: [warning, info]}
      channels: [slack-risk]
  default_route: {channels: [slack-risk]}
  inhibitions:
    - source: {detectors: [terminal_failure_spike]}
      target: {detectors: [missing_reversal]}
      equal: [terminal_id]
      hold: 15m
"""


def example() -> DispatchConfig:
    return DispatchConfig.model_validate(yaml.safe_load(EXAMPLE)["dispatch"])


def alert(detector: Any, severity: Any = "warning", merchant: str = "M-01") -> Alert:
    return Alert(
        alert_id=alert_id(detector, merchant),
        detector=detector,
        severity=severity,
        terminal_id="T-0001",
        merchant_id=merchant,
        card_id=None,
        first_seen=T0,
        last_seen=T0,
        event_ids=["e1"],
        count=1,
        summary="s",
        details={},
    )


def test_example_parses_with_durations_and_defaults() -> None:
    config = example()
    ops = config.route("operations")
    assert (ops.group_wait, ops.group_interval, ops.repeat_interval) == (30, 300, 4 * 3600)
    assert (ops.storm_limit.max_notifications, ops.storm_limit.per) == (20, 300)
    assert config.route("audit").continue_ is True
    risk = config.route("risk-pager")
    assert (risk.group_wait, risk.group_interval, risk.repeat_interval) == (10, 300, 14400)
    assert config.route("risk-warnings").group_by == ["detector", "merchant_id"]
    assert config.default_route is not None and config.default_route.name == "default"
    assert config.inhibitions[0].hold == 900
    assert config.channels["pagerduty-risk"].secret_env == "PD_RISK_KEY"


def test_default_inhibition_is_spike_mutes_missing_reversal_on_the_terminal() -> None:
    config = DispatchConfig(
        channels={"console": ChannelConfig(type="console")},
        default_route=Route(name="default", channels=["console"]),
    )
    assert config.inhibitions == [
        Inhibition(
            source=Matcher(detectors=["terminal_failure_spike"]),
            target=Matcher(detectors=["missing_reversal"]),
            equal=["terminal_id"],
        )
    ]


@pytest.mark.parametrize(
    ("detector", "severity", "routes"),
    [
        ("terminal_failure_spike", "warning", ["operations"]),
        ("missing_reversal", "warning", ["operations"]),
        # `audit` matches everything and continues; the first later match stops the search.
        ("failed_then_debited", "critical", ["audit", "risk-pager"]),
        ("duplicate_debit", "critical", ["audit", "risk-pager"]),
        ("small_amount_burst", "warning", ["audit", "risk-warnings"]),
        ("large_amount", "info", ["audit", "risk-warnings"]),
    ],
)
def test_routes_for(detector: str, severity: str, routes: list[str]) -> None:
    chosen = routes_for(example(), alert(detector, severity))
    assert [r.name for r in chosen] == routes


def test_warnings_go_to_slack_only() -> None:
    config = example()
    (route,) = [r for r in routes_for(config, alert("large_amount")) if r.name != "audit"]
    assert route.channels == ["slack-risk"]


def test_unmatched_alert_takes_the_default_route() -> None:
    config = DispatchConfig.model_validate(
        {
            "channels": {"ops": {"type": "console"}, "risk": {"type": "console"}},
            "routes": [
                {
                    "name": "ops",
                    "match": {"detectors": ["terminal_failure_spike"]},
                    "channels": ["ops"],
                }
            ],
            "default_route": {"channels": ["risk"]},
        }
    )
    assert [r.name for r in routes_for(config, alert("stale_preauth"))] == ["default"]
    assert [r.name for r in routes_for(config, alert("terminal_failure_spike"))] == ["ops"]


def test_no_route_and_no_default_means_no_routes_for_unmatched() -> None:
    config = DispatchConfig.model_validate(
        {
            "channels": {"ops": {"type": "console"}},
            "routes": [{"name": "ops", "match": {"merchant_ids": ["M-02"]}, "channels": ["ops"]}],
        }
    )
    assert routes_for(config, alert("large_amount", merchant="M-01")) == []
    assert [r.name for r in routes_for(config, alert("large_amount", merchant="M-02"))] == ["ops"]


CONSOLE = {"c": {"type": "console"}}


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"channels": CONSOLE}, "at least one route or a default_route"),
        (
            {"channels": CONSOLE, "routes": [{"name": "r", "channels": ["nope"]}]},
            "route 'r' names unknown channel(s) nope",
        ),
        ({"channels": CONSOLE, "default_route": {"channels": ["nope"]}}, "unknown channel"),
        (
            {
                "channels": CONSOLE,
                "routes": [{"name": "r", "channels": ["c"]}, {"name": "r", "channels": ["c"]}],
            },
            "route names must be unique: r",
        ),
        (
            {
                "channels": CONSOLE,
                "default_route": {"channels": ["c"], "match": {"detectors": ["large_amount"]}},
            },
            "default_route takes every unmatched alert",
        ),
        (
            {"channels": CONSOLE, "routes": [{"name": "r", "channels": ["c"], "group_by": ["x"]}]},
            "group_by",
        ),
        (
            {"channels": CONSOLE, "routes": [{"name": "r", "channels": ["c"], "colour": "red"}]},
            "Extra inputs are not permitted",
        ),
        (
            {"channels": CONSOLE, "routes": [{"name": "r", "channels": ["c"], "group_wait": "5x"}]},
            "not a duration",
        ),
        (
            {
                "channels": CONSOLE,
                "routes": [{"name": "r", "channels": ["c"], "match": {"detectors": ["typo"]}}],
            },
            "detectors",
        ),
        ({"channels": CONSOLE, "routes": [{"name": "r", "channels": []}]}, "at least 1 item"),
    ],
)
def test_invalid_dispatch_sections_are_refused(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DispatchConfig.model_validate(section)


@pytest.mark.parametrize(
    ("channel", "message"),
    [
        ({"type": "pagerduty", "routing_key": "R0ENKEY"}, "routing_key: a secret must not be"),
        ({"type": "webhook", "url": "http://x", "secret": "s3cr3t"}, "secret: a secret must not"),
        ({"type": "webhook", "url": "http://x"}, "needs its signing key"),
        (
            {"type": "slack", "secret_env": "S", "link_template": "https://g/{alert}"},
            r"link_template .* placeholders: \{alert_id\}",
        ),
        ({"type": "slack", "secret_env": "S", "link_template": "https://g/{"}, "link_template"),
        ({"type": "slack", "token": "xoxb-1"}, "token: a secret must not be written"),
        ({"type": "webhook", "url": "http://x", "password": "pw"}, "name the environment variable"),
        ({"type": "pagerduty"}, "needs its routing key in secret_env or secret_file"),
        ({"type": "pagerduty", "secret_env": "A", "secret_file": "/f"}, "not both"),
        ({"type": "pagerduty", "secret_env": "not a name"}, "secret_env"),
        # POSMON_ names settings: a secret there would be read as one (and refused as unknown)
        (
            {"type": "pagerduty", "secret_env": "POSMON_PD_KEY"},
            "POSMON_PD_KEY: a secret's variable must not start with POSMON_",
        ),
        ({"type": "slack", "secret_env": "posmon_hook"}, "must not start with POSMON_"),
        ({"type": "webhook", "secret_env": "K"}, "a webhook channel needs a url"),
        ({"type": "alertmanager"}, "an? alertmanager channel needs a url"),
        ({"type": "slack"}, "slack channel needs its webhook URL"),
        # the incoming-webhook URL is the credential itself (issue 11)
        ({"type": "slack", "url": "https://hooks.slack.example/T/B/X"}, "URL is itself a secret"),
        ({"type": "file"}, "a file channel needs a path"),
        ({"type": "console", "path": "/x"}, "path applies to file channels only"),
        ({"type": "sms"}, "type"),
    ],
)
def test_invalid_channels_are_refused(channel: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ChannelConfig.model_validate(channel)


@pytest.mark.parametrize(
    "channel",
    [
        {"type": "console"},
        {"type": "file", "path": "/tmp/n.jsonl"},
        {"type": "webhook", "url": "https://hooks.example/posmon", "secret_env": "HMAC_KEY"},
        {"type": "slack", "secret_file": "/run/secrets/slack-webhook-url"},
        {"type": "pagerduty", "secret_file": "/run/secrets/pd", "url": "https://pd.example"},
    ],
)
def test_valid_channels(channel: dict[str, Any]) -> None:
    ChannelConfig.model_validate(channel)


def test_config_is_frozen() -> None:
    config = example()
    with pytest.raises(ValidationError):
        config.routes[0].channels = []  # type: ignore[misc]
