"""The handlers of the `posmon` commands: the only place that wires objects together.

Each takes the parsed arguments, builds what the command needs (settings, scorer, Kafka edges,
channels), runs it and returns the exit status; `UsageError` is a problem on the user's side,
reported by `main` as one line.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry
from rich.console import Console

from monitor.cli.anomaly import ModelLoadError, model_slot
from monitor.cli.demo import DemoOptions, run_demo
from monitor.cli.health import DispatchProbes, DispatchThread
from monitor.cli.logs import log_to_stderr
from monitor.cli.oncall import build_channels, retry_policy, run_dispatcher
from monitor.cli.scaleout import Clients, StageError, build_services, open_clients
from monitor.cli.service import Service
from monitor.cli.settings import ModelSettings, Settings, config_path, load_settings
from monitor.cli.summary import print_summary
from monitor.cli.workers import SHARDS, Plan, WorkerError, replay_sharded
from monitor.core.alerts import alert_json_schema
from monitor.core.events import event_json_schema
from monitor.core.labels import Label, LabelError, label_of
from monitor.core.text import printable
from monitor.observability.endpoints import Endpoints
from monitor.paging.metrics import DispatchMetrics
from monitor.scoring.model import ModelSlot
from monitor.scoring.pipeline import MemorySource, Stats
from monitor.scoring.pipeline import run as run_scoring
from monitor.scoring.scorer import Scorer
from monitor.simulation.simulator import Simulation, SimulationSpec, write_simulation
from monitor.streaming.client import DeliveryFailed, PublishInterrupted
from monitor.streaming.connect import connect, wait_for_broker
from monitor.streaming.featurelog import FeatureLog
from monitor.streaming.files import (
    JsonlSink,
    OutputCollisionError,
    atomic_paths,
    read_messages,
    refuse_collisions,
)
from monitor.streaming.labelsfile import LabelsError, read_verdicts
from monitor.streaming.labelstopic import send_label
from monitor.streaming.produce import produce_lines


class UsageError(Exception):
    """A problem on the user's side; reported as one line."""


def model_flags(args: argparse.Namespace) -> dict[str, object]:
    """`--model DIR` and `--no-model` as settings (flags win over the file)."""
    return {
        "model.path": getattr(args, "model", None),
        "model.enabled": False if getattr(args, "no_model", False) else None,
    }


def replay(args: argparse.Namespace) -> int:
    """Score a file as `posmon run` scores the stream, with the same settings: `--config` or
    `POSMON_CONFIG`, then `POSMON_...` variables (the policy, `run.dead_letter_raw_bytes`).
    With `--workers N`, the partitioned design in N processes (`_replay_sharded`)."""
    settings = load_settings(args.config, flags=model_flags(args))
    if args.input != "-" and not Path(args.input).is_file():
        raise UsageError(f"no such input file: {args.input}")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if args.workers is not None and not 1 <= args.workers <= SHARDS:
        raise UsageError(f"--workers must be from 1 to {SHARDS} (the merchant shards)")
    dlq = args.dlq or args.alerts.with_name(f"{_stem(args.alerts)}.dlq.jsonl")
    _refuse_collisions(
        {
            "the input": args.input,
            **_config_input(args.config),
            **({} if args.labels is None else {"--labels": args.labels}),
        },
        {"--alerts": args.alerts, "--dlq": dlq},
    )
    # The model and the labels before the outputs: a bad one leaves no temporary file behind.
    try:
        slot = model_slot(settings.model, keep_rows=args.feature_log is not None)
    except ModelLoadError as exc:
        raise UsageError(str(exc)) from exc
    try:
        verdicts = None if args.labels is None else read_verdicts(args.labels)
    except LabelsError as exc:
        raise UsageError(str(exc)) from exc
    try:
        sink = JsonlSink(args.alerts, dlq, input_file=args.input)
    except OSError as exc:
        raise UsageError(f"cannot write output: {exc.filename}: {exc.strerror}") from exc
    feature_log = None if args.feature_log is None else FeatureLog(args.feature_log)
    if args.workers is not None:
        return _replay_sharded(
            args, settings, sink, slot=slot, verdicts=verdicts, feature_log=feature_log, dlq=dlq
        )
    scorer, stats = Scorer(settings.policy, slot), Stats()
    if verdicts is not None:
        scorer.learn(verdicts)
    _tune_gc()
    started = time.perf_counter()
    source = MemorySource(read_messages(args.input), args.batch_size)

    def log_features(_batch: object, _seconds: float) -> None:
        if feature_log is not None and slot is not None:
            for rows in slot.take_rows():
                feature_log.write(rows)

    try:  # the outputs replace earlier ones only when the whole input was scored
        run_scoring(
            source,
            sink,
            scorer,
            stats,
            raw_bytes=settings.run.dead_letter_raw_bytes,
            on_batch=log_features,
        )
        log_features(None, 0.0)
        if feature_log is not None:
            feature_log.close()
    except OSError as exc:
        sink.abort()
        raise UsageError(f"cannot read {args.input}: {exc.strerror}") from exc
    except BaseException:
        sink.abort()
        raise
    _finish(args, sink, scorer=scorer, stats=stats, dlq=dlq, started=started)
    return 0


def _replay_sharded(
    args: argparse.Namespace,
    settings: Settings,
    sink: JsonlSink,
    *,
    slot: ModelSlot | None,
    verdicts: list[Label] | None,
    feature_log: FeatureLog | None,
    dlq: Path,
) -> int:
    """`posmon replay --workers N` (`cli.workers`): the merchant stage in 16 shards over N
    processes, the card stage here with the model, the labels and the feature log. What it
    writes does not depend on N; its final states are plain replay's (docs/workers.md)."""
    card, stats = Scorer(settings.policy, slot, stage="card"), Stats()
    if verdicts is not None:
        card.learn(verdicts)
    plan = Plan(settings.policy, card.wanted(), args.workers, settings.run.dead_letter_raw_bytes)

    def log_features() -> None:
        if feature_log is not None and slot is not None:
            for rows in slot.take_rows():
                feature_log.write(rows)

    _tune_gc()  # before the workers fork: they share the frozen start-up heap
    started = time.perf_counter()
    try:
        counts = replay_sharded(
            args.input,
            plan=plan,
            card=card,
            sink=sink,
            stats=stats,
            on_chunk=log_features,
        )
        if feature_log is not None:
            feature_log.close()
    except OSError as exc:
        sink.abort()
        raise UsageError(f"cannot read {args.input}: {exc.strerror}") from exc
    except WorkerError as exc:
        sink.abort()
        raise UsageError(f"{exc}; nothing was written") from exc
    except BaseException:
        sink.abort()
        raise
    # The summary reads its counts off a scorer: the merchant stage's, summed over the shards.
    totals = Scorer(settings.policy, stage="merchant")
    totals.consumed, totals.duplicates, totals.late = (
        counts.consumed,
        counts.duplicates,
        counts.late,
    )
    _finish(args, sink, scorer=totals, stats=stats, dlq=dlq, started=started)
    return 0


def _finish(
    args: argparse.Namespace,
    sink: JsonlSink,
    *,
    scorer: Scorer,
    stats: Stats,
    dlq: Path,
    started: float,
) -> None:
    """Put the outputs in place and print the summary (unless `--quiet`), with the time since
    `started`."""
    try:
        sink.close()
    except OSError as exc:
        raise UsageError(f"cannot write output: {exc.filename}: {exc.strerror}") from exc
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


def _config_input(flag: Path | None) -> dict[str, Path]:
    """The configuration file as an input that no output may overwrite."""
    path = config_path(flag)
    return {} if path is None else {"the configuration": path}


def _refuse_collisions(inputs: Mapping[str, str | Path], outputs: Mapping[str, Path]) -> None:
    """One line and exit 2, before anything is opened for writing, when an output would
    overwrite an input or another output (`streaming.files.refuse_collisions`)."""
    try:
        refuse_collisions(inputs, outputs)
    except OutputCollisionError as exc:
        raise UsageError(str(exc)) from exc


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


def simulate(args: argparse.Namespace) -> int:
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
    _refuse_collisions({}, {"--out": args.out, "--labels": labels})
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        labels.parent.mkdir(parents=True, exist_ok=True)
        with atomic_paths(args.out, labels) as (out_temp, labels_temp):
            stats = write_simulation(spec, out_temp, labels_temp)
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
    return log_to_stderr()


def run(args: argparse.Namespace) -> int:
    stop = _stop_on_signals()
    # Until the model is loaded (below) a SIGHUP has nothing to reload: it must not end posmon.
    signal.signal(signal.SIGHUP, lambda *_: None)
    settings = load_settings(
        args.config,
        flags={
            "kafka.bootstrap_servers": args.bootstrap_servers,
            "kafka.topic": args.topic,
            "kafka.group": args.group,
            "metrics.port": args.metrics_port,
            "run.stage": args.stage,
            **model_flags(args),
        },
    )
    # The channels' secrets are read before any connection: a missing one is one line, exit 2.
    channels = build_channels(settings.dispatch) if settings.dispatch is not None else None
    log = _log_to_stderr()
    clients = _connect(settings, stop, log)
    if clients is None:
        log.info("stopped before the Kafka broker answered")
        return 0
    try:
        service, card = build_services(settings, clients, stop)
    except ModelLoadError as exc:
        clients.close()
        raise UsageError(str(exc)) from exc
    learner = card or service  # the stage holding the model
    signal.signal(signal.SIGHUP, lambda *_: learner.reload_model())
    _log_start(settings, service, learner, log)
    _tune_gc()
    dispatching = None
    if settings.dispatch is not None and channels is not None:
        # Its series exist from the start, at zero, even if the loop never turns.
        metrics = DispatchMetrics(service.registry, settings.dispatch.channels)
        dispatch_config, policy = settings.dispatch, retry_policy(settings)
        dispatching = DispatchThread(
            lambda: run_dispatcher(
                settings.kafka, dispatch_config, channels, stop=stop, policy=policy, metrics=metrics
            ),
            stop,
        ).start()
    # The card stage beside the merchant stage (run.stage: both): if it dies, posmon stops.
    carding = DispatchThread(card.run, stop, "card stage").start() if card is not None else None
    try:
        service.run()
    except PublishInterrupted as exc:  # SIGTERM during a broker outage: nothing is lost
        log.warning("%s; the batch in hand was not committed and is read again on start", exc)
    finally:
        stop.set()
        for thread in (carding, dispatching):
            if thread is not None:
                thread.join()
    log.info(
        "stopped: %d messages, %d alerts raised",
        service.stats.messages,
        sum(service.stats.raised.values()) + (sum(card.stats.raised.values()) if card else 0),
    )
    failed = any(t is not None and t.failure is not None for t in (carding, dispatching))
    return 1 if failed else 0


def _log_start(settings: Settings, service: Service, learner: Service, log: logging.Logger) -> None:
    kafka, stage = settings.kafka, settings.run.stage
    if stage == "card":
        what = f"{kafka.cards_topic_name} as group {kafka.cards_group_id} (the card stage)"
    else:
        what = f"{kafka.topic} as group {kafka.group}"
        if stage != "all":
            what += f" (the merchant stage, handing on to {kafka.cards_topic_name}"
            what += f", read by group {kafka.cards_group_id} here)" if stage == "both" else ")"
    log.info(
        "consuming %s on %s; /metrics, /healthz, /readyz on port %d",
        what,
        kafka.bootstrap_servers,
        service.port,
    )
    if stage == "merchant":
        return
    if learner.labels is None:
        log.info("no labels topic (kafka.labels_topic is empty): no verdicts are read")
    else:
        log.info("labels from %s, every partition, without a group", learner.labels.topic)
    model = learner.model
    if model is None or model.live is None:
        log.info("no anomaly model: model_outlier is off")
    else:
        log.info(
            "anomaly model %s from %s (threshold %.4f)%s",
            model.live.version,
            settings.model.path or "the shipped model",
            model.live.threshold,
            "" if model.shadow is None else f"; shadow {model.shadow.version}",
        )


def _connect(settings: Settings, stop: threading.Event, log: logging.Logger) -> Clients | None:
    """The Kafka clients of `posmon run`'s stages once the broker answers (`streaming.connect`),
    or None when stopped first (`scaleout.open_clients`). Meanwhile /healthz says 200 (the
    process is fine, only waiting) and /readyz 503, on the metrics port; the service's own
    endpoints take the port over after. A process about to exit leaves them be: stopping them
    waits up to half a second."""
    kafka = settings.kafka
    waiting = f"waiting for the Kafka broker at {kafka.bootstrap_servers}"
    log.info("%s (kafka.startup_timeout: %g s)", waiting, kafka.startup_timeout)
    probes = Endpoints(
        settings.metrics.host,
        settings.metrics.port,
        CollectorRegistry(),
        health=lambda: (True, f"starting: {waiting}"),
        ready=lambda: (False, f"not ready: {waiting}"),
    ).start()
    try:
        clients = connect(kafka, stop, lambda: open_clients(settings, stop))
    except StageError as exc:
        raise UsageError(str(exc)) from exc
    if clients is not None:
        probes.stop()
    return clients


def dispatch(args: argparse.Namespace) -> int:
    stop = _stop_on_signals()
    settings = load_settings(args.config, flags={"kafka.bootstrap_servers": args.bootstrap_servers})
    if settings.dispatch is None:
        raise UsageError("the configuration has no `dispatch:` section (channels and routes)")
    # Before any connection: a missing secret or a bad delivery policy is one line, exit 2.
    channels, policy = build_channels(settings.dispatch), retry_policy(settings)
    log = _log_to_stderr()
    registry = CollectorRegistry()
    metrics = DispatchMetrics(registry, settings.dispatch.channels)
    probes = DispatchProbes(settings.run.stall_after)
    endpoints = Endpoints(
        settings.metrics.host,
        settings.metrics.port,
        registry,
        health=probes.health,
        ready=probes.ready,
    ).start()
    log.info("dispatching %s; /metrics on port %d", settings.kafka.alerts_topic, endpoints.port)
    if not wait_for_broker(settings.kafka, stop):  # meanwhile /readyz says "starting"
        log.info("stopped before the Kafka broker answered")
        return 0  # the endpoints go with the process (stopping them takes up to 0.5 s)
    try:
        dispatcher = run_dispatcher(
            settings.kafka,
            settings.dispatch,
            channels,
            stop=stop,
            policy=policy,
            metrics=metrics,
            started=probes.started,
        )
    finally:
        endpoints.stop()
    log.info("stopped: %s", dispatcher.stats)
    return 0


def demo(args: argparse.Namespace) -> int:
    if args.duration <= 0 or args.rate <= 0:
        raise UsageError("--duration and --rate must be positive")
    try:
        model = ModelSettings(enabled=not args.no_model, path=args.model, reload_every=0.0)
        options = DemoOptions(
            duration=args.duration,
            rate=args.rate,
            metrics_port=args.metrics_port,
            out=args.out,
            model=model,
        )
        return run_demo(options, Console())
    except ModelLoadError as exc:
        raise UsageError(str(exc)) from exc


def report(args: argparse.Namespace) -> int:
    try:  # matplotlib is an extra: every other command runs without it
        from monitor.report import ReportError, build_report  # noqa: PLC0415
    except ImportError as exc:
        raise UsageError(
            f"posmon report needs matplotlib: pip install 'posmon[report]' ({exc})"
        ) from exc
    # The page and the charts are written over what the folder holds: none may be an input.
    charts = sorted(args.out.glob("*.png")) if args.out.is_dir() else []
    outputs = {"--out": args.out, "the page": args.out / "index.html"}
    outputs.update({f"the chart {chart.name}": chart for chart in charts})
    _refuse_collisions(
        {"ALERTS": args.alerts, **({"--dlq": args.dlq} if args.dlq else {})}, outputs
    )
    try:
        page = build_report(args.alerts, args.out, dead_letters=args.dlq, title=args.title)
    except ReportError as exc:
        raise UsageError(str(exc)) from exc
    except OSError as exc:
        raise UsageError(f"cannot write {exc.filename}: {exc.strerror}") from exc
    print(f"report: {page}")
    return 0


def label(args: argparse.Namespace) -> int:
    """Append one verdict (`monitor.core.labels`): to the labels topic, returning once the broker
    acknowledged it, or with `--out` to a labels file. Prints the label (JSON) on stdout."""
    if args.out is not None and (args.config or args.bootstrap_servers or args.topic):
        raise UsageError("--config, --bootstrap-servers and --topic go with the topic, not --out")
    record = {
        "event_id": args.event,
        "alert_id": args.alert,
        "label": args.verdict,
        "known_at": args.known_at or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "kind": args.kind,
        "source": args.source,
    }
    try:
        verdict = label_of({key: value for key, value in record.items() if value is not None})
    except LabelError as exc:  # the parser checked each value: not expected
        raise UsageError(str(exc)) from exc
    line = verdict.to_json()
    if args.out is not None:
        _append_line(args.out, line)
        where = printable(str(args.out))
    else:
        kafka = load_settings(
            args.config,
            flags={
                "kafka.bootstrap_servers": args.bootstrap_servers,
                "kafka.labels_topic": args.topic,
            },
        ).kafka
        topic = kafka.labels_topic
        if topic is None:
            raise UsageError(
                "kafka.labels_topic is empty: name the topic (--topic) or a file (--out)"
            )
        # A broker that does not answer: a line every 5 s, then one line and exit 2 after
        # kafka.startup_timeout. Ctrl-C interrupts the wait (exit 130): nothing was sent.
        wait_for_broker(kafka, threading.Event())
        try:
            partition, offset = send_label(kafka, topic, verdict)
        except DeliveryFailed as exc:
            raise UsageError(str(exc)) from exc
        where = f"{printable(topic)} (partition {partition}, offset {offset})"
    print(printable(line.decode()))
    print(f"posmon: label appended to {where}", file=sys.stderr)
    return 0


def _append_line(path: Path, line: bytes) -> None:
    """Append `line` and a newline to `path` (created if missing) in one write, after a newline
    when the file does not end with one (a line cut short stays apart from the new one)."""
    try:
        with path.open("ab") as out:
            prefix = b""
            if out.tell() > 0 and path.is_file():
                with path.open("rb") as existing:
                    existing.seek(-1, os.SEEK_END)
                    prefix = b"" if existing.read(1) == b"\n" else b"\n"
            out.write(prefix + line + b"\n")
    except OSError as exc:
        raise UsageError(f"cannot write {exc.filename or path}: {exc.strerror}") from exc


def schema(args: argparse.Namespace) -> int:
    schema = event_json_schema() if args.which == "events" else alert_json_schema()
    print(json.dumps(schema, indent=2))
    return 0
