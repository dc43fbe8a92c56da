"""`posmon replay --workers N` (docs/workers.md): the same bytes for every N, the final states of
plain replay, and a clear end when something goes wrong.

The merchant stage runs in 16 shards over N processes and the card stage in the parent; what is
written depends only on the shards and the chunks, never on N. Intermediate versions differ
from plain replay's (each shard's watermark is its own), final states do not.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from monitor.cli import workers
from monitor.cli.main import main
from monitor.core.alerts import Alert
from monitor.core.events import Event, decode
from tests.builders import encode, event, final_states

REPO = Path(__file__).resolve().parent.parent
POSMON = [sys.executable, "-m", "monitor"]


@pytest.fixture(autouse=True)
def _collector_back() -> Iterator[None]:
    """`posmon replay` turns the cycle collector off in its process: give it back to the tests."""
    yield
    gc.unfreeze()
    gc.enable()


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Four simulated hours (12,584 lines, malformed ones and redeliveries among them), and
    verdicts that become known within them, so that the label features change scores."""
    folder = tmp_path_factory.mktemp("simulated")
    events = folder / "events.jsonl"
    assert main(["simulate", "--out", str(events), "--hours", "4", "--seed", "7"]) == 0
    requests = [
        e
        for e in map(decode, events.read_bytes().splitlines())
        if type(e) is Event and e.kind == "auth_request"
    ]
    labels = folder / "labels.jsonl"
    with labels.open("w") as out:
        for ev in requests[:4000:40]:
            known = datetime.fromtimestamp(ev.t / 1e6, UTC) + timedelta(minutes=30)
            verdict = {"event_id": ev.event_id, "label": 1, "known_at": known.isoformat()}
            out.write(json.dumps(verdict) + "\n")
    return events, labels


def replay(events: Path, out: Path, *flags: str) -> tuple[bytes, bytes]:
    """`posmon replay` in this process; the alerts and the dead letters it wrote."""
    assert main(["replay", str(events), "--alerts", str(out), "--quiet", *flags]) == 0
    return out.read_bytes(), out.with_name(f"{out.stem}.dlq.jsonl").read_bytes()


def alerts_of(text: bytes) -> list[Alert]:
    return [Alert.model_validate_json(line) for line in text.splitlines()]


@pytest.mark.parametrize("model", [True, False], ids=["model", "no-model"])
def test_every_n_writes_the_same_bytes_and_plain_replays_final_states(
    simulated: tuple[Path, Path], tmp_path: Path, model: bool
) -> None:
    events, labels = simulated
    flags = ["--labels", str(labels), *([] if model else ["--no-model"])]
    plain_alerts, plain_dlq = replay(events, tmp_path / "plain.jsonl", *flags)
    written = {
        n: replay(events, tmp_path / f"w{n}.jsonl", *flags, "--workers", str(n)) for n in (1, 2, 3)
    }
    assert written[1] == written[2] == written[3]
    sharded, dlq = written[1]
    assert final_states(alerts_of(sharded)) == final_states(alerts_of(plain_alerts))
    assert dlq == plain_dlq  # every dead letter, in line order
    detectors = {a.detector for a in alerts_of(sharded)}
    assert ("model_outlier" in detectors) == model
    assert {"small_amount_burst", "missing_reversal", "terminal_failure_spike"} <= detectors
    newest: dict[str, int] = {}
    for alert in alerts_of(sharded):  # consumers keep the highest revision: it only grows
        assert alert.revision > newest.get(alert.alert_id, -1)
        newest[alert.alert_id] = alert.revision


def test_from_stdin_the_same_bytes_as_from_the_file(
    simulated: tuple[Path, Path], tmp_path: Path
) -> None:
    events, _ = simulated
    from_file, _ = replay(events, tmp_path / "file.jsonl", "--workers", "2")
    done = subprocess.run(
        [*POSMON, "replay", "-", "--alerts", str(tmp_path / "in.jsonl"), "--workers", "2"],
        input=events.read_bytes(),
        capture_output=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "in.jsonl").read_bytes() == from_file
    assert "12,584" in done.stdout.decode()  # the summary: lines read


def test_the_summary_counts_what_plain_replay_counts(
    simulated: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Lines, events, duplicates, dead letters by reason, alerts by detector; not the late
    events (each shard's watermark is its own) nor the time."""
    events, _ = simulated
    summaries = []
    for flags in ([], ["--workers", "2"]):
        assert main(["replay", str(events), "--alerts", str(tmp_path / "a.jsonl"), *flags]) == 0
        rows = capsys.readouterr().out.split("Latest alert")[0].splitlines()
        summaries.append([r for r in rows if not any(w in r for w in ("late (", "time "))])
    assert summaries[0] == summaries[1]
    assert any("12,584" in row for row in summaries[0])


def feature_logs(events: Path, tmp_path: Path, *flags: str) -> list[pa.Table]:
    """The feature log of plain replay and of `--workers 2`, rows in `event_id` order."""
    tables = []
    for name, more in (("plain", []), ("w2", ["--workers", "2"])):
        log = tmp_path / f"{name}-features"
        replay(events, tmp_path / f"{name}.jsonl", "--feature-log", str(log), *flags, *more)
        tables.append(ds.dataset(log, partitioning="hive").to_table().sort_by("event_id"))
    return tables


def test_the_feature_log_holds_plain_replays_rows(
    simulated: tuple[Path, Path], tmp_path: Path
) -> None:
    """The card stage scores every request one scorer scores, with the same features."""
    events, labels = simulated
    plain, sharded = feature_logs(events, tmp_path, "--labels", str(labels))
    assert plain.num_rows > 1000
    assert plain.equals(sharded)


def test_a_verdict_on_a_shards_alert_reaches_the_card_stage(
    simulated: tuple[Path, Path], tmp_path: Path
) -> None:
    """A verdict on an alert of the merchant stage (`posmon label --alert`) marks its events
    in the model's label features, as one scorer marks them: the card stage knows the shards'
    alerts. (A verdict known within a batch of the alert's first version finds it or not
    depending on the batches, in plain replay too: these come two hours after.)"""
    events, _ = simulated
    first, _ = replay(events, tmp_path / "first.jsonl", "--no-model")
    labels = tmp_path / "verdicts.jsonl"
    with labels.open("w") as out:
        for alert in final_states(alerts_of(first)).values():
            if alert.detector in {"large_amount", "failed_then_debited", "duplicate_debit"}:
                known = (alert.last_seen + timedelta(hours=2)).isoformat()
                verdict = {"alert_id": alert.alert_id, "label": 1, "known_at": known}
                out.write(json.dumps(verdict) + "\n")
    plain, sharded = feature_logs(events, tmp_path, "--labels", str(labels))
    shares = ("terminal_fraud_share_1d", "merchant_fraud_share_1d", "card_known_frauds")
    assert any(max(plain.column(name).to_pylist()) > 0 for name in shares)  # the verdicts count
    assert plain.equals(sharded)


def _shard(merchant: str) -> int:
    return zlib.crc32(merchant.encode()) % workers.SHARDS


@pytest.mark.parametrize("chunk", [4096, 50])
def test_a_quiet_merchant_is_judged_on_the_clock_of_all_the_traffic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """A merchant that pauses for longer than `max_future_skew` (10 min) while another trades:
    its first events after the pause are no bad clock, and its deadlines at the end of the input
    fall due, as in one scorer (each shard alone would hold them back and close early)."""
    monkeypatch.setattr(workers, "CHUNK_LINES", chunk)
    busy, quiet = "M-BUSY", "M-QUIET"
    assert _shard(busy) != _shard(quiet)
    stream = [
        event(
            "auth_request", 30 * i, ref=f"B{i}", merchant=busy, terminal="T-B", card=f"tok_b{i:06d}"
        )
        for i in range(240)  # two hours
    ]
    for n, at in enumerate((0, 1800, 3600, 5400)):  # a network error every half hour, alone
        ref = f"Q{n}"
        stream += [
            event(kind, at + k, ref=ref, merchant=quiet, terminal="T-Q", card="tok_quiet_01")
            for k, kind in enumerate(("auth_request", "network_error"))
        ]
    stream.sort(key=lambda e: str(e["event_time"]))
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(m + b"\n" for m in encode(stream)))
    plain, _ = replay(events, tmp_path / "plain.jsonl", "--no-model")
    sharded, _ = replay(events, tmp_path / "w2.jsonl", "--no-model", "--workers", "2")
    ghosts = [a for a in alerts_of(plain) if a.detector == "missing_reversal"]
    assert len(ghosts) == 4
    assert final_states(alerts_of(sharded)) == final_states(alerts_of(plain))


def test_malformed_lines_and_a_merchant_seen_only_in_a_dead_letter(tmp_path: Path) -> None:
    """Lines the merchant pattern cannot settle (no JSON, the key escaped or repeated, spaces)
    go where their merchant's events go, or by line number: each dead letter is written once."""
    stream = [
        event("auth_request", i, ref=f"R{i}", merchant=f"M-{i % 3}", amount=2_000_000)
        for i in range(30)
    ]
    lines = encode(stream)  # json.dumps: `"merchant_id": "M-0"`, with a space
    lines[3] = lines[3].replace(b'"merchant_id"', b'"merchant\\u005fid"')  # escaped, still M-0
    lines[4] = json.dumps({**stream[4], "merchant_id": "M-1"}, separators=(",", ":")).encode()
    lines += [
        b"{oops",
        b"",
        json.dumps({**stream[0], "event_id": "only", "merchant_id": "M-ONLY", "amount_minor": -1})
        .replace(" ", "")
        .encode(),
        b'{"merchant_id":"M-0","merchant_id":"M-1"}',
        "caf\u00e9".encode(),
    ]
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(m + b"\n" for m in lines))
    plain, plain_dlq = replay(events, tmp_path / "plain.jsonl", "--no-model")
    for n in (1, 3):
        sharded, dlq = replay(events, tmp_path / f"w{n}.jsonl", "--no-model", "--workers", str(n))
        assert dlq == plain_dlq
        assert final_states(alerts_of(sharded)) == final_states(alerts_of(plain))
    letters = [json.loads(line) for line in plain_dlq.splitlines()]
    assert [d["source"]["line"] for d in letters] == [31, 32, 33, 34, 35]
    assert len(alerts_of(plain)) == 30  # every large amount, the escaped one's too


def test_routing_by_bytes_agrees_with_decoding() -> None:
    """The fast path (`route`) gives each line the shard of its decoded merchant."""
    good = encode([event("auth_request", i, merchant=f"M-{i}") for i in range(40)])
    compact = [json.dumps(json.loads(line), separators=(",", ":")).encode() for line in good]
    odd = [
        compact[0].replace(b'"M-0"', b'"M-\\u0030"'),
        compact[1].replace(b'"merchant_id"', b'"merchant\\u005fid"'),
        compact[2] + b" ",
        compact[3].replace(b'"M-3"', b'"' + "\u00c9-3".encode() + b'"'),
        b'{"merchant_id":"M-5","x":{"merchant_id":"M-6"}}',
        b"not json",
    ]
    lines = [*good, *compact, *odd]
    known: dict[bytes, int] = {}
    assert workers.route(lines, 1, known) == [
        workers.shard_of(line, n) for n, line in enumerate(lines, 1)
    ]
    for line, shard in zip(lines, workers.route(lines, 1, known), strict=True):
        decoded = decode(line)
        if type(decoded) is Event:
            assert shard == _shard(decoded.merchant_id)


def test_empty_and_single_line_inputs(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert replay(empty, tmp_path / "e.jsonl", "--workers", "2") == (b"", b"")
    one = tmp_path / "one.jsonl"
    one.write_bytes(encode([event("auth_request", 0, amount=2_000_000)])[0] + b"\n")
    alerts, dlq = replay(one, tmp_path / "o.jsonl", "--workers", "16")
    assert [a.detector for a in alerts_of(alerts)] == ["large_amount"] and dlq == b""


@pytest.mark.parametrize("value", ["0", "-1", "17"])
def test_bad_worker_counts_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"")
    out = tmp_path / "a.jsonl"
    assert main(["replay", str(events), "--alerts", str(out), "--workers", value]) == 2
    assert "--workers must be from 1 to 16" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit):
        main(["replay", str(events), "--alerts", str(out), "--workers", "two"])


@pytest.mark.parametrize("how", ["killed", "raises"])
def test_a_worker_that_dies_ends_the_replay_with_nothing_written(
    simulated: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    how: str,
) -> None:
    """Worker 1 dies at its third chunk: the parent says so in one line, exit status 2, and the
    earlier outputs stay as they were (no temporary file left, no worker left running)."""
    events, _ = simulated
    score = workers.Shards.score

    def dying(self: workers.Shards, read: workers.Read, clock: int) -> workers.Scored:
        if 1 in self.scorers and read.first_line > 2 * 1000:
            if how == "killed":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("a bug")
        return score(self, read, clock)

    monkeypatch.setattr(workers.Shards, "score", dying)
    monkeypatch.setattr(workers, "CHUNK_LINES", 1000)
    out = tmp_path / "alerts.jsonl"
    out.write_text("earlier\n")
    status = main(["replay", str(events), "--alerts", str(out), "--no-model", "--workers", "2"])
    err = capsys.readouterr().err
    assert status == 2
    expected = "died (killed by SIGKILL)" if how == "killed" else "failed: RuntimeError: a bug"
    assert f"posmon: error: replay worker 1 of 2 {expected}; nothing was written" in err
    assert out.read_text() == "earlier\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alerts.jsonl"]
    assert not multiprocessing.active_children()
