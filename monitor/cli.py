"""The `posmon` command (CONTRACT section 4): the only place that wires objects together.

A problem the user can fix (a missing file, a bad config) ends the command with one line on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry
from rich.console import Console

from monitor import __version__
from monitor.alerts import alert_json_schema
from monitor.demo import DemoOptions, run_demo
from monitor.dispatch import Dispatcher
from monitor.endpoints import Endpoints
from monitor.events import event_json_schema
from monitor.files import JsonlSink, read_messages
from monitor.kafka import produce_lines
from monitor.oncall import retry_policy, run_dispatcher
from monitor.pipeline import MemorySource, Stats, run
from monitor.scoring import Scorer
from monitor.service import Service
from monitor.settings import ConfigError, load_policy, load_settings
from monitor.simulate import Simulation, SimulationSpec, write_simulation
from monitor.summary import print_summary


class UsageError(Exception):
    """A problem on the user's side; reported as one line."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.handler(args)
    except (UsageError, ConfigError) as exc:
        print(f"posmon: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("posmon: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="posmon",
        description="Real-time transaction anomaly monitor for card terminals (POS).",
    )
    parser.add_argument("--version", action="version", version=f"posmon {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    replay = sub.add_parser(
        "replay",
        help="score a JSONL file of events exactly as the stream would (a backtest)",
        description="Score a JSONL file of events as the stream would, and write the alerts.",
    )
    replay.add_argument("input", help="events, one JSON object per line ('-' for stdin)")
    replay.add_argument("--alerts", required=True, type=Path, help="where to write alerts (JSONL)")
    replay.add_argument(
        "--dlq", type=Path, help="where to write rejected lines (default: ALERTS.dlq.jsonl)"
    )
    replay.add_argument("--config", type=Path, help="YAML configuration with the detection policy")
    replay.add_argument("--batch-size", type=int, default=1000, help=argparse.SUPPRESS)
    replay.add_argument("--quiet", action="store_true", help="print no summary")
    replay.set_defaults(handler=_replay)

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
    simulate.set_defaults(handler=_simulate)

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
    run_.set_defaults(handler=_run)

    dispatch = sub.add_parser(
        "dispatch",
        help="deliver alerts from the alerts topic to the configured on-call channels",
        description="Consume posmon.alerts in its own group; route, group, inhibit, dedup and"
        " deliver to the channels of the `dispatch:` section; park what cannot be delivered.",
    )
    dispatch.add_argument("--config", type=Path, help="YAML configuration (or POSMON_CONFIG)")
    dispatch.add_argument("--bootstrap-servers", help="Kafka bootstrap servers, HOST:PORT[,...]")
    dispatch.set_defaults(handler=_dispatch)

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
    demo.set_defaults(handler=_demo)

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
    report.set_defaults(handler=_report)

    schema = sub.add_parser("schema", help="print the JSON Schema of the event or the alert")
    schema.add_argument("which", choices=["events", "alert"])
    schema.set_defaults(handler=_schema)
    return parser


def _replay(args: argparse.Namespace) -> int:
    policy = load_policy(args.config)
    if args.input != "-" and not Path(args.input).is_file():
        raise UsageError(f"no such input file: {args.input}")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    dlq = args.dlq or args.alerts.with_name(f"{_stem(args.alerts)}.dlq.jsonl")
    try:
        sink = JsonlSink(args.alerts, dlq)
    except OSError as exc:
        raise UsageError(f"cannot write output: {exc.filename}: {exc.strerror}") from exc
    scorer, stats = Scorer(policy), Stats()
    _tune_gc()
    started = time.perf_counter()
    try:
        run(MemorySource(read_messages(args.input), args.batch_size), sink, scorer, stats)
    except OSError as exc:
        raise UsageError(f"cannot read {args.input}: {exc.strerror}") from exc
    finally:
        sink.close()
    elapsed = time.perf_counter() - started
    if not args.quiet:
        rate = stats.messages / elapsed if elapsed > 0 else 0.0
        print_summary(
            Console(),
            title="posmon replay",
            scorer=scorer,
            stats=stats,
            alerts=args.alerts,
            dead_letters=dlq,
            head=(("lines read", f"{stats.messages:,}"),),
            tail=(("time", f"{elapsed:.2f} s ({rate:,.0f} lines/s)"),),
        )
    return 0


def _stem(path: Path) -> str:
    return path.name.removesuffix(".jsonl").removesuffix(".json")


def _tune_gc() -> None:
    """Switch the cycle collector off while scoring.

    The state is millions of small long-lived objects that the collector would rescan again and
    again (a fifth of the replay's time, measured), and the scoring path makes no reference
    cycles (tests/test_memory.py proves it), so reference counting frees everything.
    """
    gc.collect()
    gc.freeze()
    gc.disable()


def _simulate(args: argparse.Namespace) -> int:
    if args.hours <= 0 or args.merchants < 1:
        raise UsageError("--hours must be positive and --merchants at least 1")
    if args.topic is not None:
        return _simulate_to_kafka(args)
    if args.rate is not None or args.bootstrap_servers is not None:
        raise UsageError("--rate and --bootstrap-servers go with --topic")
    labels = args.labels or args.out.with_name(f"{_stem(args.out)}.labels.jsonl")
    spec = SimulationSpec(
        seed=args.seed, hours=args.hours, merchants=args.merchants, incidents=not args.no_incidents
    )
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        labels.parent.mkdir(parents=True, exist_ok=True)
        stats = write_simulation(spec, args.out, labels)
    except OSError as exc:
        raise UsageError(f"cannot write {exc.filename}: {exc.strerror}") from exc
    print(f"wrote {args.out} and {labels}: {stats}", file=sys.stderr)
    return 0


def _simulate_to_kafka(args: argparse.Namespace) -> int:
    if args.rate is not None and args.rate <= 0:
        raise UsageError("--rate must be positive")
    settings = load_settings(None, flags={"kafka.bootstrap_servers": args.bootstrap_servers}).kafka
    spec = SimulationSpec(
        seed=args.seed, hours=args.hours, merchants=args.merchants, incidents=not args.no_incidents
    )
    print(f"producing to {args.topic} on {settings.bootstrap_servers} ...", file=sys.stderr)
    sent = produce_lines(settings, args.topic, Simulation(spec).lines(), rate=args.rate)
    print(f"produced {sent:,} events to {args.topic}", file=sys.stderr)
    return 0


def _stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT: the loops finish their batch and stop cleanly."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def _log_to_stderr() -> logging.Logger:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)  # its INFO is a line per connection
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its INFO names URLs; Slack's is a secret
    return logging.getLogger("posmon")


def _run(args: argparse.Namespace) -> int:
    stop = _stop_on_signals()
    settings = load_settings(
        args.config,
        flags={
            "kafka.bootstrap_servers": args.bootstrap_servers,
            "kafka.topic": args.topic,
            "kafka.group": args.group,
            "metrics.port": args.metrics_port,
        },
    )
    log = _log_to_stderr()
    service = Service(settings, stop=stop)
    log.info(
        "consuming %s on %s as group %s; /metrics, /healthz, /readyz on port %d",
        settings.kafka.topic,
        settings.kafka.bootstrap_servers,
        settings.kafka.group,
        service.endpoints.port,
    )
    _tune_gc()
    dispatching = None
    if settings.dispatch is not None:
        dispatching = threading.Thread(
            target=run_dispatcher,
            args=(settings.kafka, settings.dispatch),
            kwargs={"stop": stop, "policy": retry_policy(settings), "registry": service.registry},
            name="posmon-dispatch",
        )
        dispatching.start()
    service.run()
    if dispatching is not None:
        stop.set()
        dispatching.join()
    log.info(
        "stopped: %d messages, %d alerts raised",
        service.stats.messages,
        sum(service.stats.raised.values()),
    )
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    stop = _stop_on_signals()
    settings = load_settings(args.config, flags={"kafka.bootstrap_servers": args.bootstrap_servers})
    if settings.dispatch is None:
        raise UsageError("the configuration has no `dispatch:` section (channels and routes)")
    log = _log_to_stderr()
    registry = CollectorRegistry()
    running: list[Dispatcher] = []
    stall_after = settings.run.stall_after

    def health() -> tuple[bool, str]:
        turned = running[0].last_turn if running else None
        if turned is None:
            return (not running), "starting" if not running else "the loop has not turned yet"
        idle = time.monotonic() - turned
        return idle <= stall_after, f"the loop turned {idle:.0f} s ago"

    def ready() -> tuple[bool, str]:
        ok = bool(running) and running[0].last_turn is not None
        return ok, "ready" if ok else "not ready: starting"

    endpoints = Endpoints(
        settings.metrics.host, settings.metrics.port, registry, health=health, ready=ready
    ).start()
    log.info("dispatching %s; /metrics on port %d", settings.kafka.alerts_topic, endpoints.port)
    try:
        dispatcher = run_dispatcher(
            settings.kafka,
            settings.dispatch,
            stop=stop,
            policy=retry_policy(settings),
            registry=registry,
            started=running.append,
        )
    finally:
        endpoints.stop()
    log.info("stopped: %s", dispatcher.stats)
    return 0


def _demo(args: argparse.Namespace) -> int:
    if args.duration <= 0 or args.rate <= 0:
        raise UsageError("--duration and --rate must be positive")
    options = DemoOptions(
        duration=args.duration, rate=args.rate, metrics_port=args.metrics_port, out=args.out
    )
    return run_demo(options, Console())


def _report(args: argparse.Namespace) -> int:
    try:  # matplotlib is an extra: every other command runs without it
        from monitor.report import ReportError, build_report  # noqa: PLC0415
    except ImportError as exc:
        raise UsageError(
            f"posmon report needs matplotlib: pip install 'posmon[report]' ({exc})"
        ) from exc
    try:
        page = build_report(args.alerts, args.out, dead_letters=args.dlq, title=args.title)
    except ReportError as exc:
        raise UsageError(str(exc)) from exc
    print(f"report: {page}")
    return 0


def _schema(args: argparse.Namespace) -> int:
    schema = event_json_schema() if args.which == "events" else alert_json_schema()
    print(json.dumps(schema, indent=2))
    return 0
