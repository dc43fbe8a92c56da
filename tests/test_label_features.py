"""The label features: exact values, no leakage (a label never changes the features of an event
before its `known_at`, whatever the batching), verdicts on alerts, idempotence, snapshots, and
`posmon replay --labels`."""

from __future__ import annotations

import json
import math
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.rows import concat, take
from monitor.cli.main import main
from monitor.core.events import Event
from monitor.core.labels import Label
from monitor.core.scored import ScoredRows
from monitor.scoring.detectors.model_outlier import ModelOutlier
from monitor.scoring.features import FEATURES, LABEL_FEATURES, FeatureState
from monitor.scoring.model import ModelSlot
from monitor.scoring.pipeline import MemorySink, MemorySource, Stats, run
from monitor.scoring.policy import Policy
from monitor.scoring.scorer import Scorer
from monitor.scoring.snapshot import dumps, loads
from tests.builders import T0, encode, event, score, tick

DAY = 86_400.0


def label(event_id: str, verdict: int, known_after_s: float, **extra: object) -> Label:
    at = (T0 + timedelta(seconds=known_after_s)).isoformat()
    return Label.model_validate({"event_id": event_id, "label": verdict, "known_at": at, **extra})


def rows_of(
    messages: list[bytes], labels: list[Label], *, batch_size: int = 1000
) -> tuple[ScoredRows, Scorer]:
    slot = ModelSlot(keep_rows=True)
    scorer, parts = Scorer(Policy(), slot), []
    scorer.learn(labels)

    def keep(_batch: object, _seconds: float) -> None:
        parts.extend(slot.take_rows())

    run(MemorySource(messages, batch_size), MemorySink(), scorer, Stats(), on_batch=keep)
    parts.extend(slot.take_rows())
    return concat(parts), scorer


def hourly(
    n: int, *, card: str = "tok_card_0001", merchant: str = "M-01"
) -> list[dict[str, object]]:
    """A purchase `buy{i}` every hour at T-0001, with the clock's ticks moving time along."""
    out: list[dict[str, object]] = []
    for i in range(n):
        ref, event_id = f"R{i}", f"buy{i}"
        out += [
            event(
                "auth_request", 3600 * i, ref=ref, event_id=event_id, card=card, merchant=merchant
            )
        ]
        out += [tick(3600 * i + 1)]
    return out


def column(rows: ScoredRows, name: str, where: str | None = None) -> list[float]:
    if where is not None:
        rows = take(rows, np.asarray(rows.terminal_id) == where)
    return [float(v) for v in rows.features[:, FEATURES.index(name)]]


def test_label_features_are_appended_to_the_feature_list() -> None:
    assert LABEL_FEATURES == (
        "terminal_fraud_share_1d",
        "terminal_fraud_share_7d",
        "terminal_fraud_share_30d",
        "merchant_fraud_share_1d",
        "merchant_fraud_share_7d",
        "merchant_fraud_share_30d",
        "card_known_frauds",
    )
    assert FEATURES[-len(LABEL_FEATURES) :] == LABEL_FEATURES


def test_golden_values_a_fraud_counts_from_its_known_at_on() -> None:
    """Four purchases at one terminal an hour apart; the first is labelled fraud, known at
    2.5 h: the first three rows have no label feature, the fourth has the decayed share."""
    stream = hourly(4, card="tok_label_01", merchant="M-LABEL")
    rows, scorer = rows_of(encode(stream), [label("buy0", 1, 2.5 * 3600)])
    share_1d = column(rows, "terminal_fraud_share_1d", "T-0001")
    share_30d = column(rows, "terminal_fraud_share_30d", "T-0001")
    assert share_1d[:3] == [0.0, 0.0, 0.0]
    # 3 h after the fraud: one fraud decayed by 3 h over a day, among 3 attempts decayed by
    # 3, 2 and 1 h.
    fraud = math.exp(-3 / 24)
    attempts = sum(math.exp(-h / 24) for h in (3, 2, 1))
    assert share_1d[3] == pytest.approx(fraud / attempts, rel=1e-6)
    month = 30 * 24
    expected_30d = math.exp(-3 / month) / sum(math.exp(-h / month) for h in (3, 2, 1))
    assert share_30d[3] == pytest.approx(expected_30d, rel=1e-6)
    assert column(rows, "merchant_fraud_share_1d", "T-0001")[3] == pytest.approx(share_1d[3])
    assert column(rows, "card_known_frauds", "T-0001") == [0.0, 0.0, 0.0, 1.0]
    assert scorer.tallies()["labels_applied"] == 1


def test_a_genuine_verdict_revokes_a_fraud_from_its_own_known_at() -> None:
    stream = hourly(5)
    labels = [label("buy0", 1, 1.5 * 3600), label("buy0", 0, 3.5 * 3600)]
    rows, _ = rows_of(encode(stream), labels)
    known = column(rows, "card_known_frauds", "T-0001")
    assert known == [0.0, 0.0, 1.0, 1.0, 0.0]


def test_outcomes_of_labels_are_counted_once() -> None:
    """Unknown purchases and labels without known_at are counted; the same label twice is
    applied once and changes nothing."""
    stream = hourly(3)
    once, _ = rows_of(encode(stream), [label("buy0", 1, 60)])
    twice, scorer = rows_of(
        encode(stream),
        [
            label("buy0", 1, 60),
            label("buy0", 1, 60),
            label("nobody", 1, 60),
            Label(event_id="buy1", label=1),
            Label(event_id="buy1", label=1),
        ],
    )
    np.testing.assert_array_equal(once.features, twice.features)
    tallies = scorer.tallies()
    assert tallies["labels_applied"] == 1
    assert tallies["labels_unknown_event"] == 1
    assert tallies["labels_no_known_at"] == 1


def test_a_verdict_on_an_alert_applies_to_its_evidence() -> None:
    """A large amount alerts; the analyst's verdict on that alert marks its purchase as fraud:
    later purchases at the terminal see it."""
    stream = [event("auth_request", 0, ref="BIG", amount=2_000_000, event_id="big"), *hourly(4)[2:]]
    (alert_id,) = [a for a, alert in score(stream).items() if "big" in alert.event_ids]
    verdict = Label.model_validate(
        {"alert_id": alert_id, "label": 1, "known_at": (T0 + timedelta(hours=1.5)).isoformat()}
    )
    # Batches of one: the alert is published before the watermark reaches the verdict (an
    # analyst judges an alert published earlier).
    rows, scorer = rows_of(encode(stream), [verdict], batch_size=1)
    assert column(rows, "card_known_frauds", "T-0001") == [0.0, 0.0, 1.0, 1.0]
    unknown = verdict.model_copy(update={"alert_id": "0" * 32})
    assert rows_of(encode(stream), [unknown])[1].tallies()["labels_unknown_alert"] == 1
    assert scorer.tallies()["labels_applied"] == 1


def test_no_leakage_in_one_release_nor_for_a_late_event() -> None:
    """Driven by hand: the label known at 3650 s is released with the purchase at 3600 s (it
    goes in after it); a purchase at 1000 s arriving late, once the label is in, does not see
    it either; the purchase at 7200 s does."""
    slot = ModelSlot(keep_rows=True)
    (detector,) = [d for d in Scorer(Policy(), slot).detectors if isinstance(d, ModelOutlier)]
    t0 = int(T0.timestamp()) * 1_000_000

    def purchase(event_id: str, at_s: int) -> None:
        ev = Event(
            event_id, t0 + at_s * 1_000_000, "auth_request", "T1", "M1", "tok", "R", 1, "EUR"
        )
        detector.hold(ev)

    def release(at_s: int) -> None:
        list(detector.release(t0 + at_s * 1_000_000, inclusive=False))

    purchase("e000", 0)
    release(100)
    detector.learn([label("e000", 1, 3650)])
    purchase("e001", 3600)
    release(3700)
    purchase("late", 1000)
    release(3800)
    purchase("e003", 7200)
    release(7300)
    rows = concat(slot.take_rows())
    assert rows.event_id == ["e000", "e001", "late", "e003"]
    assert column(rows, "card_known_frauds") == [0.0, 0.0, 0.0, 1.0]
    assert column(rows, "terminal_fraud_share_1d")[:3] == [0.0, 0.0, 0.0]


@st.composite
def labelled_streams(draw: st.DrawFn) -> tuple[list[dict[str, object]], list[Label]]:
    """Purchases and outcomes at a few terminals, the clock ticking after each, some arriving
    late (up to 3 h before the newest); labels on them known at any time."""
    n = draw(st.integers(min_value=1, max_value=20))
    stream: list[dict[str, object]] = []
    at = newest = 0.0
    for i in range(n):
        at += draw(st.floats(min_value=0.0, max_value=2 * 3600.0))
        newest = max(newest, at)
        late = draw(st.sampled_from([0.0, 0.0, 0.0, draw(st.floats(0.0, 3 * 3600.0))]))
        when = max(0.0, at - late)
        stream.append(
            event(
                draw(st.sampled_from(["auth_request", "auth_request", "auth_declined"])),
                when,
                ref=f"R{i}",
                card=f"tok_leak_{draw(st.integers(0, 2)):04d}",
                terminal=f"T-{draw(st.integers(0, 2)):04d}",
                merchant=f"M-{draw(st.integers(0, 1)):02d}",
                event_id=f"e{i:03d}",
            )
        )
        stream.append(tick(newest + 1, ref=f"tick{i}"))
    ids = [f"e{i:03d}" for i in range(n)]
    labels = [
        label(
            draw(st.sampled_from(ids)),
            draw(st.integers(0, 1)),
            draw(st.floats(min_value=0.0, max_value=newest + 3600.0)),
        )
        for _ in range(draw(st.integers(min_value=0, max_value=8)))
    ]
    return stream, labels


@settings(max_examples=40, deadline=None)
@given(labelled_streams(), st.sampled_from([1, 3, 1000]))
def test_no_leakage_a_label_known_after_an_event_never_changes_its_features(
    given_: tuple[list[dict[str, object]], list[Label]], batch_size: int
) -> None:
    """For every scored purchase: its features with all the labels equal its features with only
    the labels known at its time (at any batch size)."""
    stream, labels = given_
    messages = encode(stream)
    rows, _ = rows_of(messages, labels, batch_size=batch_size)
    for i, t in enumerate(rows.event_time_us.tolist()):
        known = [lab for lab in labels if (lab.known_at_us or 0) <= t]
        if len(known) == len(labels):
            continue
        alone, _ = rows_of(messages, known, batch_size=batch_size)
        assert alone.event_id[i] == rows.event_id[i]
        np.testing.assert_array_equal(alone.features[i], rows.features[i])


def test_a_snapshot_keeps_the_known_frauds() -> None:
    """Stopped and restored from a snapshot midway, the label features go on as one run."""
    stream = hourly(9)[2:]
    labels = [label("buy1", 1, 1.2 * 3600), label("buy3", 1, 3 * 3600)]
    whole, _ = rows_of(encode(stream), labels)
    policy = Policy()
    slot = ModelSlot(keep_rows=True)
    scorer = Scorer(policy, slot)
    scorer.learn(labels)
    sink, stats = MemorySink(), Stats()
    run(MemorySource(encode(stream[:8]), 1000), sink, scorer, stats)
    restored, _ = loads(dumps(scorer, policy, {0: 0}), policy, slot)
    run(MemorySource(encode(stream[8:]), 1000), MemorySink(), restored, Stats())
    got = concat(slot.take_rows())
    mine = np.isin(np.asarray(got.event_id), np.asarray(whole.event_id))
    theirs = np.isin(np.asarray(whole.event_id), np.asarray(got.event_id))
    np.testing.assert_array_equal(got.features[mine], whole.features[theirs])


def test_memory_of_known_frauds_is_bounded() -> None:
    """Purchases are held for labels up to the cap; marks per terminal at most 256."""
    state = FeatureState(cap=500)
    for i in range(1000):
        state.request(
            Event(f"e{i}", 1_000_000 * i, "auth_request", "T1", "M1", f"c{i}", "R", 100, "EUR")
        )
    assert len(state.purchases) == 500
    for i in range(500, 1000):
        assert state.label(f"e{i}", True, 2_000_000_000)
    marks = state.terminal_marks["T1"]
    assert len(marks) == 256 and min(m[0] for m in marks.values()) == 1_000_000 * 744


def test_replay_takes_a_labels_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(m + b"\n" for m in encode([event("auth_request", 0)])))
    labels = tmp_path / "labels.jsonl"
    good = {"event_id": "x", "label": 1, "known_at": T0.isoformat()}
    labels.write_text(json.dumps(good) + "\n" + json.dumps({"type": "incident"}) + "\n")
    out = tmp_path / "alerts.jsonl"
    assert main(["replay", str(events), "--alerts", str(out), "--labels", str(labels)]) == 0
    labels.write_text(json.dumps({**good, "label": 2}) + "\n")
    assert main(["replay", str(events), "--alerts", str(out), "--labels", str(labels)]) == 2
    err = capsys.readouterr().err
    assert "labels.jsonl:1: not a label (label:" in err
    labels.unlink()
    assert main(["replay", str(events), "--alerts", str(out), "--labels", str(labels)]) == 2
    assert "no such file" in capsys.readouterr().err
