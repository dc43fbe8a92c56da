"""The Helm chart (helm/posmon), rendered with Helm's own Go SDK (helm-python-sdk, no binary).

For the default values and every scenario of `helm/posmon/ci/*-values.yaml`:

- `helm lint --strict` finds nothing above INFO;
- every rendered object validates against the Kubernetes API schemas of the oldest and the
  newest version the chart supports (kubernetes-validate, strict: an unknown field fails);
- the ServiceMonitor, PrometheusRule and ScaledObject read into their CRD models (cloudcoil
  packages of the Prometheus Operator and KEDA) and back without a difference, so a field the
  CRD does not know fails instead of being dropped;
- the configuration in the ConfigMap is accepted by posmon's own start-up validation, with the
  variables the Deployments set (secrets from Secrets included), and every path it writes to is
  on a writable volume;
- the rules are the repository's rule files, untouched, and pass `promtool check rules`; the
  dashboards are the repository's files.

Bad values are refused by values.schema.json (or by the chart, where a schema cannot compare
two values) with a message that names the value.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.keda import v1alpha1 as keda
from cloudcoil.models.prometheus_operator import v1 as monitoring
from pydantic import BaseModel

from monitor.cli.oncall import build_channels, retry_policy
from monitor.cli.settings import load_settings
from monitor.streaming.embedded import EmbeddedBroker
from tests.broker import TEST_TIMINGS, free_port, fresh_topic
from tests.test_dashboards import _promtool

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "posmon"
SCENARIOS = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas of
# the pinned kubernetes-validate.
KUBERNETES_VERSIONS = ("1.27.0", "1.37.0")
CRD_MODELS: dict[str, type[BaseModel]] = {
    "ServiceMonitor": monitoring.ServiceMonitor,
    "PrometheusRule": monitoring.PrometheusRule,
    "ScaledObject": keda.ScaledObject,
}
WARNING = 2  # Helm's lint severities: 1 INFO, 2 WARNING, 3 ERROR

helm.disable_logging()  # "found symbolic link" (files/dashboards) on every load


def _values(scenario: str | None) -> dict[str, Any]:
    if scenario is None:
        return {}
    values: dict[str, Any] = yaml.safe_load((CHART / "ci" / scenario).read_text())
    return values


def render(values: dict[str, Any]) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name="pm", namespace="risk")


def manifests(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        document
        for name, text in render(values).items()
        if name.endswith(".yaml")
        for document in yaml.safe_load_all(text)
        if document
    ]


@cache
def _scenario(scenario: str | None) -> tuple[dict[str, Any], ...]:
    return tuple(manifests(_values(scenario)))


def _objects(scenario: str | None, kind: str) -> list[dict[str, Any]]:
    return [m for m in _scenario(scenario) if m["kind"] == kind]


def _one(scenario: str | None, kind: str, name: str) -> dict[str, Any]:
    (found,) = [m for m in _objects(scenario, kind) if m["metadata"]["name"] == name]
    return found


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = container
    return result


def _deployments(scenario: str | None) -> Iterator[tuple[str, dict[str, Any]]]:
    for deployment in _objects(scenario, "Deployment"):
        yield deployment["metadata"]["name"].removeprefix("pm-posmon-"), deployment


ALL = [None, *SCENARIOS]


@pytest.fixture(params=ALL, ids=lambda s: s or "defaults")
def scenario(request: pytest.FixtureRequest) -> str | None:
    value: str | None = request.param
    return value


# --- lint and schemas --------------------------------------------------------------------------


def test_every_scenario_is_there() -> None:
    assert SCENARIOS == [
        "autoscaling-values.yaml",
        "everything-values.yaml",
        "external-secrets-values.yaml",
    ]


def test_helm_lint_strict_finds_nothing(scenario: str | None) -> None:
    result = helm.lint(CHART, _values(scenario), strict=True)
    findings = [m for m in result["messages"] if m["severity"] >= WARNING]
    assert not findings and not result["errors"], findings or result["errors"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates_against_the_kubernetes_schemas(
    scenario: str | None, version: str
) -> None:
    checked = 0
    for manifest in _scenario(scenario):
        if manifest["kind"] in CRD_MODELS:
            continue
        kubernetes_validate.validate(manifest, version, strict=True)
        checked += 1
    assert checked >= 8


def test_strict_validation_would_fail_an_unknown_field() -> None:
    deployment = json.loads(json.dumps(_one(None, "Deployment", "pm-posmon-run")))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def _crd_difference(manifest: dict[str, Any]) -> dict[str, Any] | None:
    model = CRD_MODELS[manifest["kind"]].model_validate(manifest)
    dumped: dict[str, Any] = model.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return None if dumped == manifest else dumped


def test_operator_objects_read_into_their_crd_models_unchanged(scenario: str | None) -> None:
    for manifest in _scenario(scenario):
        if manifest["kind"] in CRD_MODELS:
            assert _crd_difference(manifest) is None, manifest["kind"]


def test_the_crd_check_would_catch_a_field_the_crd_does_not_know() -> None:
    scaled = json.loads(json.dumps(_objects("autoscaling-values.yaml", "ScaledObject")[0]))
    scaled["spec"]["maxReplicas"] = 6  # HPA's name, not KEDA's maxReplicaCount: dropped silently
    assert _crd_difference(scaled) is not None


def test_every_operator_object_is_rendered_somewhere() -> None:
    kinds = {m["kind"] for s in SCENARIOS for m in _scenario(s)}
    assert set(CRD_MODELS) <= kinds
    assert not {m["kind"] for m in _scenario(None)} & set(CRD_MODELS)  # all off by default


# --- posmon accepts what the chart gives it ----------------------------------------------------


def _environment(container: dict[str, Any]) -> dict[str, str]:
    """The container's variables; one from a Secret or the pod gets a stand-in value."""
    return {
        e["name"]: e.get("value", f"from-{e['name'].lower()}") for e in container.get("env", [])
    }


def _config(scenario: str | None, key: str, tmp_path: Path) -> Path:
    config_map = _one(scenario, "ConfigMap", "pm-posmon")
    path = tmp_path / key
    path.write_text(config_map["data"][key])
    return path


def _writable(deployment: dict[str, Any]) -> list[str]:
    """Mount paths a posmon process may write to."""
    container = _container(deployment)
    return [m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")]


def _on(path: object, mounts: list[str]) -> bool:
    return any(str(path).startswith(mount.rstrip("/") + "/") for mount in mounts)


def test_posmon_run_accepts_its_configuration(scenario: str | None, tmp_path: Path) -> None:
    deployment = _one(scenario, "Deployment", "pm-posmon-run")
    container = _container(deployment)
    environ = _environment(container)
    path = _config(scenario, "run.yaml", tmp_path)
    assert environ["POSMON_CONFIG"] == f"/etc/posmon/{path.name}"
    settings = load_settings(
        path, environ={k: v for k, v in environ.items() if k != "POSMON_CONFIG"}
    )
    assert settings.dispatch is None  # the pager runs apart, never twice
    assert container["args"] == ["run"]
    assert settings.metrics.port == container["ports"][0]["containerPort"]
    writable = _writable(deployment)
    for written in (settings.run.snapshot_dir, settings.model.feature_log):
        assert written is None or _on(written, writable), written
    if settings.model.path is not None:
        mounts = [m["mountPath"] for m in container["volumeMounts"]]
        assert str(settings.model.path) in mounts


def test_posmon_dispatch_accepts_its_configuration(scenario: str | None, tmp_path: Path) -> None:
    """The same checks as `posmon dispatch` at start-up, channels built: every secret a channel
    names is a variable of the Deployment (a missing one would stop the pod, exit 2)."""
    deployment = _one(scenario, "Deployment", "pm-posmon-dispatch")
    container = _container(deployment)
    environ = _environment(container)
    path = _config(scenario, "dispatch.yaml", tmp_path)
    settings = load_settings(
        path, environ={k: v for k, v in environ.items() if k != "POSMON_CONFIG"}
    )
    assert settings.dispatch is not None
    assert container["args"] == ["dispatch"]
    channels = build_channels(settings.dispatch, environ=environ)
    retry_policy(settings)
    assert set(channels) == set(settings.dispatch.channels)
    writable = _writable(deployment)
    for channel in settings.dispatch.channels.values():
        assert channel.path is None or _on(channel.path, writable), channel.path


def test_kafka_credentials_come_from_secrets_only() -> None:
    run = _container(_one("external-secrets-values.yaml", "Deployment", "pm-posmon-run"))
    (password,) = [e for e in run["env"] if e["name"] == "POSMON_KAFKA__SASL_PASSWORD"]
    assert password["valueFrom"]["secretKeyRef"] == {"name": "posmon-kafka", "key": "password"}
    text = "\n".join(render(_values("external-secrets-values.yaml")).values())
    assert "sasl_password" not in text
    assert {"name": "kafka-tls", "mountPath": "/etc/posmon/kafka-tls", "readOnly": True} in run[
        "volumeMounts"
    ]


# --- one source for rules and dashboards -------------------------------------------------------


def test_the_chart_reads_the_repositorys_dashboards_folder() -> None:
    link = CHART / "files" / "dashboards"
    assert link.is_symlink()
    assert link.resolve() == (ROOT / "dashboards").resolve()


def test_the_dashboards_are_the_repositorys_files() -> None:
    shipped = {p.name: p.read_text() for p in (ROOT / "dashboards").glob("*.json")}
    rendered = {}
    for config_map in _objects(None, "ConfigMap"):
        if config_map["metadata"].get("labels", {}).get("grafana_dashboard") == "1":
            rendered.update(config_map["data"])
    assert rendered == shipped


def _rule_groups() -> list[dict[str, Any]]:
    (rule,) = _objects("everything-values.yaml", "PrometheusRule")
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def test_the_prometheus_rule_holds_the_repositorys_rules_untouched() -> None:
    shipped = []
    for path in sorted((ROOT / "dashboards" / "prometheus").glob("*.rules.yml")):
        shipped.extend(yaml.safe_load(path.read_text())["groups"])

    def key(group: dict[str, Any]) -> str:
        return json.dumps(group, sort_keys=True)

    assert sorted(_rule_groups(), key=key) == sorted(shipped, key=key)
    annotations = json.dumps(_rule_groups())
    assert "{{ $labels.instance }}" in annotations  # not eaten by Helm's templating


def test_promtool_accepts_the_rules_the_chart_ships(tmp_path: Path) -> None:
    rules = tmp_path / "chart.rules.yml"
    rules.write_text(yaml.safe_dump({"groups": _rule_groups()}))
    result = subprocess.run(
        [_promtool(), "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_target_is_scraped_as_the_job_the_rules_select() -> None:
    (monitor,) = _objects("everything-values.yaml", "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert {"action": "replace", "targetLabel": "job", "replacement": "posmon"} in endpoint[
        "relabelings"
    ]
    service = _one("everything-values.yaml", "Service", "pm-posmon-metrics")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    for _, deployment in _deployments("everything-values.yaml"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()


# --- pods ---------------------------------------------------------------------------------------


def test_every_pod_meets_the_restricted_pod_security_standard(scenario: str | None) -> None:
    for name, deployment in _deployments(scenario):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        container = _container(deployment)
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, name
        assert context["readOnlyRootFilesystem"] is True, name
        assert context["capabilities"]["drop"] == ["ALL"], name
        assert "/tmp" in [m["mountPath"] for m in container["volumeMounts"]], name
        probes = {k: v["httpGet"]["path"] for k, v in container.items() if k.endswith("Probe")}
        assert probes["livenessProbe"] == "/healthz" and probes["readinessProbe"] == "/readyz"


def _checksums(values: dict[str, Any]) -> dict[str, str]:
    return {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        for d in manifests(values)
        if d["kind"] == "Deployment"
    }


def test_a_policy_change_rolls_the_scorers_and_a_routing_change_the_pagers() -> None:
    before = _checksums({})
    policy = _checksums({"config": {"policy": {"allowed_lateness": "90s"}}})
    routing = _checksums(
        {
            "dispatch": {
                "config": {
                    "channels": {"log": {"type": "console"}},
                    "default_route": {"channels": ["log"]},
                    "routes": [{"name": "all", "channels": ["log"]}],
                }
            }
        }
    )
    assert policy["pm-posmon-run"] != before["pm-posmon-run"]
    assert policy["pm-posmon-dispatch"] == before["pm-posmon-dispatch"]
    assert routing["pm-posmon-dispatch"] != before["pm-posmon-dispatch"]
    assert routing["pm-posmon-run"] == before["pm-posmon-run"]


def test_static_membership_names_each_member_after_its_pod() -> None:
    run = _container(_one(None, "Deployment", "pm-posmon-run"))
    (instance,) = [e for e in run["env"] if e["name"] == "POSMON_KAFKA__GROUP_INSTANCE_ID"]
    assert instance["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_autoscaling_is_capped_at_the_partitions_and_slow_to_scale_up() -> None:
    values = _values("autoscaling-values.yaml")
    (scaled,) = _objects("autoscaling-values.yaml", "ScaledObject")
    spec = scaled["spec"]
    assert spec["maxReplicaCount"] <= values["autoscaling"]["partitions"]
    assert spec["scaleTargetRef"]["name"] == "pm-posmon-run"
    up = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleUp"]
    assert up["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 300}]
    assert up["stabilizationWindowSeconds"] >= 300
    (trigger,) = spec["triggers"]
    assert trigger["metadata"]["consumerGroup"] == "posmon"
    assert trigger["metadata"]["topic"] == "pos.events"
    run = _one("autoscaling-values.yaml", "Deployment", "pm-posmon-run")
    assert "replicas" not in run["spec"]  # KEDA owns it


def test_the_notes_render_for_every_scenario(scenario: str | None) -> None:
    notes = render(_values(scenario))["posmon/templates/NOTES.txt"]
    assert "pm-posmon-run" in notes and "{{" not in notes


# --- refusals -----------------------------------------------------------------------------------

REFUSED = [
    ({"run": {"replicas": -1}}, "/run/replicas"),
    ({"image": {"tag": 5}}, "/image/tag"),
    ({"imag": {}}, "'imag' not allowed"),
    ({"config": {"kafka": {"bootstrap_servers": ""}}}, "/config/kafka/bootstrap_servers"),
    (
        {"config": {"kafka": {"bootstrap_servers": "k:9092", "sasl_password": "hunter2"}}},
        "set secrets.kafkaSaslPassword",
    ),
    ({"config": {"dispatch": {}}}, "set dispatch.config"),
    (
        {"dispatch": {"config": {"channels": {"pd": {"type": "pagerduty", "routing_key": "x"}}}}},
        "'routing_key' not allowed",
    ),
    ({"dispatch": {"secretEnv": {"PD_KEY": {"name": "pagerduty"}}}}, "missing property 'key'"),
    (
        {"dispatch": {"secretEnv": {"POSMON_PD": {"name": "a", "key": "b"}}}},
        "POSMON_ variables are settings",
    ),
    ({"autoscaling": {"enabled": True}}, "/autoscaling/partitions"),
    (
        {"autoscaling": {"enabled": True, "partitions": 2, "maxReplicas": 3}},
        "autoscaling.maxReplicas (3) exceeds autoscaling.partitions (2)",
    ),
    (
        {"run": {"replicas": 2, "state": {"persistence": {"enabled": True}}}},
        "give run.state.persistence.accessModes [ReadWriteMany]",
    ),
    (
        {
            "run": {"state": {"persistence": {"enabled": True}}},
            "autoscaling": {"enabled": True, "partitions": 6, "maxReplicas": 3},
        },
        "autoscaling.maxReplicas) would share one state claim",
    ),
    ({"serviceMonitor": {"interval": "often"}}, "/serviceMonitor/interval"),
]


@pytest.mark.parametrize(("values", "message"), REFUSED, ids=[m for _, m in REFUSED])
def test_bad_values_are_refused_naming_the_value(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError) as refused:
        render(values)
    assert message in str(refused.value)


def test_global_is_declared_for_parent_charts() -> None:
    assert manifests({"global": {"imageRegistry": "registry.example"}})


# --- the chart's README -------------------------------------------------------------------------


def _leaves(values: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in values.items():
        if isinstance(value, dict) and value and key not in ("config", "resources", "strategy"):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def test_the_chart_readme_lists_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [leaf for leaf in _leaves(values) if f"`{leaf}`" not in readme]
    assert not missing, missing


def test_the_packaged_chart_carries_the_files_not_the_link(tmp_path: Path) -> None:
    """`helm package` stores the dashboards and rules themselves (and nothing else of
    dashboards/: no generator, no provisioning, no promtool tests); the package renders the
    same objects as the chart folder."""
    archive = helm.package(CHART, destination=tmp_path)
    with tarfile.open(archive) as tar:
        files = sorted(n for n in tar.getnames() if n.startswith("posmon/files/"))
    shipped = sorted(
        f"posmon/files/dashboards/{p.relative_to(ROOT / 'dashboards')}"
        for p in [
            *(ROOT / "dashboards").glob("*.json"),
            *(ROOT / "dashboards" / "prometheus").glob("*.rules.yml"),
        ]
    )
    assert files == shipped
    with helm.Chart.load_archive(Path(archive).read_bytes()) as packaged:
        assert packaged.render({}, name="pm", namespace="risk") == render({})


# --- the rendered pods, run ---------------------------------------------------------------------


def _launch(
    deployment: dict[str, Any], config: str, tmp_path: Path, port: int
) -> subprocess.Popen[bytes]:
    """The pod's container as a process: its arguments, its variables (a Secret's or the pod's
    value stood in for), its configuration file with the mounted paths under `tmp_path`."""
    container = _container(deployment)
    name = container["name"]
    data = tmp_path / name
    text = config.replace("/var/lib/posmon", str(data))
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith("POSMON_")},
        **_environment(container),
        "POSMON_CONFIG": str(path),
        # Two processes on one loopback: the port the chart gives both is moved for the test.
        "POSMON_METRICS__HOST": "127.0.0.1",
        "POSMON_METRICS__PORT": str(port),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "monitor", *container["args"]],
        cwd=tmp_path,
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / f"{name}.log").open("wb"),
    )


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def test_the_rendered_pods_start_and_get_ready_on_a_real_broker(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """The chart's two containers, as `posmon` processes with the chart's arguments, variables
    and configuration files, against the embedded broker: both get ready, both stop cleanly."""
    topic = fresh_topic(broker, partitions=3)
    kafka = {
        "bootstrap_servers": broker.bootstrap_servers,
        "topic": topic,
        "group": f"{topic}-group",
        "alerts_topic": f"{topic}.alerts",
        "labels_topic": "",
        "session_timeout_ms": TEST_TIMINGS["session_timeout_ms"],
        "heartbeat_interval_ms": TEST_TIMINGS["heartbeat_interval_ms"],
    }
    objects = manifests({"config": {"kafka": kafka, "run": {"snapshot_dir": "/var/lib/posmon/s"}}})
    (config_map,) = [
        o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "pm-posmon"
    ]
    deployments = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    ports = {"run.yaml": free_port(), "dispatch.yaml": free_port()}
    processes = [
        _launch(
            deployments["pm-posmon-run"],
            config_map["data"]["run.yaml"],
            tmp_path,
            ports["run.yaml"],
        ),
        _launch(
            deployments["pm-posmon-dispatch"],
            config_map["data"]["dispatch.yaml"],
            tmp_path,
            ports["dispatch.yaml"],
        ),
    ]
    try:
        deadline = time.monotonic() + 90
        while not all(_ready(p) for p in ports.values()):
            assert time.monotonic() < deadline, [
                (tmp_path / f"{n}.log").read_text()[-2000:] for n in ("run", "dispatch")
            ]
            assert all(p.poll() is None for p in processes)
            time.sleep(0.5)
        for process in processes:
            process.send_signal(signal.SIGTERM)
        assert [p.wait(timeout=30) for p in processes] == [0, 0]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
