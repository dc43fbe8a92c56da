"""The labels topic and `posmon label` (docs/contract.md, "Labels"; docs/streaming.md, "Labels").

- `posmon label`: a bad argument is refused with the usage and one line, exit 2, never quoting a
  value that holds a card number; `--out FILE` appends one JSON line (the file created if
  missing); without it the label goes to the labels topic, keyed by the id it judges, and the
  command returns once the broker acknowledged it, or exits 2 with one line when no broker
  answers.
- `Service` with a labels feed (no broker): each batch's labels reach the scorer before the batch
  is scored and its watermark advanced; a new state gets every label again before its first
  events; `posmon_labels_total` shows every outcome from the start, invalid records included.
- `KafkaLabels` on the embedded broker: reads every partition without a group, from the
  beginning; a rewind gives every label again but counts a record that is not a label once.
- `posmon run` on the embedded broker with the shipped model: it creates the labels topic, counts
  the valid labels by outcome and the garbage as `invalid` in /metrics, logs no record's content,
  keeps scoring; restarted, it reads the labels again from the beginning.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from monitor.cli.main import main
from monitor.cli.service import Service
from monitor.cli.settings import MetricsSettings, Settings
from monitor.core.labels import Label, parse_label
from monitor.scoring.scorer import Scorer
from monitor.scoring.tally import LABEL_OUTCOMES
from monitor.simulation.simulator import Simulation, SimulationSpec
from monitor.streaming.embedded import EmbeddedBroker
from monitor.streaming.labelstopic import KafkaLabels, LabelRead
from monitor.streaming.produce import produce_lines
from monitor.streaming.settings import KafkaSettings
from monitor.streaming.topics import committed_offsets, read_topic
from tests.broker import free_port, fresh_topic, kafka_settings, monitor_environ, scrape, wait_for
from tests.builders import encode, event
from tests.test_broker_outage import Process
from tests.test_cli import posmon
from tests.test_service import ListSink, ListSource, RestartingSource

PAN = "4111111111111111"
KNOWN_AT = "2026-11-02T12:00:30Z"  # 30 s after tests.builders.T0
# Records of the labels topic that are not labels: each counted as invalid, none stops the run.
GARBAGE = [
    b"",
    b"\xff\xfe not UTF-8",
    b"[1, 2]",
    b"[" * 100_000,  # nesting deep enough to break a recursive parser
    b'{"label": 1, "known_at": "2026-11-02T12:00:00Z"}',  # judges nothing
    f'{{"event_id": "tok_{PAN}", "label": 1, "known_at": "soon"}}'.encode(),
    b'{"event_id": "e", "label": true, "known_at": "2026-11-02T12:00:00Z"}',
]


def _produce(settings: KafkaSettings, topic: str, records: list[bytes]) -> None:
    """Unkeyed records (the simulator's `merchant_key` would parse the garbage)."""
    assert produce_lines(settings, topic, records, key=lambda _: None) == len(records)


def _label(event_id: str, known_at: str = KNOWN_AT, verdict: int = 1) -> Label:
    return parse_label(json.dumps({"event_id": event_id, "label": verdict, "known_at": known_at}))


# -- posmon label: arguments ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "one of the arguments --event --alert is required"),
        (["--event", "e1"], "one of the arguments --fraud --genuine is required"),
        (["--event", "e1", "--alert", "a1", "--fraud"], "not allowed with argument"),
        (["--event", "e1", "--fraud", "--genuine"], "not allowed with argument"),
        (["--event", "", "--fraud"], "argument --event: must be 1 to 256 characters"),
        (["--alert", "a" * 257, "--fraud"], "argument --alert: must be 1 to 256 characters"),
        (["--event", f"tok_{PAN}", "--fraud"], "argument --event: holds a card number"),
        (["--event", "e1", "--fraud", "--kind", f"{PAN[:4]} {PAN[4:]}"], "--kind: holds a card"),
        (["--event", "e1", "--genuine", "--known-at", "2026-03-02T10:00:00"], "--known-at: must"),
        (["--event", "e1", "--genuine", "--known-at", "2026-02-30T10:00:00Z"], "--known-at: must"),
        (["--event", "e1", "--genuine", "--known-at", "1772445600"], "--known-at: must"),
        (["--event", "e1", "--fraud", "--known-at", PAN], "--known-at: must"),
    ],
)
def test_posmon_label_refuses_bad_arguments_with_the_usage_and_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["label", *argv])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: posmon label"), err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert line.startswith("posmon label: error: ") and message in line, err
    assert PAN[4:] not in err  # never quoted, not even in part


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--out", "{tmp}/labels.jsonl", "--topic", "t"], "go with the topic, not --out"),
        (["--out", "{tmp}/labels.jsonl", "--bootstrap-servers", "b:9092"], "not --out"),
        (["--out", "{tmp}/missing/labels.jsonl"], "cannot write"),
        (["--out", "{tmp}"], "cannot write"),
        (["--topic", ""], "kafka.labels_topic is empty"),
    ],
)
def test_posmon_label_problems_are_one_line_and_exit_2(
    argv: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("POSMON_CONFIG", raising=False)
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["label", "--event", "e1", "--fraud", *args]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and message in captured.err, captured.err
    assert captured.err.startswith("posmon: error: ") and not captured.out


def test_posmon_label_out_appends_one_line_and_creates_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "labels.jsonl"
    before = datetime.now(UTC)
    assert main(["label", "--event", "e-1", "--fraud", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    argv = ["--alert", "a" * 32, "--genuine", "--known-at", "2026-11-03T09:00:00+01:00"]
    argv += ["--kind", "card_testing", "--source", "chargeback", "--out", str(out)]
    assert main(["label", *argv]) == 0
    first, second = (parse_label(line) for line in out.read_bytes().splitlines())
    assert printed.strip() == out.read_text().splitlines()[0]
    assert (first.event_id, first.alert_id, first.label, first.kind) == ("e-1", None, 1, None)
    assert first.known_at is not None and before <= first.known_at <= datetime.now(UTC)
    assert (second.alert_id, second.event_id, second.label) == ("a" * 32, None, 0)
    assert second.known_at == datetime(2026, 11, 3, 8, tzinfo=UTC)
    assert (second.kind, second.source) == ("card_testing", "chargeback")
    # A file whose last line was cut short keeps it apart from the new one.
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b'{"event_id": "x", "label"')
    assert main(["label", "--event", "e-2", "--genuine", "--out", str(cut)]) == 0
    lines = cut.read_bytes().splitlines()
    assert lines[0] == b'{"event_id": "x", "label"' and parse_label(lines[1]).event_id == "e-2"


# -- Service with a labels feed (no broker) -------------------------------------------------------


@dataclass
class FakeFeed:
    """A labels feed: `polls` handed out one a call, then nothing; `rewind` gives `everything`."""

    polls: list[LabelRead]
    everything: LabelRead = field(default_factory=lambda: LabelRead([], 0))
    topic: str = "labels"
    rewinds: int = 0
    closed: bool = False

    def poll(self) -> LabelRead:
        return self.polls.pop(0) if self.polls else LabelRead([], 0)

    def rewind(self, *, stopping: Callable[[], bool]) -> LabelRead:
        self.rewinds += 1
        return self.everything

    def close(self) -> None:
        self.closed = True


def _calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, object]]:
    """Record every `Scorer.learn` (with the event ids given) and `Scorer.advance`, by scorer."""
    calls: list[tuple[str, int, object]] = []
    learn, advance = Scorer.learn, Scorer.advance

    def learning(self: Scorer, labels: Sequence[Label]) -> None:
        calls.append(("learn", id(self), [label.event_id for label in labels]))
        learn(self, labels)

    def advancing(self: Scorer, *args: object, **kwargs: object) -> None:
        calls.append(("advance", id(self), None))
        advance(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Scorer, "learn", learning)
    monkeypatch.setattr(Scorer, "advance", advancing)
    return calls


def _settings() -> Settings:
    return Settings(metrics=MetricsSettings(host="127.0.0.1", port=0))


def _outcomes(service: Service) -> dict[str, float | None]:
    value = service.registry.get_sample_value
    return {o: value("posmon_labels_total", {"outcome": o}) for o in LABEL_OUTCOMES}


@pytest.fixture(scope="module")
def lines() -> list[bytes]:
    return list(Simulation(SimulationSpec(seed=5, hours=2, merchants=5)).lines())


def test_each_batch_s_labels_reach_the_scorer_before_it_is_scored(
    lines: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    start = json.loads(lines[0])["event_time"]
    polls = [
        LabelRead([_label("unknown-1", start)], 0),
        LabelRead([_label("unknown-2", start), _label("unknown-3", start)], 2),
        LabelRead([_label("unknown-1", start)], 1),  # the same label again: nothing new
    ]
    feed = FakeFeed(list(polls))
    service = Service(_settings(), ListSource(lines, batch_size=200), ListSink(), labels=feed)
    assert _outcomes(service) == dict.fromkeys(LABEL_OUTCOMES, 0.0)  # all there from the start
    calls = _calls(monkeypatch)
    service.run()
    assert feed.closed and feed.rewinds == 0  # this source never starts a new state
    learned = [(kind, ids) for kind, _, ids in calls if kind == "learn"]
    assert learned == [("learn", [label.event_id for label in p.labels]) for p in polls]
    # learn, advance, learn, advance, learn, advance: each batch's labels before its advance
    kinds = [kind for kind, _, _ in calls]
    assert kinds[:6] == ["learn", "advance"] * 3, kinds[:8]
    outcomes = _outcomes(service)
    assert outcomes["invalid"] == 3.0
    used = sum(v or 0.0 for o, v in outcomes.items() if o != "invalid")
    assert used == 3.0, outcomes  # each label once: unknown_event with a model (unused without)
    assert outcomes["unknown_event"] in (0.0, 3.0) and outcomes["applied"] == 0.0


def test_a_new_state_gets_every_label_before_its_first_events(
    lines: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    start = json.loads(lines[0])["event_time"]
    everything = LabelRead([_label(f"unknown-{i}", start) for i in range(4)], 2)
    feed = FakeFeed([LabelRead([_label("unknown-9", start)], 1)], everything)
    source = RestartingSource(lines[:1000], committed=0)
    service = Service(_settings(), source, ListSink(), labels=feed)
    calls = _calls(monkeypatch)
    service.run()
    assert feed.rewinds == 1
    new = id(service.scorer)  # the scorer the fresh batch swapped in
    assert calls[:4] == [
        ("learn", new, [f"unknown-{i}" for i in range(4)]),  # every label, at the restart
        ("advance", new, None),  # the fresh batch: empty
        ("learn", new, ["unknown-9"]),  # then the first batch's own, before it is scored
        ("advance", new, None),
    ]
    assert _outcomes(service)["invalid"] == 3.0


# -- KafkaLabels on the embedded broker --------------------------------------------------------


def test_kafka_labels_reads_every_partition_without_a_group_and_counts_garbage_once(
    broker: EmbeddedBroker,
) -> None:
    topic = fresh_topic(broker, partitions=1)
    settings = kafka_settings(broker, topic, fetch_max_wait_ms=10)
    labels_topic = f"{topic}.verdicts"
    broker.create_topics({labels_topic: 3})
    verdicts = [_label(f"e-{i}") for i in range(6)]
    _produce(settings, labels_topic, [v.to_json() for v in verdicts] + GARBAGE)
    reader = KafkaLabels(settings, labels_topic)
    try:
        first = reader.rewind()
        assert sorted(label.event_id or "" for label in first.labels) == [
            f"e-{i}" for i in range(6)
        ]
        assert first.invalid == len(GARBAGE)
        again = reader.rewind()  # a new state: every label again, the garbage not counted again
        assert sorted(label.event_id or "" for label in again.labels) == [
            f"e-{i}" for i in range(6)
        ]
        assert again.invalid == 0
        _produce(settings, labels_topic, [_label("e-new").to_json(), b"nope"])
        taken: list[Label] = []
        invalid = 0
        deadline = time.monotonic() + 10
        while (len(taken) < 1 or invalid < 1) and time.monotonic() < deadline:
            read = reader.poll()  # never waits
            taken += read.labels
            invalid += read.invalid
            time.sleep(0.02)
        assert [label.event_id for label in taken] == ["e-new"] and invalid == 1
    finally:
        reader.close()


# -- posmon label to the topic ------------------------------------------------------------------


def test_posmon_label_produces_to_the_topic_keyed_by_the_id_it_judges(
    broker: EmbeddedBroker,
) -> None:
    topic = f"{fresh_topic(broker, partitions=1)}.labels"  # created by posmon label
    argv = ["label", "--event", "e-42", "--fraud", "--known-at", KNOWN_AT, "--kind", "ato"]
    done = posmon(
        *argv, "--topic", topic, "--bootstrap-servers", broker.bootstrap_servers,
        env={"POSMON_KAFKA__STARTUP_TIMEOUT": "5"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"label appended to {topic} (partition 0, offset 0)" in done.stderr
    (record,) = read_topic(kafka_settings(broker, topic), topic)
    assert record.key == b"e-42"
    assert parse_label(record.value) == _label("e-42").model_copy(update={"kind": "ato"})
    assert done.stdout.strip().encode() == record.value


def test_posmon_label_without_a_broker_is_one_line_and_exit_2() -> None:
    done = posmon(
        "label", "--alert", "a1", "--genuine",
        "--bootstrap-servers", f"127.0.0.1:{free_port()}",
        env={"POSMON_KAFKA__STARTUP_TIMEOUT": "0"},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "no Kafka broker answered" in done.stderr
    assert "Traceback" not in done.stderr and not done.stdout


# -- posmon run ----------------------------------------------------------------------------------


class Monitor:
    """A `posmon run` (the shipped model) on `settings`, watched through /metrics."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.port = free_port()
        self.process = Process(["run"], monitor_environ(settings, self.port))

    def labels(self) -> dict[str, float]:
        return {
            dict(labels)["outcome"]: value
            for (name, labels), value in scrape(self.port).items()
            if name == "posmon_labels_total"
        }

    def wait_for(self, invalid: float, used: float, timeout: float = 30) -> dict[str, float]:
        """/metrics shows `invalid` records that are not labels and `used` labels (unused
        without a detector that takes labels, unknown_event with it)."""
        deadline = time.monotonic() + timeout
        seen: dict[str, float] = {}
        while time.monotonic() < deadline:
            seen = self.labels()
            if seen.get("invalid") == invalid and seen["unknown_event"] + seen["unused"] == used:
                return seen
            assert self.process.popen.poll() is None, self.process.lines
            time.sleep(0.1)
        raise AssertionError(f"posmon_labels_total: {seen}, {self.process.lines}")

    def stop(self) -> None:
        self.process.popen.send_signal(signal.SIGTERM)
        assert self.process.finish(30) == 0, self.process.lines
        assert not any("Traceback" in line for line in self.process.lines), "\n".join(
            self.process.lines
        )


@pytest.fixture
def monitors() -> Iterator[list[Monitor]]:
    started: list[Monitor] = []
    yield started
    for monitor in started:
        monitor.process.kill()


def test_posmon_run_counts_labels_and_garbage_and_reads_them_again_at_start(
    broker: EmbeddedBroker, monitors: list[Monitor]
) -> None:
    topic = fresh_topic(broker, partitions=1)
    settings = kafka_settings(broker, topic, idle_partition_s=1.0)
    assert settings.labels_topic == f"{topic}.labels"  # not created: posmon run does
    produce_lines(settings, topic, encode([event("auth_request", s) for s in range(0, 60, 5)]))
    monitors.append(monitor := Monitor(settings))
    monitor.process.wait_for_line("labels from", timeout=30)
    # One label (on an event nobody sent) and every kind of garbage.
    _produce(settings, settings.labels_topic, [_label("unknown-1").to_json(), *GARBAGE])
    seen = monitor.wait_for(invalid=len(GARBAGE), used=1)
    # While it runs: a label by `posmon label`, more garbage, and events past its known_at.
    done = posmon(
        "label", "--event", "unknown-2", "--genuine", "--known-at", KNOWN_AT,
        env=monitor_environ(settings, free_port()),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    _produce(settings, settings.labels_topic, [b"garbage", b"{}"])
    produce_lines(settings, topic, encode([event("auth_request", s) for s in range(60, 400, 5)]))
    seen = monitor.wait_for(invalid=len(GARBAGE) + 2, used=2)
    assert seen["applied"] == seen["unknown_alert"] == seen["no_known_at"] == 0.0
    print(f"\nposmon_labels_total of posmon run: {seen}")
    wait_for(lambda: sum(committed_offsets(settings).values()) == 12 + 68, 30, "every event scored")
    skipped = [line for line in monitor.process.lines if "skipped" in line]
    assert len(skipped) >= len(GARBAGE), monitor.process.lines
    assert f"{settings.labels_topic}/0/1 skipped: not JSON" in "\n".join(skipped)
    assert not any(PAN[4:] in line for line in monitor.process.lines)  # no content logged
    monitor.stop()

    # Restarted: the labels are read again from the beginning, the garbage counted once.
    monitors.append(again := Monitor(settings))
    again.wait_for(invalid=len(GARBAGE) + 2, used=2, timeout=60)
    again.stop()
