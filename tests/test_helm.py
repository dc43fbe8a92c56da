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
        "split-stages-values.yaml",
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


def _scorers(scenario: str | None) -> dict[str, dict[str, Any]]:
    """The Deployments of `posmon run`: run, and cards when the card stage runs apart."""
    return {
        name: deployment
        for name, deployment in _deployments(scenario)
        if _container(deployment)["args"] == ["run"]
    }


def test_posmon_run_accepts_its_configuration(scenario: str | None, tmp_path: Path) -> None:
    values = _values(scenario)
    scorers = _scorers(scenario)
    assert set(scorers) == ({"run", "cards"} if values.get("cards", {}).get("enabled") else {"run"})
    path = _config(scenario, "run.yaml", tmp_path)
    for name, deployment in scorers.items():
        container = _container(deployment)
        environ = _environment(container)
        assert environ["POSMON_CONFIG"] == f"/etc/posmon/{path.name}"
        settings = load_settings(
            path, environ={k: v for k, v in environ.items() if k != "POSMON_CONFIG"}
        )
        assert settings.dispatch is None  # the pager runs apart, never twice
        stage = "card" if name == "cards" else values.get("run", {}).get("stage", "both")
        assert settings.run.stage == stage, name
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


def _triggers(scaled: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (t["metadata"]["topic"], t["metadata"]["consumerGroup"]) for t in scaled["spec"]["triggers"]
    ]


def test_autoscaling_is_capped_at_the_partitions_and_slow_to_scale_up() -> None:
    values = _values("autoscaling-values.yaml")
    (scaled,) = _objects("autoscaling-values.yaml", "ScaledObject")
    spec = scaled["spec"]
    scaling = values["autoscaling"]
    assert spec["maxReplicaCount"] <= max(scaling["partitions"], scaling["cardPartitions"])
    assert spec["scaleTargetRef"]["name"] == "pm-posmon-run"
    up = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleUp"]
    assert up["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 300}]
    assert up["stabilizationWindowSeconds"] >= 300
    run = _one("autoscaling-values.yaml", "Deployment", "pm-posmon-run")
    assert "replicas" not in run["spec"]  # KEDA owns it


def test_with_both_stages_the_scorers_scale_on_both_groups() -> None:
    """Every pod of run.stage both is a member of the events group and of the card group: one
    trigger each, the card group's topic and name derived as posmon derives them."""
    (scaled,) = _objects("autoscaling-values.yaml", "ScaledObject")
    assert _triggers(scaled) == [("pos.events", "posmon"), ("posmon.cards", "posmon-cards")]
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["metadata"]["allowIdleConsumers"] == "false"
        assert trigger["authenticationRef"] == {"name": "kafka-scaler-auth"}
    scaling = {"enabled": True, "partitions": 6, "cardPartitions": 3}
    for kafka, cards in [
        ({"group": "risk", "cards_topic": "c", "cards_group": "cg"}, ("c", "cg")),
        ({"group": "risk"}, ("risk.cards", "risk-cards")),
    ]:
        values = {"config": {"kafka": kafka}, "autoscaling": scaling}
        (scaled,) = [m for m in manifests(values) if m["kind"] == "ScaledObject"]
        assert _triggers(scaled) == [("pos.events", "risk"), cards]


def test_the_split_stages_scale_apart_each_on_its_group() -> None:
    values = _values("split-stages-values.yaml")
    kafka = values["config"]["kafka"]
    scaled = {
        m["metadata"]["name"]: m for m in _objects("split-stages-values.yaml", "ScaledObject")
    }
    assert set(scaled) == {"pm-posmon-run", "pm-posmon-cards"}
    run, cards = scaled["pm-posmon-run"]["spec"], scaled["pm-posmon-cards"]["spec"]
    assert _triggers(scaled["pm-posmon-run"]) == [(kafka["topic"], kafka["group"])]
    assert _triggers(scaled["pm-posmon-cards"]) == [(kafka["cards_topic"], kafka["cards_group"])]
    assert cards["scaleTargetRef"]["name"] == "pm-posmon-cards"
    assert run["maxReplicaCount"] == values["autoscaling"]["maxReplicas"]
    assert cards["maxReplicaCount"] == values["autoscaling"]["cardPartitions"]
    assert cards["advanced"] == run["advanced"]  # as slow to scale up
    deployment = _one("split-stages-values.yaml", "Deployment", "pm-posmon-cards")
    assert "replicas" not in deployment["spec"]  # KEDA owns it


def _stage(deployment: dict[str, Any]) -> str:
    return _environment(_container(deployment))["POSMON_RUN__STAGE"]


def test_each_scorer_is_given_its_stage() -> None:
    assert _stage(_one(None, "Deployment", "pm-posmon-run")) == "both"
    assert _stage(_one("split-stages-values.yaml", "Deployment", "pm-posmon-run")) == "merchant"
    cards = _one("split-stages-values.yaml", "Deployment", "pm-posmon-cards")
    assert _stage(cards) == "card"
    assert cards["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "cards"
    everything = _values("everything-values.yaml")
    for stage in ("merchant", "all"):
        values = {**everything, "run": {**everything["run"], "stage": stage}}
        (run,) = [
            m
            for m in manifests(values)
            if m["metadata"]["name"] == "pm-posmon-run" and m["kind"] == "Deployment"
        ]
        assert _stage(run) == stage
    assert not [m for m in _scenario(None) if m["metadata"]["name"] == "pm-posmon-cards"]


def test_the_card_deployment_runs_as_the_scorer_runs() -> None:
    """The card stage apart: run's pod and container security, probes, volumes, scheduling and
    extras; its own name, replicas, resources and disruption budget."""
    values = _values("split-stages-values.yaml")
    everything = _values("everything-values.yaml")
    values = {**everything, **values, "run": {**everything["run"], **values["run"]}}
    values["autoscaling"] = {"enabled": False}
    values["cards"] = {**values["cards"], "replicas": 2}
    objects = manifests(values)
    deployments = {m["metadata"]["name"]: m for m in objects if m["kind"] == "Deployment"}
    run, cards = deployments["pm-posmon-run"], deployments["pm-posmon-cards"]
    run_pod, cards_pod = run["spec"]["template"]["spec"], cards["spec"]["template"]["spec"]
    assert cards_pod["securityContext"] == run_pod["securityContext"]
    assert cards_pod["automountServiceAccountToken"] is False
    run_container, cards_container = _container(run), _container(cards)
    assert cards_container["securityContext"] == run_container["securityContext"]
    for key in ("startupProbe", "livenessProbe", "readinessProbe", "volumeMounts", "image", "args"):
        assert cards_container[key] == run_container[key], key
    for key in ("volumes", "nodeSelector", "tolerations", "affinity", "priorityClassName"):
        assert cards_pod[key] == run_pod[key], key
    assert cards_container["resources"] == values["cards"]["resources"]
    assert run_container["resources"] != cards_container["resources"]
    assert cards["spec"]["replicas"] == 2
    budgets = {
        m["metadata"]["name"]: m["spec"] for m in objects if m["kind"] == "PodDisruptionBudget"
    }
    assert budgets["pm-posmon-cards"]["maxUnavailable"] == 2
    selector = budgets["pm-posmon-cards"]["selector"]["matchLabels"]
    assert selector.items() <= cards["spec"]["template"]["metadata"]["labels"].items()
    assert not selector.items() <= run["spec"]["template"]["metadata"]["labels"].items()
    env = [e for e in cards_container["env"] if e["name"] != "POSMON_RUN__STAGE"]
    assert env == [e for e in run_container["env"] if e["name"] != "POSMON_RUN__STAGE"]


def _notes(values: dict[str, Any]) -> str:
    return render(values)["posmon/templates/NOTES.txt"]


def test_the_notes_warn_of_several_scorers_only_with_stage_all() -> None:
    warning = "WARNING: more than one scorer with run.stage all"
    assert warning in _notes({"run": {"stage": "all", "replicas": 2}})
    scaling = {"enabled": True, "partitions": 6, "cardPartitions": 6}
    assert warning in _notes({"run": {"stage": "all"}, "autoscaling": scaling})
    assert warning not in _notes({"run": {"stage": "all"}})
    assert warning not in _notes({"run": {"replicas": 3}, "autoscaling": scaling})
    for scenario in SCENARIOS:
        assert warning not in _notes(_values(scenario)), scenario
    alone = _notes({"run": {"stage": "merchant"}})
    assert "No card stage runs here" in alone and "posmon.cards in group posmon-cards" in alone
    split = _notes(_values("split-stages-values.yaml"))
    assert "No card stage runs here" not in split
    assert "the card stage (pm-posmon-cards) reads what it needs from posmon.cards.v1" in split


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
        {"autoscaling": {"enabled": True, "partitions": 2, "cardPartitions": 2, "maxReplicas": 3}},
        "autoscaling.maxReplicas (3) exceeds autoscaling.partitions (2)",
    ),
    (
        {"autoscaling": {"enabled": True, "partitions": 6, "cardPartitions": 4, "maxReplicas": 7}},
        "exceeds autoscaling.partitions (6) and autoscaling.cardPartitions (4): with run.stage"
        " both each pod is a member of both groups, and members beyond a group's partitions idle",
    ),
    (
        {
            "run": {"stage": "merchant"},
            "autoscaling": {
                "enabled": True,
                "partitions": 6,
                "cardPartitions": 8,
                "maxReplicas": 8,
            },
        },
        "autoscaling.maxReplicas (8) exceeds autoscaling.partitions (6): members beyond a group's"
        " partitions idle in that group",
    ),
    ({"autoscaling": {"enabled": True, "partitions": 6}}, "/autoscaling/cardPartitions"),
    (
        {
            "run": {"stage": "merchant"},
            "cards": {"enabled": True},
            "autoscaling": {"enabled": True, "partitions": 6},
        },
        "/autoscaling/cardPartitions",
    ),
    ({"run": {"stage": "card"}}, "the card stage runs in its own Deployment"),
    ({"run": {"stage": "sometimes"}}, "/run/stage"),
    ({"cards": {"enabled": True}}, "/cards/enabled': value must be 'only with run.stage merchant"),
    (
        {"run": {"stage": "all"}, "cards": {"enabled": True}},
        "/cards/enabled': value must be 'only with run.stage merchant",
    ),
    ({"cards": {"replicas": -1}}, "/cards/replicas"),
    (
        {"config": {"kafka": {"bootstrap_servers": "k:9092"}, "run": {"stage": "all"}}},
        "/config/run/stage': value must be 'not here: set run.stage",
    ),
    (
        {
            "run": {"stage": "merchant", "state": {"persistence": {"enabled": True}}},
            "cards": {"enabled": True},
        },
        "the card stage's pods of cards.enabled) would share one state claim",
    ),
    (
        {"run": {"replicas": 2, "state": {"persistence": {"enabled": True}}}},
        "give run.state.persistence.accessModes [ReadWriteMany]",
    ),
    (
        {
            "run": {"state": {"persistence": {"enabled": True}}},
            "autoscaling": {
                "enabled": True,
                "partitions": 6,
                "cardPartitions": 6,
                "maxReplicas": 3,
            },
        },
        "autoscaling.maxReplicas, and the card stage's pods of cards.enabled) would share",
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


def _kafka(broker: EmbeddedBroker) -> dict[str, Any]:
    """posmon's `kafka:` section for a fresh topic of the embedded broker (and its own internal
    topic, so that no other test's forwarded events are read)."""
    topic = fresh_topic(broker, partitions=3)
    return {
        "bootstrap_servers": broker.bootstrap_servers,
        "topic": topic,
        "group": f"{topic}-group",
        "alerts_topic": f"{topic}.alerts",
        "labels_topic": "",
        "cards_topic": f"{topic}.cards",
        "session_timeout_ms": TEST_TIMINGS["session_timeout_ms"],
        "heartbeat_interval_ms": TEST_TIMINGS["heartbeat_interval_ms"],
    }


def _run_pods(values: dict[str, Any], names: list[str], tmp_path: Path) -> None:
    """The chart's containers `names`, as `posmon` processes with the chart's arguments,
    variables and configuration files, against the embedded broker: all get ready, all stop
    cleanly on SIGTERM."""
    objects = manifests(values)
    (config_map,) = [
        o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "pm-posmon"
    ]
    deployments = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    ports = {name: free_port() for name in names}
    processes = [
        _launch(
            deployments[f"pm-posmon-{name}"],
            config_map["data"]["dispatch.yaml" if name == "dispatch" else "run.yaml"],
            tmp_path,
            ports[name],
        )
        for name in names
    ]
    try:
        deadline = time.monotonic() + 90
        while not all(_ready(p) for p in ports.values()):
            assert time.monotonic() < deadline, [
                (tmp_path / f"{n}.log").read_text()[-2000:] for n in names
            ]
            assert all(p.poll() is None for p in processes), [
                (tmp_path / f"{n}.log").read_text()[-2000:] for n in names
            ]
            time.sleep(0.5)
        for process in processes:
            process.send_signal(signal.SIGTERM)
        assert [p.wait(timeout=30) for p in processes] == [0] * len(names)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()


def test_the_rendered_pods_start_and_get_ready_on_a_real_broker(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """The chart's two containers, the scorer with both stages and the pager: both get ready,
    both stop cleanly."""
    run = {"snapshot_dir": "/var/lib/posmon/s"}
    _run_pods({"config": {"kafka": _kafka(broker), "run": run}}, ["run", "dispatch"], tmp_path)


def test_the_split_stages_start_and_get_ready_on_a_real_broker(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """run.stage merchant with cards.enabled: the merchant stage and the card stage, each from
    its own Deployment, get ready and stop cleanly."""
    values = {
        "config": {"kafka": _kafka(broker), "run": {"snapshot_dir": "/var/lib/posmon/s"}},
        "run": {"stage": "merchant"},
        "cards": {"enabled": True},
        "dispatch": {"enabled": False},
    }
    _run_pods(values, ["run", "cards"], tmp_path)
