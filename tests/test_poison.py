"""Poison records: no single message stops the monitor, and every dead letter fits a Kafka message
and can be deduplicated by where its message was read.

Fast tests take the pieces one by one (a raw cut to size with its length and hash, the key from
the coordinates, a conflicting `event_id` against an identical redelivery, a detector that raises
on one event); the last test puts each poison record mid-stream on the real broker under
`posmon run` and compares the outcome with `posmon replay` of the same file without them.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import pytest

from monitor.cli.service import Service
from monitor.cli.settings import MetricsSettings, Settings
from monitor.core.alerts import Alert
from monitor.core.events import Event, Rejection, decode
from monitor.scoring.detectors.base import (
    Amounts,
    DetectorSettings,
    Found,
    Hooks,
    OnArrival,
    Shared,
)
from monitor.scoring.pipeline import MemorySource, Stats, replay_messages, run
from monitor.scoring.policy import Detectors, Policy
from monitor.scoring.scorer import Scorer
from monitor.scoring.state import SeenIds
from monitor.simulation.simulator import Simulation, SimulationSpec
from monitor.streaming.embedded import EmbeddedBroker
from monitor.streaming.sink import kafka_dead_letter
from monitor.streaming.topics import read_topic
from tests.builders import by_detector, encode, event, final_states, tick
from tests.test_service import ListSink, ListSource
from tests.test_stream import Stream, _committed, _start, _stop, _stream, _up, _wait_for

REPO = Path(__file__).resolve().parent.parent
LIMIT: Final = 64 * 1024
# 200 KB of control characters (no line break: one line of a file too); each is six bytes once
# escaped in JSON, 1.2 MB uncut.
CONTROL_LINE: Final = bytes(c for c in range(1, 32) if c not in b"\n\r") * (200_000 // 29)


# -- a raw cut to size ----------------------------------------------------------------------------


def _json_bytes(text: str) -> int:
    return len(json.dumps(text)) - 2


def test_a_dead_letter_too_large_is_cut_and_keeps_its_length_and_hash() -> None:
    whole = decode(CONTROL_LINE)
    assert isinstance(whole, Rejection) and whole.reason == "not_json"
    cut = whole.cut(LIMIT)
    letter = cut.as_dead_letter()
    assert letter["truncated"] is True
    assert letter["raw_length"] == len(whole.raw) == len(CONTROL_LINE)
    assert letter["raw_sha256"] == hashlib.sha256(whole.raw.encode()).hexdigest()
    assert whole.raw.startswith(cut.raw)
    # The longest start that fits: one character more would not.
    assert _json_bytes(cut.raw) <= LIMIT < _json_bytes(whole.raw[: len(cut.raw) + 1])
    assert len(json.dumps(letter)) < LIMIT + 1024


@pytest.mark.parametrize("char", ["a", "\x01", '"', "\u00e9", "\U0001f600"])
def test_the_cut_counts_each_character_as_json_escapes_it(char: str) -> None:
    whole = Rejection("schema", "error", "x" + char * 5000)
    cut = whole.cut(1024)
    assert cut.raw_length == len(whole.raw)
    assert _json_bytes(cut.raw) <= 1024 < _json_bytes(whole.raw[: len(cut.raw) + 1])


def test_a_dead_letter_that_fits_is_left_whole() -> None:
    whole = decode(b"not json")
    assert isinstance(whole, Rejection)
    assert whole.cut(LIMIT) is whole
    assert set(whole.as_dead_letter()) == {"reason", "error", "raw"}


# -- coordinates and keys -------------------------------------------------------------------------


def test_the_kafka_key_and_source_come_from_the_coordinates() -> None:
    located = Rejection("not_json", "error", "raw", partition=3, offset=18204)
    key, letter = kafka_dead_letter("pos.events", located)
    assert key == b"pos.events/3/18204"
    assert letter["source"] == {"topic": "pos.events", "partition": 3, "offset": 18204}
    key, letter = kafka_dead_letter("pos.events", Rejection("not_json", "error", "raw"))
    assert key is None and "source" not in letter


def test_a_replay_names_the_file_and_line_of_each_dead_letter(tmp_path: Path) -> None:
    lines = [*encode([event("auth_request", 0)]), b"{", *encode([tick(60)]), b"", CONTROL_LINE]
    bad = [i + 1 for i, line in enumerate(lines) if not line.startswith(b'{"')]
    assert len(bad) == 3
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(line + b"\n" for line in lines))
    alerts, dlq = tmp_path / "alerts.jsonl", tmp_path / "dlq.jsonl"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "monitor", "replay", str(events)),
            *("--alerts", str(alerts), "--dlq", str(dlq), "--batch-size", "2", "--quiet"),
        ],
        cwd=REPO,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    letters = [json.loads(line) for line in dlq.read_text().splitlines()]
    assert [(d["reason"], d["source"]) for d in letters] == [
        ("not_json", {"file": str(events), "line": line}) for line in bad
    ]
    assert [d.get("truncated", False) for d in letters] == [False, False, True]


def test_a_memory_source_counts_lines_from_its_first_one() -> None:
    sink, stats = ListSink(), Stats()
    run(MemorySource([b"{", b"ok?", b"}"], 2, first_line=10), sink, Scorer(Policy()), stats)
    assert [(d.partition, d.offset) for d in sink.dead_letters] == [(0, 10), (0, 11), (0, 12)]


# -- conflicting redeliveries ---------------------------------------------------------------------


def test_an_identical_redelivery_is_ignored_and_a_conflicting_one_is_a_dead_letter() -> None:
    """A declined attempt whose id comes back on a debit: a ghost debit hidden as a redelivery
    before; now the debit is a dead letter, and the identical copy still only a duplicate."""
    decline = event("auth_declined", 1, ref="R9", event_id="E-9", response_code="05")
    same = {**decline, "event_time": "2026-11-02T12:00:01Z", "unknown": 1}  # the same content
    debit = {**decline, "kind": "debit_posted", "response_code": None}
    lines = encode([event("auth_request", 0, ref="R9"), decline, same, debit, debit, tick(3600)])
    scorer = Scorer(Policy())
    sink, stats = replay_messages(lines, scorer)
    assert scorer.duplicates == 1
    # The debit sent twice conflicts twice (with the first event of its id, not with itself).
    assert [(d.reason, d.offset, d.raw) for d in sink.dead_letters] == [
        ("conflict", 4, lines[3].decode()),
        ("conflict", 5, lines[4].decode()),
    ]
    assert "E-9" in sink.dead_letters[0].error
    assert stats.rejected == Counter({"conflict": 2})
    assert scorer.consumed["debit_posted"] == 0


def test_seen_ids_remember_the_first_fingerprint_in_both_generations() -> None:
    s = 1_000_000
    seen = SeenIds(horizon_us=60 * s, cap=1000)
    assert seen.add("a", 0, 11)
    assert seen.add("b", 61 * s, 22)  # rotates: "a" is in the previous generation
    assert not seen.add("a", 62 * s, 33)
    assert (seen.fingerprint_of("a"), seen.fingerprint_of("b")) == (11, 22)
    assert seen.fingerprint_of("c") is None


def test_fingerprints_of_another_process_are_compared_once_both_generations_are_new() -> None:
    """A snapshot written by another process holds fingerprints of its own hash salt: a known
    id counts as a redelivery until two rotations have replaced every one of them."""
    s = 1_000_000
    seen = SeenIds(horizon_us=60 * s, cap=1000)
    assert seen.add("old", 0, 11)
    seen._salt ^= 1  # as restored from a snapshot of another process
    assert seen.fingerprint_of("old") is None
    assert seen.add("new", 61 * s, 22)  # the first rotation: "old" in the previous generation
    assert seen.fingerprint_of("new") is None
    assert seen.add("newer", 122 * s, 33)  # the second: every fingerprint was made here
    assert (seen.fingerprint_of("new"), seen.fingerprint_of("newer")) == (22, 33)
    scorer = Scorer(Policy())
    first = decode(encode([event("auth_declined", 0, event_id="E-7")])[0])
    assert isinstance(first, Event) and scorer.process(first) == []
    scorer.seen._salt ^= 1
    assert scorer.process(first._replace(kind="debit_posted")) == []  # cannot tell: redelivery
    assert scorer.duplicates == 1


# -- an error in one event's handlers -------------------------------------------------------------


class Fragile(OnArrival):
    """A detector with a bug: it divides by zero on a request of 42.42."""

    def __init__(self, shared: Shared) -> None:
        self.seen = 0

    def hooks(self) -> Hooks:
        return Hooks(on_event={"auth_request": Amounts(self.on_request, at_least=0)})

    def on_request(self, ev: Event) -> Found:
        self.seen += 1
        return (1 // 0,) if ev.amount_minor == 4242 else None  # type: ignore[return-value]

    def sweep(self, watermark: int) -> None:
        pass

    def tallies(self) -> Mapping[str, int]:
        return {}


class FragileSettings(DetectorSettings):
    def build(self, shared: Shared, rank: int) -> Fragile:
        return Fragile(shared)


class WithFragile(Detectors):
    # It takes the model's place: an alert's detector is one of the contract's names.
    model_outlier: FragileSettings = FragileSettings()  # type: ignore[assignment]


class FragilePolicy(Policy):
    detectors: WithFragile = WithFragile()


def test_an_event_a_handler_raises_on_is_a_dead_letter_and_the_next_are_scored() -> None:
    large = event("auth_request", 2, ref="B", amount=2_000_000)
    fails = event("auth_request", 1, ref="A", amount=4242)
    lines = [b"{", *encode([fails]), b"}", *encode([large, tick(600)])]
    scorer = Scorer(FragilePolicy())
    sink, stats = replay_messages(lines, scorer)
    # In line order, though the decoder found the rejects and the scorer the error.
    assert [(d.reason, d.offset) for d in sink.dead_letters] == [
        ("not_json", 1),
        ("internal", 2),
        ("not_json", 3),
    ]
    internal = sink.dead_letters[1]
    assert internal.error.startswith("ZeroDivisionError: ")
    assert internal.raw == lines[1].decode()
    [alert] = by_detector(sink.final_alerts(), "large_amount")
    assert alert.event_ids == [large["event_id"]]
    # Every request was scored but the one that failed (the tick is sent by several terminals).
    assert scorer.consumed["auth_request"] == len(lines) - 3
    assert stats.rejected == Counter({"not_json": 2, "internal": 1})


def test_the_service_counts_conflicts_internal_errors_and_cut_dead_letters() -> None:
    decline = event("auth_declined", 1, ref="R1", event_id="E-1")
    lines = [
        CONTROL_LINE,
        *encode([decline, {**decline, "amount_minor": 1}, event("auth_request", 2, amount=4242)]),
    ]
    settings = Settings(metrics=MetricsSettings(host="127.0.0.1", port=0), policy=FragilePolicy())
    sink = ListSink()
    service = Service(settings, ListSource(lines), sink)
    service.run()
    value = service.registry.get_sample_value
    assert value("posmon_dead_letters_truncated_total") == 1.0
    for reason, count in {"not_json": 1, "conflict": 1, "internal": 1, "pan": 0}.items():
        assert value("posmon_events_rejected_total", {"reason": reason}) == count
    assert [(d.reason, d.offset) for d in sink.dead_letters] == [
        ("not_json", 1),
        ("conflict", 3),
        ("internal", 4),
    ]


# -- each poison record mid-stream, on the real broker --------------------------------------------

SPEC = SimulationSpec(seed=21, hours=3.0, merchants=20)


def _poisoned(lines: list[bytes]) -> tuple[list[bytes], dict[int, str]]:
    """The simulated lines with four poison records spread through them, and the index of each
    in the result with the reason its dead letter must give."""
    decline = next(
        i for i in range(len(lines) // 2, len(lines)) if b'"kind":"auth_declined"' in lines[i]
    )
    base = json.loads(lines[decline])
    far_future = {
        **base,
        "event_id": "poison-9999",
        "kind": "auth_request",
        "event_time": "9999-12-31T23:59:59.999999+00:00",
        "amount_minor": 5_000_000,
    }
    huge = {**base, "event_id": "poison-huge", "kind": "debit_posted"}
    huge["amount_minor"] = int("9" * 400)
    # The decline's id reused by a debit of the same attempt, on the same partition, later.
    ghost = {**base, "kind": "debit_posted", "response_code": None}
    inserts = {
        len(lines) // 4: (json.dumps(far_future).encode(), "schema"),
        len(lines) // 3: (CONTROL_LINE, "not_json"),
        decline + 1: (json.dumps(huge).encode(), "schema"),
        decline + 50: (json.dumps(ghost).encode(), "conflict"),
    }
    out: list[bytes] = []
    poison: dict[int, str] = {}
    for i, line in enumerate(lines):
        out.append(line)
        if i in inserts:
            raw, reason = inserts[i]
            poison[len(out)] = reason
            out.append(raw)
    return out, poison


def _metric(stream: Stream, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{stream.port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_poison_records_mid_stream_leave_the_monitor_up_and_the_alerts_as_without_them(
    broker: EmbeddedBroker,
) -> None:
    clean = list(Simulation(SPEC).lines())
    lines, poison = _poisoned(clean)
    replayed, _ = replay_messages(clean, Scorer(Policy()))
    with_poison, _ = replay_messages(lines, Scorer(Policy()))
    assert final_states(with_poison.alerts) == final_states(
        replayed.alerts
    )  # the replay takes them too
    stream = _stream(broker, lines=lines)
    process = _start(stream)
    try:
        _wait_for(lambda: _committed(stream) >= len(lines), 120, "the whole topic committed")
        _wait_for(lambda: _up(stream, "readyz"), 60, "/readyz")
        assert _metric(stream, "posmon_dead_letters_truncated_total") == 1.0
        assert _metric(stream, 'posmon_events_rejected_total{reason="conflict"}') == 1.0
        time.sleep(3 * stream.settings.idle_partition_s + 1)  # idle: the due decisions are taken
        output = _stop(stream, process)
        assert process.returncode == 0, output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    published = read_topic(stream.settings, stream.settings.alerts_topic)
    last = final_states(Alert.model_validate_json(r.value) for r in published)
    assert last == final_states(replayed.alerts)

    # Each poison record is on the DLQ once, keyed and sourced by where it was read.
    topic = stream.settings.topic
    by_place = {(r.partition, r.offset): r for r in read_topic(stream.settings, topic)}
    dead = read_topic(stream.settings, f"{topic}.dlq")
    letters = [(r.key, json.loads(r.value)) for r in dead]
    assert Counter(d["reason"] for _, d in letters) == Counter(
        r.reason for r in with_poison.dead_letters
    )
    found = {}
    for key, letter in letters:
        source = letter["source"]
        assert key == f"{topic}/{source['partition']}/{source['offset']}".encode()
        assert source["topic"] == topic
        message = by_place[source["partition"], source["offset"]].value
        found[message] = letter
    for index, reason in poison.items():
        letter = found[lines[index]]
        assert letter["reason"] == reason
    assert found[CONTROL_LINE]["truncated"] is True
    assert found[CONTROL_LINE]["raw_length"] == len(CONTROL_LINE)
    assert len(json.dumps(found[CONTROL_LINE])) < LIMIT + 1024
