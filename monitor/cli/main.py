"""The `posmon` command (docs/contract.md, "Commands"): the parser and `main`.

A problem the user can fix (a missing file, a bad config, a Kafka broker that does not answer
within `kafka.startup_timeout`) ends the command with one line on stderr and exit status 2,
never a traceback; the line is `printable` (it can quote a path or a value from the input).
The handlers are in `commands`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path

from monitor import __version__
from monitor.cli import commands
from monitor.cli.logs import log_to_stderr
from monitor.cli.settings import ConfigError
from monitor.core.labels import LabelError, label_of
from monitor.core.pans import holds_pan
from monitor.core.text import printable
from monitor.streaming.connect import BrokerUnreachable


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    log_to_stderr(logging.WARNING)
    try:
        status: int = args.handler(args)
    except (commands.UsageError, ConfigError, BrokerUnreachable) as exc:
        print(f"posmon: error: {printable(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("posmon: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return status


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="posmon",
        description="Real-time transaction anomaly monitor for card terminals (POS).",
    )
    parser.add_argument("--version", action="version", version=f"posmon {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _replay(sub)

    simulate = sub.add_parser(
        "simulate",
        help="write realistic terminal traffic with labelled injected incidents",
        description="Write simulated POS traffic (JSONL) and a labels file beside it.",
    )
    target = simulate.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, help="events file to write (JSONL)")
    target.add_argument("--topic", help="Kafka topic to produce to instead, keyed by merchant_id")
    simulate.add_argument("--labels", type=Path, help="labels file (default: OUT.labels.jsonl)")
    simulate.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (with --topic)")
    simulate.add_argument(
        "--rate",
        type=float,
        help="events per second to produce (with --topic; default: as fast as possible)",
    )
    simulate.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    simulate.add_argument("--hours", type=float, default=2.0, help="simulated hours (default 2)")
    simulate.add_argument(
        "--merchants", type=int, default=40, help="number of merchants (default 40)"
    )
    simulate.add_argument("--no-incidents", action="store_true", help="background traffic only")
    simulate.set_defaults(handler=commands.simulate)

    run_ = sub.add_parser(
        "run",
        help="consume the topic, score, publish alerts, serve /metrics /healthz /readyz",
        description="The production monitor: consume, score, publish alerts to posmon.alerts and"
        " rejects to <topic>.dlq. Settings: flags, then POSMON_... variables, then the file.",
    )
    run_.add_argument("--config", type=Path, help="YAML configuration (or POSMON_CONFIG)")
    run_.add_argument("--bootstrap-servers", help="Kafka bootstrap servers, HOST:PORT[,...]")
    run_.add_argument("--topic", help="input topic (default pos.events)")
    run_.add_argument("--group", help="consumer group (default posmon)")
    run_.add_argument(
        "--metrics-port", type=int, help="port of /metrics, /healthz, /readyz (default 9464)"
    )
    run_.add_argument(
        "--stage",
        choices=("both", "merchant", "card", "all"),
        help="which stages of the scorer to run (run.stage, default both: the merchant stage on"
        " the topic and the card stage on kafka.cards_topic, right for any number of replicas;"
        " all: one scorer, exact only while one process reads the whole topic)",
    )
    _model_arguments(run_)
    run_.set_defaults(handler=commands.run)

    dispatch = sub.add_parser(
        "dispatch",
        help="deliver alerts from the alerts topic to the configured on-call channels",
        description="Consume posmon.alerts in its own group; route, group, inhibit, dedup and"
        " deliver to the channels of the `dispatch:` section; park what cannot be delivered.",
    )
    dispatch.add_argument("--config", type=Path, help="YAML configuration (or POSMON_CONFIG)")
    dispatch.add_argument("--bootstrap-servers", help="Kafka bootstrap servers, HOST:PORT[,...]")
    dispatch.set_defaults(handler=commands.dispatch)

    demo = sub.add_parser(
        "demo",
        help="the whole system on this machine: embedded broker, simulator, monitor, alerts",
        description="Start an embedded broker, simulated terminals with incidents, the monitor"
        " and /metrics; show live progress and a summary. Ctrl-C stops everything.",
    )
    demo.add_argument(
        "--duration", type=float, default=60.0, help="seconds of traffic (default 60)"
    )
    demo.add_argument("--rate", type=float, default=2000.0, help="events per second (default 2000)")
    demo.add_argument(
        "--metrics-port", type=int, default=0, help="port of /metrics (default: a free one)"
    )
    demo.add_argument(
        "--out", type=Path, default=Path("posmon-demo"), help="where alerts are written"
    )
    _model_arguments(demo)
    demo.set_defaults(handler=commands.demo)

    report = sub.add_parser(
        "report",
        help="an HTML backtest report with charts, from the alerts of a replay",
        description="Charts and tables of a replay's alerts: over time by detector, money at"
        " risk, top merchants and terminals, severities, scores, dead letters by reason.",
    )
    report.add_argument("alerts", type=Path, help="the alerts JSONL written by posmon replay")
    report.add_argument(
        "--out", type=Path, required=True, help="folder for index.html and the charts"
    )
    report.add_argument("--dlq", type=Path, help="the dead letters of the same replay")
    report.add_argument("--title", default="posmon backtest", help="the page's title")
    report.set_defaults(handler=commands.report)

    schema = sub.add_parser("schema", help="print the JSON Schema of the event or the alert")
    schema.add_argument("which", choices=["events", "alert"])
    schema.set_defaults(handler=commands.schema)
    _label(sub)
    # Commands of installed plugins: `posmon train` and `posmon evaluate` (the `models` package).
    for plugin in sorted(entry_points(group="posmon.commands"), key=lambda p: p.name):
        plugin.load()(sub)
    return parser


def _replay(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    replay = sub.add_parser(
        "replay",
        help="score a JSONL file of events exactly as the stream would (a backtest)",
        description="Score a JSONL file of events as the stream would, and write the alerts."
        " The policy comes from the same settings as `posmon run`: POSMON_... variables, then"
        " the file. Outputs replace earlier files only when the replay completes.",
    )
    replay.add_argument("input", help="events, one JSON object per line ('-' for stdin)")
    replay.add_argument("--alerts", required=True, type=Path, help="where to write alerts (JSONL)")
    replay.add_argument(
        "--dlq", type=Path, help="where to write rejected lines (default: ALERTS.dlq.jsonl)"
    )
    replay.add_argument(
        "--config",
        type=Path,
        help="YAML configuration (or POSMON_CONFIG); POSMON_... variables apply as for run",
    )
    _model_arguments(replay)
    replay.add_argument(
        "--feature-log", type=Path, help="write every scored attempt's features here (Parquet)"
    )
    replay.add_argument(
        "--labels",
        type=Path,
        help="the risk team's verdicts (JSONL): each one is used by the label features from its"
        " known_at onwards, as `posmon run` uses the labels topic",
    )
    replay.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="score with N processes (1 to 16): the merchant rules in 16 shards by merchant,"
        " card testing's card scope and the model in this process; the same output for every"
        " N (docs/workers.md). Without it: one scorer, as before",
    )
    replay.add_argument("--batch-size", type=int, default=1000, help=argparse.SUPPRESS)
    replay.add_argument("--quiet", action="store_true", help="print no summary")
    replay.set_defaults(handler=commands.replay)


def _model_arguments(command: argparse.ArgumentParser) -> None:
    choice = command.add_mutually_exclusive_group()
    choice.add_argument(
        "--model", type=Path, metavar="DIR", help="the model artifact (default: the shipped one)"
    )
    choice.add_argument("--no-model", action="store_true", help="no anomaly model")


def _label(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    label = sub.add_parser(
        "label",
        help="append one verdict of the risk team (fraud or genuine) to the labels topic or a file",
        description="Append one verdict on a purchase (--event) or an alert (--alert): to the"
        " labels topic that `posmon run` reads (acknowledged by the broker), or with --out to a"
        " labels file that `posmon replay --labels` reads. Settings as for run: flags, then"
        " POSMON_... variables, then the file.",
    )
    target = label.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--event", metavar="ID", type=_label_text, help="the auth_request's event_id"
    )
    target.add_argument("--alert", metavar="ID", type=_label_text, help="the alert's alert_id")
    verdict = label.add_mutually_exclusive_group(required=True)
    verdict.add_argument(
        "--fraud", dest="verdict", action="store_const", const=1, help="fraud (label 1)"
    )
    verdict.add_argument(
        "--genuine", dest="verdict", action="store_const", const=0, help="genuine (label 0)"
    )
    label.add_argument(
        "--known-at",
        metavar="RFC3339",
        type=_known_at,
        help="when the verdict became known, e.g. 2026-03-02T10:00:00Z (default: now)",
    )
    label.add_argument("--kind", metavar="K", type=_label_text, help="e.g. card_testing")
    label.add_argument("--source", metavar="S", type=_label_text, help="e.g. chargeback")
    label.add_argument(
        "--out", metavar="FILE", type=Path, help="append to this labels file instead (JSONL)"
    )
    label.add_argument("--config", type=Path, help="YAML configuration (or POSMON_CONFIG)")
    label.add_argument("--bootstrap-servers", help="Kafka bootstrap servers, HOST:PORT[,...]")
    label.add_argument("--topic", help="the labels topic (default posmon.labels)")
    label.set_defaults(handler=commands.label)


def _label_text(text: str) -> str:
    """An id, kind or source of a label: 1 to 256 characters, never a card number. The error
    never quotes the value (it may be one)."""
    if not 1 <= len(text) <= 256:
        raise argparse.ArgumentTypeError("must be 1 to 256 characters")
    if holds_pan(text):
        raise argparse.ArgumentTypeError("holds a card number (PAN); give the id, never a PAN")
    return text


def _known_at(text: str) -> str:
    """A label's `known_at`, by the label's own rule (RFC 3339 with an offset)."""
    try:
        label_of({"event_id": "-", "label": 0, "known_at": text})
    except LabelError:
        raise argparse.ArgumentTypeError(
            "must be an RFC 3339 date-time with an offset, e.g. 2026-03-02T10:00:00Z"
        ) from None
    return text
