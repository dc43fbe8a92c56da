"""The Grafana dashboards and Prometheus rules against promtool and against the metrics posmon
exports (`monitor.scoring.metrics`, `monitor.paging.metrics`).

A dashboard or rule that names a series posmon does not export shows an empty panel or an alert
that can never fire, silently; these tests make that drift fail. Rule files and the promtool unit
tests (`dashboards/prometheus/tests/alerting_test.yml`) run through the real `promtool` (Debian
`prometheus`), installed with apt when missing and the test runs as root; the promtool tests are
skipped only when it is absent and cannot be installed. promtool has no standalone query checker,
so every dashboard expression is checked as a recording rule of a temporary rule file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from monitor.paging.metrics import DispatchMetrics
from monitor.scoring.metrics import CardMetrics, Metrics
from monitor.scoring.tally import ModelTally

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "dashboards"
DASHBOARD_FILES = sorted(DASHBOARDS.glob("*.json"))
RULES = DASHBOARDS / "prometheus"
RULE_FILES = [RULES / "recording.rules.yml", RULES / "alerting.rules.yml"]
ALERT_TESTS = RULES / "tests" / "alerting_test.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
# The scale-out's runbook sections, written beside its operations notes until they join the
# runbook; their rules' runbook_url already names the runbook's anchors.
RUNBOOK_SECTIONS = [RUNBOOK]
DATASOURCE_VAR = "${datasource}"
PROVISIONED_UID = "posmon-prometheus"

# Grafana's interval variables, replaced by a plausible value so promtool can parse the query.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
METRIC_NAME = re.compile(r"(?<![\w:])posmon_[a-zA-Z0-9_]*")
RECORDED_NAME = re.compile(r"(?<![\w:])posmon:[a-zA-Z0-9_:]*")
# Sample-name suffixes by prometheus_client family type.
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "info": ("_info",),
    "gauge": ("",),
}


def _promtool() -> str:
    """The promtool binary, installing Debian's `prometheus` when missing and possible."""
    if not shutil.which("promtool") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
        install = ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"]
        subprocess.run(install, env=env, capture_output=True, check=False)
    binary = shutil.which("promtool")
    if not binary:
        pytest.skip(
            "promtool is not installed and could not be installed"
            " (needs root and apt: apt-get install -y prometheus)"
        )
    return binary


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_promtool(), *args], capture_output=True, text=True, check=False, timeout=60, cwd=ROOT
    )


def _dashboard(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # panels inside collapsed rows


def _targets() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(dashboard file, panel title, target) for every query of every dashboard."""
    for path in DASHBOARD_FILES:
        for panel in _panels(_dashboard(path)):
            for target in panel.get("targets", []):
                yield path.name, str(panel.get("title")), target


def _dashboard_exprs() -> list[str]:
    exprs = []
    for _, _, target in _targets():
        expr = str(target["expr"])
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        exprs.append(expr)
    return exprs


def _rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules.extend(group["rules"])
    return rules


def _alerting_rules() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "alert" in rule]


def _registry() -> CollectorRegistry:
    """The scoring loop's registry, with a model's series as they look once one is loaded."""
    registry = CollectorRegistry()
    Metrics(registry).observe_model(
        ModelTally(version="iforest-1", shadow_version="iforest-2", psi={"score": 0.0})
    )
    return registry


@cache
def _exported_names() -> frozenset[str]:
    """Every sample name the scoring loop (and a card stage's own series) and the dispatch loop
    can export."""
    names: set[str] = set()
    dispatch, card = CollectorRegistry(), CollectorRegistry()
    DispatchMetrics(dispatch)
    CardMetrics(card)
    for registry in (_registry(), card, dispatch):
        for family in registry.collect():
            names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
            names.update(sample.name for sample in family.samples)
    return frozenset(names)


def test_both_dashboards_and_every_rule_file_exist() -> None:
    assert [path.name for path in DASHBOARD_FILES] == [
        "pos-risk-overview.json",
        "posmon-health.json",
    ]
    for path in [*RULE_FILES, ALERT_TESTS, RUNBOOK]:
        assert path.is_file(), path


def test_promtool_accepts_both_rule_files() -> None:
    result = _run("check", "rules", *(str(path) for path in RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_the_alerting_rules_pass() -> None:
    result = _run("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alerting_rule_has_a_promtool_unit_test() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])}
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    names = {rule["alert"] for rule in _alerting_rules()}
    assert names <= fired, f"never shown firing: {sorted(names - fired)}"
    assert names <= tested, f"untested: {sorted(names - tested)}"


def test_every_dashboard_expression_is_valid_promql(tmp_path: Path) -> None:
    exprs = _dashboard_exprs()
    assert exprs
    rules = [{"record": f"posmon:dashboard_check_{i}", "expr": e} for i, e in enumerate(exprs)]
    rule_file = tmp_path / "dashboard.rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = _run("check", "rules", str(rule_file))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_posmon_metric_named_by_dashboards_and_rules_is_exported() -> None:
    exprs = _dashboard_exprs() + [str(rule["expr"]) for rule in _rules()]
    referenced = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    assert referenced
    missing = sorted(referenced - _exported_names())
    assert not missing, f"not exported by posmon: {missing}"


def test_recorded_series_used_by_dashboards_are_recorded() -> None:
    recorded = {str(rule["record"]) for rule in _rules() if "record" in rule}
    used = {name for expr in _dashboard_exprs() for name in RECORDED_NAME.findall(expr)}
    assert used, "the dashboards should read the heavy queries from recording rules"
    assert used <= recorded, f"not recorded: {sorted(used - recorded)}"


def test_recording_rule_names_follow_the_posmon_convention() -> None:
    for rule in _rules():
        if "record" in rule:
            assert re.fullmatch(r"posmon:[a-z0-9_]+:[a-z0-9_]+", rule["record"]), rule["record"]


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda path: path.name)
def test_dashboard_has_identity_schema_and_a_datasource_variable(path: Path) -> None:
    dashboard = _dashboard(path)
    assert dashboard["uid"]
    assert dashboard["title"]
    assert dashboard["schemaVersion"] >= 39
    variables = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert [(v["name"], v["query"]) for v in variables] == [("datasource", "prometheus")]
    assert variables[0]["current"]["value"] == PROVISIONED_UID


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda path: path.name)
def test_every_panel_is_explained_and_every_query_uses_the_variable(path: Path) -> None:
    allowed = {"timeseries", "stat", "bargauge", "table", "heatmap"}
    panels = list(_panels(_dashboard(path)))
    assert panels
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        title = panel.get("title")
        assert title, panel
        if panel["type"] == "row":  # a heading over the panels below it: no query of its own
            assert not panel.get("targets"), title
            continue
        assert panel["type"] in allowed, title
        assert panel.get("description"), title
        assert panel.get("fieldConfig", {}).get("defaults", {}).get("unit"), title
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_VAR}, title
        assert panel.get("targets"), title
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": DATASOURCE_VAR}, title
            assert target.get("expr"), title


def test_no_datasource_uid_is_hard_coded_in_panels() -> None:
    for path in DASHBOARD_FILES:
        text = json.dumps(_dashboard(path)["panels"])
        assert PROVISIONED_UID not in text, path.name


def test_provisioning_points_at_the_dashboards_and_the_variable_default() -> None:
    provisioning = DASHBOARDS / "provisioning"
    providers = yaml.safe_load((provisioning / "dashboards.yaml").read_text())["providers"]
    assert [p["type"] for p in providers] == ["file"]
    assert providers[0]["options"]["path"]
    sources = yaml.safe_load((provisioning / "datasources.yaml").read_text())["datasources"]
    assert [(s["type"], s["uid"]) for s in sources] == [("prometheus", PROVISIONED_UID)]


def test_every_alerting_rule_is_complete_and_has_a_runbook_section() -> None:
    runbook = "\n".join(path.read_text() for path in RUNBOOK_SECTIONS if path.exists())
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")
        for heading in re.findall(r"^## (.+)$", runbook, flags=re.MULTILINE)
    }
    rules = _alerting_rules()
    assert {rule["alert"] for rule in rules} == {
        "PosmonDown",
        "PosmonConsumerLagGrowing",
        "PosmonWatermarkStuck",
        "PosmonRejectsSpiking",
        "PosmonDeliveriesFailing",
        "PosmonAlertsParked",
        "PosmonNoEvents",
        "PosmonOldestUndelivered",
        "PosmonModelDrift",
        "PosmonModelDriftSevere",
        "PosmonModelReloadRefused",
        "PosmonCardStageBehind",
        "PosmonCardRecordsInvalid",
    }
    for rule in rules:
        name = rule["alert"]
        assert rule.get("for"), name
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        annotations = rule["annotations"]
        assert annotations.get("summary"), name
        assert annotations.get("description"), name
        assert annotations["runbook_url"] == f"docs/runbook.md#{name.lower()}", name
        assert name.lower() in anchors, f"docs/runbook.md has no section {name}"


def test_every_model_series_is_on_a_dashboard() -> None:
    """The anomaly model's series are read by a panel, directly or through a recording rule."""
    exprs = _dashboard_exprs()
    used = {name for expr in exprs for name in RECORDED_NAME.findall(expr)}
    exprs += [str(rule["expr"]) for rule in _rules() if rule.get("record") in used]
    referenced = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    families = {family.name for family in _registry().collect()}
    model = sorted(name for name in families if name.startswith("posmon_model_"))
    assert model
    forms = ("", "_total", "_bucket", "_sum", "_count")
    unseen = [name for name in model if not referenced & {name + form for form in forms}]
    assert not unseen, f"no panel shows {unseen}"


def test_the_drift_panels_change_colour_where_the_drift_rules_fire() -> None:
    rules = {rule["alert"]: str(rule["expr"]) for rule in _alerting_rules()}
    fire_at = []
    for name in ("PosmonModelDrift", "PosmonModelDriftSevere"):
        match = re.search(r"posmon_model_drift_psi\b.*>\s*([0-9.]+)\s*$", rules[name].strip())
        assert match, name
        fire_at.append(float(match.group(1)))
    panels = [
        panel
        for path in DASHBOARD_FILES
        for panel in _panels(_dashboard(path))
        if any("posmon_model_drift_psi" in target["expr"] for target in panel.get("targets", []))
    ]
    assert panels
    for panel in panels:
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert [step["value"] for step in steps[1:]] == sorted(fire_at), panel["title"]


# The series of a scoring loop that the card stage exports again, labelled stage="card" (it reads
# the forwarded events, its own topic and group): a query must keep the stages apart, in its
# selector or in its grouping, or it counts events twice and mixes two topics' partitions.
PER_STAGE = (
    "posmon_events_consumed_total",
    "posmon_events_rejected_total",
    "posmon_events_duplicate_total",
    "posmon_events_late_total",
    "posmon_consumer_lag_messages",
    "posmon_watermark_timestamp_seconds",
    "posmon_watermark_delay_seconds",
    "posmon_partition_delay_seconds",
    "posmon_state_entries",
    "posmon_processing_seconds_bucket",
    "posmon_event_lag_seconds_bucket",
    "posmon_rebalances_total",
)
SCALE_OUT = (
    "posmon_forwarded_events_total",
    "posmon_markers_published_total",
    "posmon_card_markers_total",
    "posmon_card_source_delay_seconds",
    "posmon_card_records_invalid_total",
)


def test_every_query_of_a_loop_series_keeps_the_stages_apart() -> None:
    exprs = _dashboard_exprs() + [str(rule["expr"]) for rule in _rules()]
    checked = 0
    for expr in exprs:
        grouped = any("stage" in by for by in re.findall(r"\bby \(([^)]*)\)", expr))
        for name in PER_STAGE:
            for selector in re.findall(rf"(?<![\w:]){name}(\{{[^}}]*\}})?", expr):
                assert "stage" in selector or grouped, f"{name} in {expr!r}"
                checked += 1
    assert checked > 20


def test_the_input_rates_leave_out_the_card_stage() -> None:
    """The events the merchant stage forwards are consumed again by the card stage."""
    recorded = {str(rule["record"]): str(rule["expr"]) for rule in _rules() if "record" in rule}
    for name in ("posmon:events:rate5m", "posmon:events_all:rate5m"):
        assert 'stage!="card"' in recorded[name], name
    alerts = {rule["alert"]: str(rule["expr"]) for rule in _alerting_rules()}
    for name in ("PosmonNoEvents", "PosmonRejectsSpiking"):
        consumed = re.findall(r"posmon_events_consumed_total\{[^}]*\}", alerts[name])
        assert consumed and all('stage!="card"' in c for c in consumed), name


def test_every_scale_out_series_is_on_the_health_dashboard() -> None:
    health = DASHBOARDS / "posmon-health.json"
    panels = list(_panels(_dashboard(health)))
    titles = [panel["title"] for panel in panels]
    assert "Scale-out" in titles
    scale_out = titles.index("Scale-out")
    following = [p for p in panels[scale_out + 1 :] if p["type"] != "row"][:4]
    shown = " ".join(t["expr"] for p in following for t in p.get("targets", []))
    for name in SCALE_OUT:
        assert name in shown, f"the Scale-out row shows no {name}"
    assert 'posmon_consumer_lag_messages{job="posmon", stage="card"}' in shown
    assert 'posmon_consumer_lag_messages{job="posmon", stage!="card"}' in shown


def test_the_card_stage_panel_marks_where_its_rule_fires() -> None:
    rules = {rule["alert"]: str(rule["expr"]) for rule in _alerting_rules()}
    match = re.search(r">\s*([0-9.]+)\s*$", rules["PosmonCardStageBehind"].strip())
    assert match
    (panel,) = [
        panel
        for panel in _panels(_dashboard(DASHBOARDS / "posmon-health.json"))
        if panel.get("title") == "Card stage delay by source partition"
    ]
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [step["value"] for step in steps[1:]] == [float(match.group(1))]
    behind = [
        t["expr"] for t in panel["targets"] if t["legendFormat"] == "behind the merchant stage"
    ]
    assert behind and " - on (job, partition) " in behind[0]
