"""The policy file: defaults are the contract's, unknown keys and bad values are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.cli.settings import ConfigError, Settings, load_settings
from monitor.scoring.policy import Policy


def test_defaults_are_the_contracts() -> None:
    p = Policy()
    d = p.detectors
    assert p.allowed_lateness == 120
    assert d.failed_then_debited.reversal_grace == 15 * 60
    assert d.failed_then_debited.unlinked_window == 30 * 60
    assert d.failed_then_debited.group_window == 24 * 3600
    assert d.failed_then_debited.severity == "critical"
    assert d.duplicate_debit.severity == "critical"
    assert d.missing_reversal.reversal_timeout == 120
    assert (d.small_amount_burst.min_attempts, d.small_amount_burst.max_amount_minor) == (5, 500)
    assert d.small_amount_burst.window == 600
    assert d.small_amount_burst.terminal_min_attempts is None
    assert (d.terminal_failure_spike.min_attempts, d.terminal_failure_spike.error_ratio) == (
        10,
        0.5,
    )
    assert d.terminal_failure_spike.window == 300
    assert d.large_amount.large_amount_minor == 1_000_000
    assert d.stale_preauth.timeout == 24 * 3600


def test_durations_with_units(tmp_path: Path) -> None:
    path = tmp_path / "posmon.yaml"
    path.write_text(
        "policy:\n  allowed_lateness: 90s\n"
        "  detectors:\n    failed_then_debited:\n      reversal_grace: 20m\n"
    )
    config = load_settings(path, environ={})
    assert config.policy.allowed_lateness == 90
    assert config.policy.detectors.failed_then_debited.reversal_grace == 1200


def test_no_file_means_defaults() -> None:
    assert load_settings(None, environ={}) == Settings()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("policy:\n  detectors:\n    failed_then_debitd: {}\n", "failed_then_debitd: unknown key"),
        ("policy:\n  allowed_lateness: soon\n", "not a duration"),
        (
            "policy:\n  detectors:\n    terminal_failure_spike:\n      error_ratio: 2\n",
            "error_ratio",
        ),
        ("policy:\n  detectors:\n    large_amount:\n      severity: loud\n", "severity"),
        ("- a\n- list\n", "must be a mapping"),
        ("policy: [\n", "not valid YAML"),
        ("policy:\n  state:\n    attempt_ttl: 10m\n", "attempt_ttl"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "posmon.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_settings(tmp_path / "nope.yaml", environ={})


def test_the_example_config_is_valid_and_states_the_defaults() -> None:
    example = Path(__file__).parent.parent / "config" / "posmon.example.yaml"
    assert load_settings(example, environ={}) == Settings()


def test_precedence_flags_then_environment_then_file(tmp_path: Path) -> None:
    path = tmp_path / "posmon.yaml"
    path.write_text(
        "kafka:\n  topic: from.file\n  group: file-group\npolicy:\n  allowed_lateness: 60\n"
    )
    environ = {"POSMON_KAFKA__TOPIC": "from.env", "POSMON_POLICY__ALLOWED_LATENESS": "90s"}
    settings = load_settings(path, flags={"kafka.topic": "from.flag"}, environ=environ)
    assert settings.kafka.topic == "from.flag"
    assert settings.kafka.group == "file-group"
    assert settings.policy.allowed_lateness == 90


def test_config_file_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "posmon.yaml"
    path.write_text("kafka:\n  topic: named.by.env\n")
    assert load_settings(None, environ={"POSMON_CONFIG": str(path)}).kafka.topic == "named.by.env"


def test_unknown_environment_variable_is_refused() -> None:
    with pytest.raises(ConfigError, match="kafak: unknown key"):
        load_settings(None, environ={"POSMON_KAFAK__TOPIC": "x"})


def test_a_duration_from_the_environment_may_be_bare_seconds() -> None:
    environ = {"POSMON_POLICY__ALLOWED_LATENESS": "45", "POSMON_KAFKA__IDLE_PARTITION_S": "1.5"}
    settings = load_settings(None, environ=environ)
    assert settings.policy.allowed_lateness == 45
    assert settings.kafka.idle_partition_s == 1.5


def test_the_dispatch_example_is_valid() -> None:
    example = Path(__file__).parent.parent / "config" / "dispatch.example.yaml"
    settings = load_settings(example, environ={})
    assert settings.dispatch is not None
    assert settings.dispatch.routes[0].name == "operations"
