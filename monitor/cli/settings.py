"""All settings of a posmon process: the YAML file, `POSMON_...` environment variables, flags.

Precedence (docs/contract.md, "Commands"): flags, then environment variables, then the file,
then the defaults. Environment variables name a setting by its path with `__` between levels:
`POSMON_KAFKA__BOOTSTRAP_SERVERS=broker:9092`, `POSMON_POLICY__ALLOWED_LATENESS=90s`.
`POSMON_CONFIG` names the file when `--config` is not given. An unknown key, in the file or in
the environment, is an error: a typo must not fall back to a default silently. The prefix is
for settings only: a channel's secret variable must not start with `POSMON_` (routing.py).

The file is read strictly, because a configuration that is quietly not what was written is
worse than one refused: a key given twice is an error (YAML would keep the last one), with the
file, the line and the key; and a secret written in it (a channel's key, a Kafka password) is
refused, naming the key: secrets come from the environment or from files only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from monitor.core.durations import Seconds, within
from monitor.paging.routing import DAY, HOUR, DispatchConfig
from monitor.scoring.policy import Policy
from monitor.streaming.settings import KafkaSettings

ENV_PREFIX = "POSMON_"
CONFIG_ENV = "POSMON_CONFIG"
MAX_CONFIG_BYTES = 1024 * 1024  # a configuration is a few kilobytes; a bigger file is a mistake
# Settings that are secrets: allowed from the environment (`POSMON_KAFKA__SASL_PASSWORD`), never
# from the file. A channel's secrets are refused by its own model (routing.ChannelConfig).
ENV_ONLY_SECRETS = frozenset({("kafka", "sasl_password"), ("kafka", "ssl_password")})


class ConfigError(Exception):
    """A configuration that cannot be used; the message is one line for a person."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricsSettings(_Strict):
    """Where `/metrics`, `/healthz` and `/readyz` are served (port 0: pick a free one)."""

    # Prometheus scrapes it from outside the container; 127.0.0.1 keeps it local.
    host: str = "0.0.0.0"  # nosec B104
    port: Annotated[int, Field(ge=0, le=65535)] = 9464


class RunSettings(_Strict):
    # Which stages of the scorer this process runs (docs/streaming.md, "Scale-out"): `both`
    # (the merchant stage and the card stage, each in its own consumer group, joined by
    # `kafka.cards_topic`: right for any number of replicas), one of them alone, or `all` (one
    # scorer holding every event: exact only while one process reads the whole topic).
    stage: Literal["both", "merchant", "card", "all"] = "both"
    ready_max_lag: Annotated[int, Field(ge=0)] = 10_000  # messages behind, summed over partitions
    # /healthz fails when the loop has not turned for this long.
    stall_after: Annotated[Seconds, within(DAY, positive=True)] = 60.0
    # A dead letter's `raw` is cut to this many bytes (as a JSON string), so that it fits a
    # Kafka message (1 MiB by default) whatever the message held.
    dead_letter_raw_bytes: Annotated[int, Field(ge=1024, le=512 * 1024)] = 64 * 1024
    # Snapshots of the scorer's state (docs/streaming.md, "Snapshots"): with a directory, a
    # restart reads the state back and re-reads only what came after it; without one, every
    # restart re-reads the whole topic.
    snapshot_dir: Path | None = None
    snapshot_every: Annotated[Seconds, within(DAY)] = 60.0


class DeliverySettings(_Strict):
    """Retries of a channel that fails: exponential backoff with jitter, honouring Retry-After,
    until `deadline`, after which the alert is parked on `posmon.alerts.dlq`."""

    initial: Annotated[Seconds, within(HOUR)] = 1.0
    max_delay: Annotated[Seconds, within(DAY)] = 60.0
    deadline: Annotated[Seconds, within(7 * DAY)] = 3600.0


class ModelSettings(_Strict):
    """The anomaly model (docs/model.md): which artifact, a shadow beside it, reloads, drift,
    and the feature log of `posmon run`."""

    enabled: bool = True
    path: Path | None = None  # None: the model shipped with posmon
    shadow: Path | None = None  # scored on the same batches, never alerting
    reload_every: Annotated[Seconds, within(DAY)] = 10.0  # look for a new artifact; 0: never
    drift_window: Annotated[Seconds, within(31 * DAY, positive=True)] = 24 * 3600.0
    feature_log: Path | None = None  # a directory for Parquet files; None: none written
    feature_log_every: Annotated[Seconds, within(DAY, positive=True)] = 300.0  # flush interval


class Settings(_Strict):
    policy: Policy = Policy()
    model: ModelSettings = ModelSettings()
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
    path = config_path(path, environ)
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


def config_path(path: Path | None, environ: Mapping[str, str] | None = None) -> Path | None:
    """The configuration file a command reads: `--config`, else the one `POSMON_CONFIG` names."""
    environ = os.environ if environ is None else environ
    if path is None and environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    return path


def load_policy(path: Path | None) -> Policy:
    """The detection policy of a file alone, whatever the environment says (tests and tools
    that must not depend on it; `posmon replay` calls `load_settings`, as `posmon run` does)."""
    return load_settings(path, environ={}).policy


class _DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: object, line: int, first: int) -> None:
        super().__init__(f"line {line}: duplicate key {key!r} (first at line {first})")


class _StrictLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in one mapping (YAML would keep the last
    silently), and keeps an integer too long for Python as its text, for the setting's own
    validation to refuse with the key's name (PyYAML would raise a bare ValueError)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[object, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` may be overridden, by design
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in first:
                    raise _DuplicateKeyError(key, line, first[key])
                first[key] = line
            except TypeError:  # an unhashable key: the base class says so
                pass
        return super().construct_mapping(node, deep=deep)

    @classmethod
    def load(cls, text: str) -> object:
        """The one document in `text` (what `yaml.safe_load` does, with this loader)."""
        loader = cls(text)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int | str:
    try:
        return loader.construct_yaml_int(node)
    except ValueError:  # more digits than Python converts: the setting refuses the text
        return str(node.value)


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _read_yaml(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config {path} is larger than {MAX_CONFIG_BYTES:,} bytes")
    try:
        data = _StrictLoader.load(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {path} is not UTF-8: {exc.reason} at byte {exc.start}") from exc
    except _DuplicateKeyError as exc:
        raise ConfigError(f"config {path}, {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {_yaml_problem(exc)}") from exc
    except RecursionError as exc:
        raise ConfigError(f"config {path} is nested too deeply to read") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of settings, not {type(data).__name__}")
    _refuse_written_secrets(data, path)
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what, on one line, without quoting the file: the line may hold a secret."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        context = f" ({exc.context})" if exc.context else ""
        return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}{context}"
    return " ".join(str(exc).split())


def _refuse_written_secrets(data: dict[str, object], path: Path) -> None:
    """Refuse a Kafka password written in the file, naming its key (never its value). A
    channel's keys are refused by `ChannelConfig` itself, wherever its section comes from."""
    for section, key in sorted(ENV_ONLY_SECRETS):
        values = data.get(section)
        if isinstance(values, dict) and key in values:
            variable = f"{ENV_PREFIX}{section.upper()}__{key.upper()}"
            raise ConfigError(
                f"config {path}: {section}.{key}: a secret must not be written in the"
                f" configuration; set the environment variable {variable}"
            )


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
