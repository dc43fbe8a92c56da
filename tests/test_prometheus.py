"""A real Prometheus scrapes a real `posmon run` on simulated traffic with incidents.

Then every dashboard panel's query is evaluated through the Prometheus HTTP API; the core
series (throughput, alerts by detector, money at risk, lag, what the shipped anomaly model
scored) must say what the monitor processed, and `promtool check metrics` must find nothing
wrong with `/metrics`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.cli.anomaly import model_slot
from monitor.cli.settings import ModelSettings
from monitor.scoring.features import FEATURES
from monitor.scoring.pipeline import replay_messages
from monitor.scoring.policy import Policy
from monitor.scoring.scorer import Scorer
from monitor.scoring.tally import RELOAD_OUTCOMES
from monitor.simulation.simulator import Simulation, SimulationSpec
from monitor.streaming.embedded import EmbeddedBroker
from monitor.streaming.produce import produce_lines
from monitor.streaming.topics import committed_offsets
from tests.broker import free_port, fresh_topic, kafka_settings, monitor_environ

REPO = Path(__file__).resolve().parent.parent
DASHBOARDS = REPO / "dashboards"
RULES = DASHBOARDS / "prometheus"

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="needs Debian's prometheus (make system-deps)"
)


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.loads(reply.read())


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


class Prometheus:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = _get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert answer["status"] == "success", (expr, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def value(self, expr: str) -> float:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else 0.0


@pytest.fixture(scope="module")
def scraped(
    broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Prometheus, int, Any]]:
    """`posmon run` over simulated traffic, scraped every second by a real Prometheus."""
    tmp = tmp_path_factory.mktemp("prometheus")
    lines = list(Simulation(SimulationSpec(seed=21, hours=3.0, merchants=20)).lines())
    topic = fresh_topic(broker, partitions=6)
    settings = kafka_settings(broker, topic, idle_partition_s=1.0)
    metrics_port, prom_port = free_port(), free_port()
    rule_files = []
    for path in sorted(RULES.glob("*.rules.yml")):  # evaluated every second here, not every 30 s
        rules = yaml.safe_load(path.read_text())
        for group in rules["groups"]:
            group["interval"] = "1s"
        (tmp / path.name).write_text(yaml.safe_dump(rules))
        rule_files.append(str(tmp / path.name))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": rule_files,
        "scrape_configs": [
            {"job_name": "posmon", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}
        ],
    }
    (tmp / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    # Both stages (the default), with an internal topic of this test's own.
    environ = monitor_environ(settings, metrics_port, POSMON_KAFKA__CARDS_TOPIC=f"{topic}.cards")
    monitor = subprocess.Popen(
        [sys.executable, "-m", "monitor", "run"], cwd=REPO, env=environ,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    prometheus = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp / "prometheus.log").open("w"),
    )
    prom = Prometheus(prom_port)
    slot = model_slot(ModelSettings())  # the model `posmon run` loads: the shipped one
    scorer = Scorer(Policy(), slot)
    sink, _ = replay_messages(lines, scorer)
    try:
        _wait(lambda: prom.value('up{job="posmon"}') == 1, 60, "Prometheus scraping the monitor")
        # Traffic arrives over about eight seconds while Prometheus scrapes every second.
        produce_lines(settings, topic, lines, rate=len(lines) / 8)
        _wait(
            lambda: sum(committed_offsets(settings).values()) >= len(lines),
            90,
            "the topic consumed",
        )
        time.sleep(4)  # the idle stream takes its due decisions, then a few scrapes
        _wait(
            lambda: prom.value('sum(posmon_events_consumed_total{job="posmon"})') > 0,
            30,
            "a scrape",
        )
        yield prom, metrics_port, (sink, sum(scorer.consumed.values()), slot)
    finally:
        monitor.terminate()
        prometheus.terminate()
        monitor.wait(timeout=30)
        prometheus.wait(timeout=30)


def test_core_series_say_what_the_monitor_processed(scraped: tuple[Prometheus, int, Any]) -> None:
    prom, _, (sink, accepted, _) = scraped
    final = sink.final_alerts()
    # Input: the card stage counts the events forwarded to it again, as stage="card".
    assert prom.value('sum(posmon_events_consumed_total{job="posmon", stage!="card"})') == accepted
    by_detector = Counter(a.detector for a in final.values())
    for detector, count in by_detector.items():
        got = prom.value(f'sum(posmon_alerts_raised_total{{detector="{detector}"}})')
        assert got == count, detector
    money: Counter[str] = Counter()
    for a in final.values():
        if a.detector in ("failed_then_debited", "duplicate_debit"):
            debited = a.details["debited_minor"]
            assert isinstance(debited, int)
            money[str(a.details["currency"])] += debited
    for currency, minor in money.items():
        got = prom.value(f'sum(posmon_money_at_risk_minor_total{{currency="{currency}"}})')
        assert got == minor, currency
    # one series per partition of the events topic
    assert len(prom.query('posmon_consumer_lag_messages{stage!="card"}')) == 6
    assert len(prom.query('posmon_partition_delay_seconds{stage!="card"}')) == 6
    assert prom.value("sum(posmon_consumer_lag_messages)") == 0
    assert prom.value("sum(rate(posmon_events_consumed_total[1m]))") > 0  # the throughput panel
    rejected = Counter(r.reason for r in sink.dead_letters)
    for reason, count in rejected.items():
        assert prom.value(f'sum(posmon_events_rejected_total{{reason="{reason}"}})') == count


def test_the_scale_out_series_say_what_was_handed_on(
    scraped: tuple[Prometheus, int, Any],
) -> None:
    """`posmon run` with both stages: the card stage read every event and marker the merchant
    stage handed on, knows every partition of the events topic, and is not behind."""
    prom, _, _ = scraped
    forwarded = prom.value("sum(posmon_forwarded_events_total)")
    assert forwarded > 0
    read = prom.value('sum(posmon_events_consumed_total{stage="card"})')
    assert read + prom.value('sum(posmon_events_duplicate_total{stage="card"})') == forwarded
    published = prom.value("sum(posmon_markers_published_total)")
    assert published > 0
    assert prom.value("sum(posmon_card_markers_total)") == published
    assert prom.value("sum(posmon_card_records_invalid_total)") == 0
    assert prom.query('posmon_consumer_lag_messages{stage="card"}')
    assert prom.value('sum(posmon_consumer_lag_messages{stage="card"})') == 0
    delays = prom.query("posmon_card_source_delay_seconds")
    assert sorted(int(r["metric"]["partition"]) for r in delays) == list(range(6))
    # PosmonCardStageBehind's join: every partition of the events topic, well below 300 s.
    rules = yaml.safe_load((RULES / "alerting.rules.yml").read_text())["groups"][0]["rules"]
    (behind,) = [r["expr"] for r in rules if r.get("alert") == "PosmonCardStageBehind"]
    distance = prom.query(behind.strip().rsplit(">", 1)[0])
    assert len(distance) == 6
    assert all(float(r["value"][1]) < 300 for r in distance)


def _dashboard_queries(window: str = "1m") -> list[tuple[str, str]]:
    """(dashboard: panel title, expression) of every target; a panel's second and later
    targets are named "... #2", "... #3"."""
    queries = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        top = json.loads(path.read_text()).get("panels", [])
        for panel in [*top, *(inner for row in top for inner in row.get("panels", []))]:
            for n, target in enumerate(panel.get("targets", []), start=1):
                if "expr" in target:
                    expr = re.sub(r"\$__(rate_interval|interval|range)", window, target["expr"])
                    name = f"{path.name}: {panel.get('title')}" + (f" #{n}" if n > 1 else "")
                    queries.append((name, expr))
    return queries


def test_the_model_series_say_what_the_model_scored(scraped: tuple[Prometheus, int, Any]) -> None:
    """`posmon run` scores with the shipped model: its version, the requests it scored (as many
    as a replay with the same model scores), no shadow, no reload, drift by feature."""
    prom, _, (_, _, slot) = scraped
    assert slot is not None and slot.live is not None
    info = {(r["metric"]["role"], r["metric"]["version"]) for r in prom.query("posmon_model_info")}
    assert info == {("live", slot.live.version)}
    scored = sum(len(scores) for scores in slot.tally.scores)
    assert scored > 0
    by_role = {
        r["metric"]["role"]: float(r["value"][1]) for r in prom.query("posmon_model_scored_total")
    }
    assert by_role == {"live": scored, "shadow": 0}
    assert prom.value('sum(posmon_model_score_count{role="live"})') == scored
    assert prom.value("sum(posmon_model_scoring_seconds_count)") > 0
    p99 = {
        r["metric"]["role"]: float(r["value"][1]) for r in prom.query("posmon:model_score:p99_5m")
    }
    assert p99.keys() == {"live"}  # no line for a shadow that scored nothing
    assert 0 < p99["live"] <= 1
    reloads = {
        r["metric"]["outcome"]: float(r["value"][1])
        for r in prom.query("posmon_model_reload_total")
    }
    assert reloads == dict.fromkeys(RELOAD_OUTCOMES, 0.0)  # every outcome there from the start
    drift = {
        r["metric"]["feature"]: float(r["value"][1]) for r in prom.query("posmon_model_drift_psi")
    }
    assert set(drift) <= {*FEATURES, "score"}
    assert all(psi >= 0 for psi in drift.values())


def test_every_dashboard_query_evaluates(scraped: tuple[Prometheus, int, Any]) -> None:
    prom, _, _ = scraped
    queries = _dashboard_queries()
    if not queries:
        pytest.skip("no dashboards yet")
    answers = {title: prom.query(expr) for title, expr in queries}  # each asserts success
    for core in (
        "Throughput by event kind",
        "Alerts raised by detector and severity",
        "Money at risk (range, minor units)",
        "Consumer lag by partition",
        "Model in use (live and shadow)",
        "Auth requests scored by the model",
        "Model scoring latency per batch",
        "Forwarded events and markers",
        "Card stage delay by source partition",
        "Consumer lag of both groups",
        "Invalid internal records (range)",
    ):
        (answer,) = [a for t, a in answers.items() if t.endswith(f": {core}")]
        assert answer, f"the core panel {core!r} shows no data"


def test_the_money_panel_matches_the_alerts(scraped: tuple[Prometheus, int, Any]) -> None:
    prom, _, (sink, _, _) = scraped
    expected: Counter[str] = Counter()
    for a in sink.final_alerts().values():
        if a.detector in ("failed_then_debited", "duplicate_debit"):
            debited = a.details["debited_minor"]
            assert isinstance(debited, int)
            expected[str(a.details["currency"])] += debited
    panel = "pos-risk-overview.json: Money at risk (range, minor units)"
    (expr,) = [e for t, e in _dashboard_queries(window="1h") if t == panel]
    shown = {r["metric"]["currency"]: float(r["value"][1]) for r in prom.query(expr)}
    for currency, minor in expected.items():
        # increase() extrapolates a little towards the edges of the range
        assert shown[currency] == pytest.approx(minor, rel=0.15), currency


def test_promtool_finds_nothing_wrong_with_the_metrics(
    scraped: tuple[Prometheus, int, Any],
) -> None:
    _, port, _ = scraped
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read()
    done = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, check=False
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
