"""`posmon demo`: the whole system on one machine with no set-up (entry layer).

An embedded Kafka-compatible broker, the traffic simulator producing at a steady rate with
injected incidents, the monitor as `posmon run` runs it by default (its merchant stage and its
card stage, `cli.scaleout`) publishing alerts to the broker and to a file, and
`/metrics` on a printed port; live progress, then a summary. Event time runs faster than the
wall clock (a simulated day in the demo's minute), so the 15-minute and 24-hour rules fire too.
Ctrl-C stops everything and leaves no process behind.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from monitor.channels.console import shown
from monitor.cli.oncall import build_channels, run_dispatcher
from monitor.cli.scaleout import build_services, open_clients
from monitor.cli.service import Service
from monitor.cli.settings import MetricsSettings, ModelSettings, Settings
from monitor.cli.summary import print_summary
from monitor.core.alerts import DETECTORS, Alert
from monitor.paging.delivery import RetryPolicy
from monitor.paging.metrics import DispatchMetrics
from monitor.paging.routing import DispatchConfig
from monitor.scoring.pipeline import Stats
from monitor.scoring.policy import Policy
from monitor.simulation.simulator import Simulation, SimulationSpec
from monitor.streaming.embedded import EmbeddedBroker
from monitor.streaming.files import JsonlSink
from monitor.streaming.produce import produce_lines
from monitor.streaming.settings import KafkaSettings
from monitor.streaming.topics import ensure_topics

TOPIC = "pos.events"
PARTITIONS = 6


@dataclass(frozen=True, slots=True)
class DemoOptions:
    duration: float = 60.0
    rate: float = 2000.0
    metrics_port: int = 0
    out: Path = Path("posmon-demo")
    seed: int = 7
    model: ModelSettings = field(default_factory=ModelSettings)  # the shipped model by default


class _AlertWatch:
    """A sink that keeps the newest alerts for the live view, and hands what both stages publish
    to the file, one thread at a time."""

    def __init__(self, file: JsonlSink) -> None:
        self.latest: deque[Alert] = deque(maxlen=8)
        self._file = file
        self._lock = threading.Lock()

    def publish(self, alerts: object, dead_letters: object, handoffs: object = ()) -> None:
        assert isinstance(alerts, list | tuple)
        assert isinstance(dead_letters, list | tuple)
        with self._lock:
            self._file.publish(alerts, dead_letters)
            self.latest.extend(a for a in alerts if isinstance(a, Alert))


def run_demo(options: DemoOptions, console: Console) -> int:
    options.out.mkdir(parents=True, exist_ok=True)
    alerts_path, dlq_path = options.out / "alerts.jsonl", options.out / "dead-letters.jsonl"
    console.print("[bold]posmon demo[/bold]: starting the embedded broker ...")
    with EmbeddedBroker() as broker:
        kafka = KafkaSettings(
            bootstrap_servers=broker.bootstrap_servers,
            topic=TOPIC,
            group="posmon-demo",
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            idle_partition_s=2.0,
            labels_topic=None,  # no verdicts in the demo: nothing to read at start or stop
        )
        ensure_topics(kafka, {TOPIC: PARTITIONS, f"{TOPIC}.dlq": 1, kafka.alerts_topic: 3})
        # Event time runs about a day per demo minute, ahead of the broker's clock: the demo
        # allows that much (a deployment keeps the default, 10 min, against bad clocks).
        settings = Settings(
            kafka=kafka,
            metrics=MetricsSettings(host="127.0.0.1", port=options.metrics_port),
            policy=Policy(max_future_skew=26 * 3600.0),
            model=options.model,
        )
        file_sink = JsonlSink(alerts_path, dlq_path, topic=TOPIC)
        watch = _AlertWatch(file_sink)
        stop = threading.Event()
        service, card = build_services(settings, open_clients(settings, stop), stop, also=[watch])
        stages = [service] if card is None else [service, card]
        producer = _Producer(kafka, options)
        # The dispatch loop, as in production, delivering to a file channel (the console shows
        # the live view): grouped, deduplicated, one outage one page.
        # Its series are on the monitor's /metrics, as in `posmon run` (the health dashboard's
        # paging panels).
        pages = options.out / "notifications.jsonl"
        paging_config = _dispatch_config(pages)
        paging_stop = threading.Event()
        paging = threading.Thread(
            target=run_dispatcher,
            args=(kafka, paging_config, build_channels(paging_config)),
            kwargs={
                "stop": paging_stop,
                "policy": RetryPolicy(initial=0.5, max_delay=5, deadline=60),
                "metrics": DispatchMetrics(service.registry, paging_config.channels),
            },
            name="posmon-dispatch",
        )
        console.print(
            f"broker {broker.bootstrap_servers}, topic {TOPIC} ({PARTITIONS} partitions);"
            f" metrics on http://127.0.0.1:{service.port}/metrics;"
            f" {options.rate:,.0f} events/s for {options.duration:g} s. Ctrl-C stops."
        )
        loop = threading.Thread(target=service.run, name="posmon-monitor")
        carding = threading.Thread(target=card.run, name="posmon-cards") if card else None
        started = time.monotonic()
        try:
            loop.start()
            if carding is not None:
                carding.start()
            paging.start()
            producer.start()
            with Live(console=console, refresh_per_second=2, transient=False) as live:
                while producer.is_alive() and loop.is_alive():
                    live.update(_view(stages, producer, watch, time.monotonic() - started))
                    time.sleep(0.5)
                _drain(
                    stages,
                    loop,
                    live,
                    lambda: _view(stages, producer, watch, time.monotonic() - started),
                )
        except KeyboardInterrupt:
            console.print("stopping ...")
        finally:
            producer.stop()
            service.stop()  # and the card stage: one stop event
            until = time.monotonic() + 30  # both loops stop together, within one wait
            for thread in (loop, carding):
                if thread is not None:
                    thread.join(timeout=max(0.0, until - time.monotonic()))
            producer.join(timeout=10)
            file_sink.close()
            paging_stop.wait(_GROUP_INTERVAL_S + 1)  # the last groups go out
            paging_stop.set()
            paging.join(timeout=30)
    _summary(console, stages, producer, alerts=alerts_path, dlq=dlq_path, pages=pages)
    _report(console, alerts_path, dlq_path, options.out / "report")
    return 0


def _report(console: Console, alerts: Path, dlq: Path, out: Path) -> None:
    """The demo's alerts as `posmon report`'s page (charts, not only tables), its path printed;
    a report that cannot be written is one line, and the demo still ends well."""
    try:  # matplotlib is the `report` extra (`make` installs it)
        from monitor.report import ReportError, build_report  # noqa: PLC0415
    except ImportError as exc:
        console.print(
            f"no report: posmon report needs matplotlib (pip install 'posmon[report]'; {exc})"
        )
        return
    try:
        page = build_report(alerts, out, dead_letters=dlq, title="posmon demo")
    except (ReportError, OSError) as exc:
        console.print(Text.assemble("no report: ", shown(str(exc))))
        return
    # One line whatever the terminal's width: a path folded in two cannot be copied.
    console.print(Text.assemble("report (open in a browser): ", shown(str(page))), soft_wrap=True)


_GROUP_INTERVAL_S = 3.0


def _dispatch_config(pages: Path) -> DispatchConfig:
    return DispatchConfig.model_validate(
        {
            "channels": {"file": {"type": "file", "path": str(pages)}},
            "routes": [
                {
                    "name": "demo",
                    "channels": ["file"],
                    "group_by": ["detector", "merchant_id"],
                    "group_wait": 1,
                    "group_interval": _GROUP_INTERVAL_S,
                }
            ],
        }
    )


def _drain(stages: list[Service], loop: threading.Thread, live: Live, view: object) -> None:
    """Let the monitor's stages catch up and the idle stream close its event time (a few
    seconds)."""
    deadline = time.monotonic() + 20
    quiet_since: float | None = None
    idle_s = stages[0].settings.kafka.idle_partition_s
    while loop.is_alive() and time.monotonic() < deadline:
        assert callable(view)
        live.update(view())
        caught_up = all(s.lag and not any(s.lag.values()) for s in stages)
        if caught_up:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > idle_s + 2:
                return
        else:
            quiet_since = None
        time.sleep(0.5)


class _Producer(threading.Thread):
    """Produces simulated traffic at the demo's rate until the duration is over or stopped."""

    def __init__(self, kafka: KafkaSettings, options: DemoOptions) -> None:
        super().__init__(name="posmon-simulator", daemon=True)
        self.kafka, self.options = kafka, options
        self.sent = 0
        self._halt = threading.Event()

    def run(self) -> None:
        total = int(self.options.duration * self.options.rate)
        # About 1,500 events per merchant per day: size the day so it fills the demo.
        merchants = max(5, total // 1500)
        start = datetime.now(UTC).replace(microsecond=0)
        spec = SimulationSpec(seed=self.options.seed, hours=25.0, merchants=merchants, start=start)
        lines = Simulation(spec).lines()

        def until_stopped() -> object:
            for n, line in enumerate(lines):
                if self._halt.is_set() or n >= total:
                    return
                self.sent = n + 1
                yield line

        produce_lines(self.kafka, self.kafka.topic, until_stopped(), rate=self.options.rate)  # type: ignore[arg-type]

    def stop(self) -> None:
        self._halt.set()


def _together(stages: list[Service]) -> Stats:
    """The first stage's counts (it reads every event), with the alerts of every stage."""
    stats = Stats(rejected=stages[0].stats.rejected, truncated=stages[0].stats.truncated)
    for stage in stages:
        stats.raised.update(stage.stats.raised)
        stats.latest.update(stage.stats.latest)
    return stats


def _view(stages: list[Service], producer: _Producer, watch: _AlertWatch, elapsed: float) -> Group:
    scorer, stats = stages[0].scorer, _together(stages)
    scored = sum(scorer.consumed.values())
    head = Table.grid(padding=(0, 2))
    head.add_row(
        f"[bold]{elapsed:5.0f} s[/bold]",
        f"produced {producer.sent:,}",
        f"scored {scored:,} ({scored / max(elapsed, 0.001):,.0f}/s)",
        f"lag {sum(sum(s.lag.values()) for s in stages):,}",
        f"rejected {sum(stats.rejected.values()):,}",
        f"duplicates {scorer.duplicates:,}",
    )
    by_detector = Table(show_header=True, header_style="bold", box=None)
    for detector in DETECTORS[:-1]:
        by_detector.add_column(detector.replace("_", " "), justify="right")
    by_detector.add_row(*(f"{stats.raised[d]:,}" for d in DETECTORS[:-1]))
    latest = Table(
        title="latest alerts", show_header=True, header_style="bold", title_justify="left"
    )
    latest.add_column("event time", no_wrap=True)
    latest.add_column("detector", no_wrap=True)
    latest.add_column("summary")
    for alert in reversed(watch.latest):
        latest.add_row(
            alert.last_seen.strftime("%m-%d %H:%M:%S"), alert.detector, shown(alert.summary)
        )
    return Group(head, by_detector, latest)


def _summary(
    console: Console,
    stages: list[Service],
    producer: _Producer,
    *,
    alerts: Path,
    dlq: Path,
    pages: Path,
) -> None:
    notifications = pages.read_text().count("\n") if pages.exists() else 0
    print_summary(
        console,
        title="posmon demo: summary",
        scorer=stages[0].scorer,
        stats=_together(stages),
        alerts=alerts,
        dead_letters=dlq,
        head=(("events produced", f"{producer.sent:,}"),),
        tail=(("notifications delivered (grouped)", f"{notifications:,}"),),
    )
    console.print(Text.assemble("notifications: ", shown(str(pages))))
