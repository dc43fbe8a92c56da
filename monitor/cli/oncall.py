"""`posmon dispatch`: the dispatch loop wired to Kafka and to the configured channels (entry layer).

Channel secrets are read here, at start-up, from the environment variable or file the
configuration names (never from the YAML itself), and held as `SecretStr`. The commands build
the channels first, before any connection is made: a missing secret stops the command at once
with one line (exit 2), not a dispatch thread later.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from pydantic import SecretStr
from rich.console import Console

from monitor.channels.alertmanager import AlertmanagerChannel
from monitor.channels.base import http_client
from monitor.channels.console import ConsoleChannel
from monitor.channels.file import FileChannel
from monitor.channels.pagerduty import PagerDutyChannel
from monitor.channels.slack import SlackChannel
from monitor.channels.webhook import WebhookChannel
from monitor.cli.settings import ConfigError, Settings
from monitor.paging.delivery import Deliverer, RetryPolicy
from monitor.paging.dispatcher import Dispatcher, run_dispatch
from monitor.paging.ledger import Ledger
from monitor.paging.metrics import DispatchMetrics
from monitor.paging.notification import Channel
from monitor.paging.routing import ChannelConfig, DispatchConfig
from monitor.streaming.settings import KafkaSettings
from monitor.streaming.sink import KafkaOutbox
from monitor.streaming.source import KafkaSource
from monitor.streaming.topics import ensure_topics, read_ledger

LEDGER_TOPIC = "posmon.dispatch.ledger"


def retry_policy(settings: Settings) -> RetryPolicy:
    d = settings.delivery
    try:
        return RetryPolicy(initial=d.initial, max_delay=d.max_delay, deadline=d.deadline)
    except ValueError as exc:  # e.g. initial above max_delay: one line, exit 2
        raise ConfigError(f"delivery: {exc}") from exc


def secret(name: str, config: ChannelConfig, environ: Mapping[str, str]) -> SecretStr:
    if config.secret_env is not None:
        value = environ.get(config.secret_env)
        if not value:
            raise ConfigError(
                f"channel {name}: environment variable {config.secret_env} is not set"
            )
        return SecretStr(value)
    if config.secret_file is not None:
        try:
            return SecretStr(Path(config.secret_file).read_text(encoding="utf-8").strip())
        except OSError as exc:
            raise ConfigError(
                f"channel {name}: cannot read {config.secret_file}: {exc.strerror}"
            ) from exc
    raise ConfigError(f"channel {name}: no secret_env or secret_file")


def build_channels(
    config: DispatchConfig,
    *,
    environ: Mapping[str, str] | None = None,
    console: Console | None = None,
) -> dict[str, Channel]:
    environ = os.environ if environ is None else environ
    client = http_client()
    channels: dict[str, Channel] = {}
    for name, c in config.channels.items():
        if c.type == "alertmanager":
            assert c.url is not None
            channels[name] = AlertmanagerChannel(c.url, client=client)
        elif c.type == "pagerduty":
            channels[name] = PagerDutyChannel(
                secret(name, c, environ), client=client, **({"url": c.url} if c.url else {})
            )
        elif c.type == "slack":
            url = (
                secret(name, c, environ)
                if (c.secret_env or c.secret_file)
                else SecretStr(c.url or "")
            )
            channels[name] = SlackChannel(url, client=client, link_template=c.link_template)
        elif c.type == "webhook":
            assert c.url is not None
            channels[name] = WebhookChannel(c.url, secret(name, c, environ), client=client)
        elif c.type == "console":
            channels[name] = ConsoleChannel(console or Console())
        else:
            assert c.path is not None
            channels[name] = FileChannel(Path(c.path))
    return channels


def run_dispatcher(
    kafka: KafkaSettings,
    config: DispatchConfig,
    channels: Mapping[str, Channel],
    *,
    stop: threading.Event,
    policy: RetryPolicy | None = None,
    metrics: DispatchMetrics | None = None,
    started: Callable[[Dispatcher], None] = lambda _: None,
) -> Dispatcher:
    """Consume the alerts topic in its own group and deliver to `channels` (`build_channels`)
    until `stop` is set."""
    alerts = kafka.alerts_topic
    dlq = f"{alerts}.dlq"
    ensure_topics(kafka, {LEDGER_TOPIC: 1, dlq: 1})
    source_settings = kafka.model_copy(
        update={"topic": alerts, "group": f"{kafka.group}-dispatch", "rebuild": "committed"}
    )
    ledger = Ledger.restore(read_ledger(kafka, LEDGER_TOPIC))
    outbox = KafkaOutbox(kafka, ledger_topic=LEDGER_TOPIC, dlq_topic=dlq, stop=stop)
    deliverer = Deliverer(
        policy or RetryPolicy(), now=time.monotonic, sleep=stop.wait, stopping=stop.is_set
    )
    dispatcher = Dispatcher(
        config, channels, deliverer, outbox, ledger=ledger, metrics=metrics, clock=time.time
    )
    source = KafkaSource(source_settings)
    started(dispatcher)
    try:
        run_dispatch(source, dispatcher, now=time.time, stopping=stop.is_set)
    finally:
        source.close()
        outbox.close()
    return dispatcher
