"""All settings of a posmon process: the YAML file, `POSMON_...` environment variables, flags.

Precedence (docs/contract.md, "Commands"): flags, then environment variables, then the file,
then the defaults. Environment variables name a setting by its path with `__` between levels:
`POSMON_KAFKA__BOOTSTRAP_SERVERS=broker:9092`, `POSMON_POLICY__ALLOWED_LATENESS=90s`.
`POSMON_CONFIG` names the file when `--config` is not given. An unknown key, in the file or in
the environment, is an error: a typo must not fall back to a default silently. The prefix is
for settings only: a channel's secret variable must not start with `POSMON_` (routing.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from monitor.core.durations import Seconds
from monitor.paging.routing import DispatchConfig
from monitor.scoring.policy import Policy
from monitor.streaming.settings import KafkaSettings

ENV_PREFIX = "POSMON_"
CONFIG_ENV = "POSMON_CONFIG"


class ConfigError(Exception):
    """A configuration that cannot be used; the message is one line for a person."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricsSettings(_Strict):
    """Where `/metrics`, `/healthz` and `/readyz` are served (port 0: pick a free one)."""

    host: str = "0.0.0.0"
    port: Annotated[int, Field(ge=0, le=65535)] = 9464


class RunSettings(_Strict):
    ready_max_lag: Annotated[int, Field(ge=0)] = 10_000  # messages behind, summed over partitions
    stall_after: Seconds = 60.0  # /healthz fails when the loop has not turned for this long
    # A dead letter's `raw` is cut to this many bytes (as a JSON string), so that it fits a
    # Kafka message (1 MiB by default) whatever the message held.
    dead_letter_raw_bytes: Annotated[int, Field(ge=1024, le=512 * 1024)] = 64 * 1024
    # Snapshots of the scorer's state (docs/streaming.md, "Snapshots"): with a directory, a
    # restart reads the state back and re-reads only what came after it; without one, every
    # restart re-reads the whole topic.
    snapshot_dir: Path | None = None
    snapshot_every: Seconds = 60.0


class DeliverySettings(_Strict):
    """Retries of a channel that fails: exponential backoff with jitter, honouring Retry-After,
    until `deadline`, after which the alert is parked on `posmon.alerts.dlq`."""

    initial: Seconds = 1.0
    max_delay: Seconds = 60.0
    deadline: Seconds = 3600.0


class Settings(_Strict):
    policy: Policy = Policy()
    kafka: KafkaSettings = KafkaSettings()
    metrics: MetricsSettings = MetricsSettings()
    run: RunSettings = RunSettings()
    dispatch: DispatchConfig | None = None  # channels and routes; `posmon run` dispatches too
    delivery: DeliverySettings = DeliverySettings()


def load_settings(
    path: Path | None,
    *,
    flags: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge the file, the environment and the flags (dotted keys, e.g. `kafka.topic`)."""
    environ = os.environ if environ is None else environ
    if path is None and environ.get(CONFIG_ENV):
        path = Path(environ[CONFIG_ENV])
    merged = _read_yaml(path) if path is not None else {}
    for path_in_env, text in _from_environment(environ).items():
        _put(merged, path_in_env, text)
    for dotted, value in (flags or {}).items():
        if value is not None:
            _put(merged, tuple(dotted.split(".")), value)
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        where = f"config {path}" if path else "configuration"
        raise ConfigError(f"{where}: {_describe(exc)}") from exc


def load_policy(path: Path | None) -> Policy:
    """The detection policy alone (for `posmon replay`), from the same file."""
    return load_settings(path, environ={}).policy


def _read_yaml(path: Path) -> dict[str, object]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {' '.join(str(exc).split())}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of settings, not {type(data).__name__}")
    return data


def _from_environment(environ: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    found = {}
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX) and name != CONFIG_ENV:
            found[tuple(name[len(ENV_PREFIX) :].lower().split("__"))] = value
    return found


def _put(tree: dict[str, object], key: tuple[str, ...], value: object) -> None:
    node = tree
    for part in key[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[key[-1]] = value


def _describe(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)
