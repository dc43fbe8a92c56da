"""Issue 11, hostile input: configuration without holes, and a replay that never harms its input.

Each configuration hole is refused with one line naming the key (exit 2, never a traceback);
each output that would overwrite an input or another output is refused before anything is
written, and the input's bytes are checked unchanged by hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import pytest

from monitor.cli.main import main
from monitor.cli.settings import ConfigError, load_settings
from monitor.streaming.files import JsonlSink
from tests.builders import encode, event

REPO = Path(__file__).resolve().parent.parent
CONSOLE_ROUTE = (
    "dispatch:\n  channels:\n    c: {type: console}\n  routes:\n    - {name: r, channels: [c]%s}\n"
)


def refused(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    """The one-line message of the configuration `text`, which must be refused."""
    path = tmp_path / "posmon.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ=environ or {})
    message = str(info.value)
    assert "\n" not in message
    return message


def posmon(
    *args: str, env: dict[str, str] | None = None, stdin: int | IO[bytes] = subprocess.DEVNULL
) -> subprocess.CompletedProcess[str]:
    """The command as a separate process (a replay switches the test process's GC off)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("POSMON_")}
    return subprocess.run(
        [sys.executable, "-m", "monitor", *args],
        check=False,
        cwd=REPO,
        env={**clean, **(env or {})},
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run `posmon ARGV` in this process (every case here stops before any work) and return
    its error line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("posmon: error: "), err
    assert "Traceback" not in err
    return err


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- durations: finite, within documented bounds -------------------------------------------

DURATION_KEYS = {
    "policy.allowed_lateness": "policy:\n  allowed_lateness: %s\n",
    "policy.max_future_skew": "policy:\n  max_future_skew: %s\n",
    "policy.state.attempt_ttl": "policy:\n  state:\n    attempt_ttl: %s\n",
    "policy.detectors.missing_reversal.reversal_timeout": (
        "policy:\n  detectors:\n    missing_reversal:\n      reversal_timeout: %s\n"
    ),
    "kafka.startup_timeout": "kafka:\n  startup_timeout: %s\n",
    "kafka.idle_partition_s": "kafka:\n  idle_partition_s: %s\n",
    "run.stall_after": "run:\n  stall_after: %s\n",
    "run.snapshot_every": "run:\n  snapshot_every: %s\n",
    "delivery.deadline": "delivery:\n  deadline: %s\n",
    "dispatch.routes.0.group_wait": CONSOLE_ROUTE % ", group_wait: %s",
    "dispatch.routes.0.group_interval": CONSOLE_ROUTE % ", group_interval: %s",
    "dispatch.routes.0.repeat_interval": CONSOLE_ROUTE % ", repeat_interval: %s",
    "dispatch.routes.0.storm_limit.per": CONSOLE_ROUTE % ", storm_limit: {per: %s}",
}


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "true", "40d", "9" * 5000])
@pytest.mark.parametrize("key", sorted(DURATION_KEYS))
def test_a_duration_that_is_not_finite_or_is_out_of_bounds_is_refused_naming_it(
    tmp_path: Path, key: str, value: str
) -> None:
    message = refused(tmp_path, DURATION_KEYS[key] % value)
    assert f"{key}: " in message


@pytest.mark.parametrize(
    ("key", "text", "bound"),
    [
        ("group_wait", CONSOLE_ROUTE % ", group_wait: 61m", "at most 1h"),
        ("group_interval", CONSOLE_ROUTE % ", group_interval: 25h", "at most 1d"),
        ("group_interval", CONSOLE_ROUTE % ", group_interval: 0", "more than 0"),
        (
            "hold",
            CONSOLE_ROUTE % "" + "  inhibitions: [{source: {}, target: {}, hold: 2d}]\n",
            "at most 1d",
        ),
        ("stall_after", "run:\n  stall_after: 0\n", "more than 0"),
        ("deadline", "delivery:\n  deadline: 8d\n", "at most 7d"),
        ("session_timeout_ms", "kafka:\n  session_timeout_ms: 3600001\n", "less than or equal"),
        ("poll_timeout_ms", "kafka:\n  poll_timeout_ms: 60001\n", "less than or equal"),
    ],
)
def test_each_setting_keeps_its_documented_bound(
    tmp_path: Path, key: str, text: str, bound: str
) -> None:
    message = refused(tmp_path, text)
    assert key in message and bound in message, message


def test_the_bounds_themselves_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "posmon.yaml"
    path.write_text(
        "policy:\n  state:\n    attempt_ttl: 31d\n"
        "  detectors:\n    stale_preauth:\n      timeout: 30d\n"
        "delivery:\n  deadline: 7d\n"
        + CONSOLE_ROUTE
        % ", group_wait: 1h, group_interval: 1d, repeat_interval: 31d"
    )
    settings = load_settings(path, environ={})
    assert settings.policy.state.attempt_ttl == 31 * 86400
    assert settings.dispatch is not None and settings.dispatch.routes[0].group_wait == 3600


def test_an_infinite_duration_from_the_environment_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"policy\.allowed_lateness: .*not a duration"):
        load_settings(None, environ={"POSMON_POLICY__ALLOWED_LATENESS": "inf"})


def test_infinite_durations_end_the_commands_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "posmon.yaml"
    config.write_text(
        "policy:\n  detectors:\n    missing_reversal:\n      reversal_timeout: .inf\n"
    )
    err = one_line_exit_2(
        ["replay", "-", "--alerts", str(tmp_path / "a.jsonl"), "--config", str(config)], capsys
    )
    assert "policy.detectors.missing_reversal.reversal_timeout" in err
    config.write_text(CONSOLE_ROUTE % ", group_wait: .inf")
    done = posmon("dispatch", "--config", str(config))
    assert done.returncode == 2, done.stderr
    assert (
        "dispatch.routes.0.group_wait: " in done.stderr and "not a finite duration" in done.stderr
    )
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


# --- secrets: from the environment or a file, never written in the YAML ----------------------


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("kafka:\n  sasl_password: hunter2\n", "kafka.sasl_password"),
        ("kafka:\n  ssl_password: hunter2\n", "kafka.ssl_password"),
        (
            "dispatch:\n  channels:\n    s: {type: slack, url: 'https://hooks.slack.com/services/T/B/X'}\n"
            "  routes: [{name: r, channels: [s]}]\n",
            "url",
        ),
        (
            "dispatch:\n  channels:\n    p: {type: pagerduty, routing_key: R0UTINGKEY}\n"
            "  routes: [{name: r, channels: [p]}]\n",
            "routing_key",
        ),
        (
            "dispatch:\n  channels:\n"
            "    w: {type: webhook, url: 'https://h.example/x', secret: s3}\n"
            "  routes: [{name: r, channels: [w]}]\n",
            "secret",
        ),
        (
            "dispatch:\n  channels:\n    a: {type: alertmanager, url: 'https://u:pw@am.example'}\n"
            "  routes: [{name: r, channels: [a]}]\n",
            "password",
        ),
        (
            "dispatch:\n  channels:\n    a: {type: alertmanager, url: 'https://am.example/?token=t'}\n"
            "  routes: [{name: r, channels: [a]}]\n",
            "token",
        ),
    ],
)
def test_a_secret_written_in_the_yaml_is_refused_naming_its_key(
    tmp_path: Path, text: str, names: str
) -> None:
    message = refused(tmp_path, text)
    assert names in message and "secret" in message
    for value in ("hunter2", "R0UTINGKEY", "s3", "pw@", "T/B/X", "token=t"):
        assert value not in message  # the message names the key, never the value


def test_a_kafka_password_from_the_environment_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "posmon.yaml"
    path.write_text("kafka:\n  security_protocol: SASL_SSL\n  sasl_mechanism: PLAIN\n")
    environ = {"POSMON_KAFKA__SASL_USERNAME": "u", "POSMON_KAFKA__SASL_PASSWORD": "hunter2"}
    settings = load_settings(path, environ=environ)
    assert settings.kafka.sasl_password is not None
    assert settings.kafka.sasl_password.get_secret_value() == "hunter2"


# --- duplicate keys -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        ("policy:\n  allowed_lateness: 1m\n  allowed_lateness: 1h\n", 3, "allowed_lateness"),
        ("policy: {}\nkafka: {}\npolicy: {allowed_lateness: 1h}\n", 3, "policy"),
        (
            "dispatch:\n  channels:\n    c: {type: console}\n    c: {type: file, path: /tmp/x}\n"
            "  routes: [{name: r, channels: [c]}]\n",
            4,
            "c",
        ),
        (CONSOLE_ROUTE % ", group_wait: 1s, group_wait: 1h", 5, "group_wait"),
    ],
)
def test_a_key_given_twice_is_refused_with_file_line_and_key(
    tmp_path: Path, text: str, line: int, key: str
) -> None:
    message = refused(tmp_path, text)
    assert str(tmp_path / "posmon.yaml") in message
    assert f"line {line}: duplicate key {key!r}" in message


def test_a_merge_key_may_still_be_overridden(tmp_path: Path) -> None:
    path = tmp_path / "posmon.yaml"
    path.write_text(
        "dispatch:\n  channels:\n    c: {type: console}\n  routes:\n"
        "    - &first {name: a, channels: [c], group_wait: 1s}\n"
        "    - {<<: *first, name: b, group_wait: 5s}\n"
    )
    settings = load_settings(path, environ={})
    assert settings.dispatch is not None
    assert [r.group_wait for r in settings.dispatch.routes] == [1, 5]


def test_the_example_configurations_have_no_duplicate_keys() -> None:
    for name in ("posmon.example.yaml", "dispatch.example.yaml"):
        load_settings(REPO / "config" / name, environ={})


# --- replay reads the same settings as run --------------------------------------------------


@pytest.fixture
def large(tmp_path: Path) -> Path:
    """Events with one `large_amount` under the default policy."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(encode([event("auth_request", 0, amount=2_000_000)])) + b"\n")
    return path


def detectors_raised(alerts: Path) -> list[str]:
    return [json.loads(line)["detector"] for line in alerts.read_text().splitlines()]


def test_replay_honours_posmon_config_and_posmon_variables(tmp_path: Path, large: Path) -> None:
    alerts = tmp_path / "alerts.jsonl"
    off = tmp_path / "off.yaml"
    off.write_text("policy:\n  detectors:\n    large_amount:\n      enabled: false\n")
    on = tmp_path / "on.yaml"
    on.write_text("policy:\n  detectors:\n    large_amount:\n      enabled: true\n")
    cases = [
        ([], {}, ["large_amount"]),
        ([], {"POSMON_CONFIG": str(off)}, []),
        ([], {"POSMON_POLICY__DETECTORS__LARGE_AMOUNT__ENABLED": "false"}, []),
        ([], {"POSMON_POLICY__DETECTORS__LARGE_AMOUNT__LARGE_AMOUNT_MINOR": "3000000"}, []),
        # precedence as for `posmon run`: --config over POSMON_CONFIG, variables over the file
        (["--config", str(on)], {"POSMON_CONFIG": str(off)}, ["large_amount"]),
        (
            ["--config", str(on)],
            {"POSMON_POLICY__DETECTORS__LARGE_AMOUNT__ENABLED": "false"},
            [],
        ),
    ]
    for flags, env, expected in cases:
        done = posmon("replay", str(large), "--alerts", str(alerts), "--quiet", *flags, env=env)
        assert done.returncode == 0, (env, done.stderr)
        assert detectors_raised(alerts) == expected, (flags, env)


def test_replay_refuses_a_bad_posmon_variable_like_run(
    large: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSMON_POLICY__ALLOWED_LATENESS", ".inf")
    err = one_line_exit_2(["replay", str(large), "--alerts", str(tmp_path / "a.jsonl")], capsys)
    assert "policy.allowed_lateness" in err
    monkeypatch.setenv("POSMON_POLICY__ALLOWED_LATENESS", "2m")
    monkeypatch.setenv("POSMON_POLCY__X", "1")
    err = one_line_exit_2(["replay", str(large), "--alerts", str(tmp_path / "a.jsonl")], capsys)
    assert "polcy: unknown key" in err


# --- a replay never harms its input ---------------------------------------------------------


def test_an_output_naming_the_input_is_refused_and_the_input_is_unchanged(
    large: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sha256(large)
    (tmp_path / "hard.jsonl").hardlink_to(large)
    (tmp_path / "link.jsonl").symlink_to(large)
    other = str(tmp_path / "other.jsonl")
    cases = [
        ["--alerts", str(large)],
        ["--alerts", other, "--dlq", str(large)],
        ["--alerts", os.path.join(tmp_path, "missing", "..", "events.jsonl")],
        ["--alerts", other, "--dlq", str(tmp_path / "hard.jsonl")],
        ["--alerts", str(tmp_path / "link.jsonl")],
    ]
    for flags in cases:
        err = one_line_exit_2(["replay", str(large), *flags], capsys)
        assert "is the input" in err, flags
        assert sha256(large) == before, flags
    assert not (tmp_path / "other.jsonl").exists()  # refused before anything was opened


def test_the_default_dead_letters_path_may_not_be_the_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "a.dlq.jsonl"
    events.write_bytes(b"{oops\n")
    before = sha256(events)
    err = one_line_exit_2(["replay", str(events), "--alerts", str(tmp_path / "a.jsonl")], capsys)
    assert "--dlq" in err and "is the input" in err
    assert sha256(events) == before


def test_an_output_naming_the_configuration_is_refused(
    large: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "posmon.yaml"
    config.write_text("policy: {}\n")
    before = sha256(config)
    err = one_line_exit_2(
        ["replay", str(large), "--alerts", str(config), "--config", str(config)], capsys
    )
    assert "is the configuration" in err
    assert sha256(config) == before


def test_stdin_redirected_from_the_output_file_is_refused(large: Path, tmp_path: Path) -> None:
    before = sha256(large)
    with large.open("rb") as stdin:
        done = posmon("replay", "-", "--alerts", str(large), stdin=stdin)
    assert done.returncode == 2 and "is the input (-)" in done.stderr, done.stderr
    assert sha256(large) == before


def test_alerts_and_dead_letters_may_not_be_one_file(
    large: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    same = tmp_path / "out.jsonl"
    for dlq in (same, tmp_path / "sub" / ".." / "out.jsonl"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        err = one_line_exit_2(
            ["replay", str(large), "--alerts", str(same), "--dlq", str(dlq)], capsys
        )
        assert "the same file as --alerts" in err
        assert not same.exists()
    same.write_text("earlier\n")
    (tmp_path / "alias.jsonl").symlink_to(same)
    err = one_line_exit_2(
        ["replay", str(large), "--alerts", str(same), "--dlq", str(tmp_path / "alias.jsonl")],
        capsys,
    )
    assert "the same file as --alerts" in err
    assert same.read_text() == "earlier\n"


def test_dev_null_takes_the_dead_letters(large: Path, tmp_path: Path) -> None:
    alerts = tmp_path / "a.jsonl"
    done = posmon("replay", str(large), "--alerts", str(alerts), "--dlq", os.devnull, "--quiet")
    assert done.returncode == 0, done.stderr
    assert detectors_raised(alerts) == ["large_amount"]


def test_a_symlinked_output_keeps_its_link_and_replaces_its_target(
    large: Path, tmp_path: Path
) -> None:
    target = tmp_path / "target.jsonl"
    target.write_text("earlier\n")
    (tmp_path / "link.jsonl").symlink_to(target)
    done = posmon("replay", str(large), "--alerts", str(tmp_path / "link.jsonl"), "--quiet")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "link.jsonl").is_symlink()
    assert detectors_raised(target) == ["large_amount"]


def test_simulate_outputs_may_not_be_one_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "events.jsonl"
    out.write_text("earlier\n")
    err = one_line_exit_2(["simulate", "--out", str(out), "--labels", str(out)], capsys)
    assert "--labels" in err and "the same file as --out" in err
    assert out.read_text() == "earlier\n"


def test_report_outputs_may_not_be_its_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    folder = tmp_path / "report"
    folder.mkdir()
    alerts = folder / "index.html"  # an earlier page, given as the alerts by mistake
    alerts.write_text("")
    before = sha256(alerts)
    err = one_line_exit_2(["report", str(alerts), "--out", str(folder)], capsys)
    assert "the page" in err and "is ALERTS" in err
    (folder / "scores.png").write_bytes(b"")
    dlq = folder / "scores.png"
    err = one_line_exit_2(
        ["report", str(tmp_path / "none.jsonl"), "--out", str(folder), "--dlq", str(dlq)], capsys
    )
    assert "the chart scores.png" in err and "is --dlq" in err
    assert sha256(alerts) == before


# --- outputs are renamed into place when the run completes -----------------------------------


def test_the_sink_replaces_its_files_only_when_closed(tmp_path: Path) -> None:
    alerts, dlq = tmp_path / "a.jsonl", tmp_path / "a.dlq.jsonl"
    alerts.write_text("earlier alerts\n")
    dlq.write_text("earlier dead letters\n")
    sink = JsonlSink(alerts, dlq)
    sink.publish([], [])
    assert alerts.read_text() == "earlier alerts\n"  # nothing replaced while running
    sink.abort()
    assert alerts.read_text() == "earlier alerts\n"
    assert dlq.read_text() == "earlier dead letters\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.dlq.jsonl", "a.jsonl"]  # no temp
    sink = JsonlSink(alerts, dlq)
    sink.close()
    assert alerts.read_text() == "" and dlq.read_text() == ""


def test_an_interrupted_replay_leaves_the_previous_outputs_intact(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"{oops\n" * 3_000_000)  # dead letters, written for seconds
    alerts, dlq = tmp_path / "a.jsonl", tmp_path / "a.dlq.jsonl"
    alerts.write_text("earlier alerts\n")
    dlq.write_text("earlier dead letters\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("POSMON_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "monitor", "replay", str(events), "--alerts", str(alerts)],
        cwd=REPO,
        env=clean,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(p.name.startswith(".a.dlq.jsonl.") for p in tmp_path.iterdir()):
            assert process.poll() is None, "the replay ended before it was interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.2)  # some dead letters are written to the temporary file
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130
    finally:
        process.kill()
        process.wait()
    assert alerts.read_text() == "earlier alerts\n"
    assert dlq.read_text() == "earlier dead letters\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.dlq.jsonl", "a.jsonl", "events.jsonl"]
