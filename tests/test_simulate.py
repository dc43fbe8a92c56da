"""The simulator: deterministic, valid where it says so, and labelled exactly.

The checks here do not use the monitor: a small validator of docs/contract.md ("Event") and a
batch oracle of `docs/detectors.md` (default policy) recompute from the file alone what the labels
claim, so a simulator bug cannot hide behind a detector bug or the other way round.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.simulation.lines import Ids
from monitor.simulation.malformed import VARIANTS, luhn_valid, random_pan
from monitor.simulation.simulator import Simulation, SimulationSpec, write_simulation

US = 1_000_000
MIN = 60 * US
GRACE, TIMEOUT, UNLINKED, GROUP = 15 * MIN, 2 * MIN, 30 * MIN, 24 * 60 * MIN
KINDS = {
    "auth_request", "auth_approved", "auth_declined", "network_error", "reversal",
    "debit_posted", "refund", "preauth_hold", "preauth_release", "preauth_completion",
}  # fmt: skip
OUTCOMES = {"auth_approved", "auth_declined", "network_error"}
SOURCES = {"terminal", "acquirer", "issuer", "ledger"}
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
Event = dict[str, Any]


# -- an independent validator of docs/contract.md, "Event" ---------------------------------------


def _is_pan(value: str) -> bool:
    digits = value.replace(" ", "").replace("-", "")
    return digits.isdigit() and 13 <= len(digits) <= 19 and luhn_valid(digits)


def _str(event: Event, key: str, low: int, high: int) -> bool:
    value = event.get(key)
    return isinstance(value, str) and low <= len(value) <= high


def _time_ok(value: object) -> bool:
    if not isinstance(value, str) or RFC3339.match(value) is None:
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def classify(raw: bytes) -> str:
    """`ok`, or the reason the line must be rejected: `not_json`, `schema` or `pan`."""
    try:
        event = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "not_json"
    if not isinstance(event, dict):
        return "not_json"
    amount = event.get("amount_minor")
    rules = (
        all(_str(event, k, 1, 64) for k in ("event_id", "terminal_id", "merchant_id", "txn_ref")),
        _str(event, "card_id", 8, 128),
        _time_ok(event.get("event_time")),
        event.get("kind") in KINDS,
        isinstance(amount, int) and not isinstance(amount, bool) and amount >= 0,
        isinstance(event.get("currency"), str) and re.fullmatch("[A-Z]{3}", event["currency"]),
        "response_code" not in event or _str(event, "response_code", 2, 2),
        "mcc" not in event or re.fullmatch(r"\d{4}", str(event["mcc"])) is not None,
        "source" not in event or event["source"] in SOURCES,
    )
    if not all(rules):
        return "schema"
    return "pan" if _is_pan(event["card_id"]) else "ok"


def micros(value: str) -> int:
    return (datetime.fromisoformat(value) - EPOCH) // timedelta(microseconds=1)


# -- a batch oracle of docs/detectors.md --------------------------------------------------------


@dataclass
class Attempt:
    ref: str
    card: str
    terminal: str
    amount: int
    first: tuple[int, str, str] | None = None  # (time, event_id, kind) of the first outcome
    approved: bool = False

    @property
    def failed(self) -> bool:
        return self.first is not None and self.first[2] != "auth_approved"


def oracle(events: list[Event]) -> Counter[tuple[Any, ...]]:
    """Expected alerts (final versions) of valid, de-duplicated events, keyed like the labels
    (see `expected_from_labels`)."""
    for e in events:
        e["t"] = micros(e["event_time"])
    end = max(e["t"] for e in events)
    out: Counter[tuple[Any, ...]] = Counter()
    attempts: dict[str, Attempt] = {}
    undo: dict[str, list[int]] = defaultdict(list)
    reversals: dict[str, list[int]] = defaultdict(list)
    errors: dict[str, list[tuple[int, str]]] = defaultdict(list)
    debits: dict[str, list[Event]] = defaultdict(list)
    closes: dict[str, list[int]] = defaultdict(list)
    for e in events:
        kind, ref = e["kind"], e["txn_ref"]
        if kind in OUTCOMES:
            a = attempts.setdefault(
                ref, Attempt(ref, e["card_id"], e["terminal_id"], e["amount_minor"])
            )
            if a.first is None or (e["t"], e["event_id"]) < a.first[:2]:
                a.first = (e["t"], e["event_id"], kind)
            a.approved |= kind == "auth_approved"
            if kind == "network_error":
                errors[ref].append((e["t"], e["event_id"]))
        elif kind in ("reversal", "refund"):
            undo[ref].append(e["t"])
            if kind == "reversal":
                reversals[ref].append(e["t"])
        elif kind == "debit_posted":
            debits[ref].append(e)
        elif kind in ("preauth_completion", "preauth_release"):
            closes[ref].append(e["t"])
        elif kind == "auth_request" and e["amount_minor"] >= 1_000_000:
            out["large_amount", ref, None] = 1  # one alert per reference
    # failed_then_debited, decided in deadline order
    matched: set[str] = set()
    groups: dict[tuple[str, str], list[Any]] = {}  # (card, terminal) -> [first debit, count]
    cases: list[list[Any]] = []
    every_debit = sorted(
        (d for ds in debits.values() for d in ds), key=lambda d: (d["t"], d["event_id"])
    )
    for d in every_debit:
        deadline = d["t"] + GRACE
        if deadline >= end:
            continue
        own = attempts.get(d["txn_ref"])
        match = own if own is not None and own.failed else None
        if match is None and not (own is not None and own.approved):
            key = (d["card_id"], d["terminal_id"], d["amount_minor"])
            candidates = [
                a
                for a in attempts.values()
                if a.failed and a.ref not in matched and a.first is not None
                and (a.card, a.terminal, a.amount) == key
                and a.first[0] <= d["t"] <= a.first[0] + UNLINKED
            ]  # fmt: skip
            match = max(candidates, key=lambda a: a.first or (0,), default=None)
        if match is None:
            continue
        matched.add(match.ref)
        if any(t < deadline for r in {match.ref, d["txn_ref"]} for t in undo[r]):
            continue
        group = groups.get((match.card, match.terminal))
        if group is not None and d["t"] <= group[0] + GROUP:
            group[1] += 1
        else:
            group = groups[match.card, match.terminal] = [d["t"], 1, match.card, match.terminal]
            cases.append(group)
    for _, count, card, terminal in cases:
        out["failed_then_debited", card, terminal, count] += 1
    # duplicate_debit
    for ref, ds in debits.items():
        ds.sort(key=lambda d: (d["t"], d["event_id"]))
        if len(ds) >= 2 and (deadline := ds[1]["t"] + GRACE) < end:
            n = sum(d["t"] < deadline for d in ds)
            if n - sum(t < deadline for t in undo[ref]) >= 2:
                out["duplicate_debit", ref, n] += 1
    # missing_reversal
    for ref, errs in errors.items():
        t = min(errs)[0]
        if t + TIMEOUT < end and not any(r <= t + TIMEOUT for r in reversals[ref]):
            out["missing_reversal", ref, None] += 1
    # stale_preauth
    for e in events:
        deadline = e["t"] + GROUP
        closed = any(t <= deadline for t in closes[e["txn_ref"]])
        if e["kind"] == "preauth_hold" and deadline < end and not closed:
            out["stale_preauth", e["txn_ref"], None] += 1
    ordered = sorted(events, key=lambda e: (e["t"], e["event_id"]))
    # small_amount_burst (ordered)
    window: dict[str, deque[int]] = defaultdict(deque)
    bursts: dict[str, list[Any]] = {}  # card -> [last qualifying time, count, card]
    opened: list[list[Any]] = []
    for e in ordered:
        if e["kind"] != "auth_request" or e["amount_minor"] > 500:
            continue
        t, card = e["t"], e["card_id"]
        w = window[card]
        w.append(t)
        while w[0] <= t - 10 * MIN:
            w.popleft()
        if len(w) >= 5:
            burst = bursts.get(card)
            if burst is not None and t - burst[0] <= 10 * MIN:
                burst[0], burst[1] = t, burst[1] + 1
            else:
                burst = bursts[card] = [t, len(w), card]
                opened.append(burst)
    for _, count, card in opened:
        out["small_amount_burst", card, count] += 1
    # terminal_failure_spike (ordered)
    outcomes: dict[str, deque[tuple[int, bool]]] = defaultdict(deque)
    last_qualifying: dict[str, int] = {}
    for e in ordered:
        if e["kind"] not in OUTCOMES:
            continue
        t, term = e["t"], e["terminal_id"]
        w2 = outcomes[term]
        w2.append((t, e["kind"] == "network_error"))
        while w2[0][0] <= t - 5 * MIN:
            w2.popleft()
        if len(w2) >= 10 and 2 * sum(ne for _, ne in w2) >= len(w2):
            previous = last_qualifying.get(term)
            if previous is None or t - previous > 5 * MIN:
                out["terminal_failure_spike", term] += 1
            last_qualifying[term] = t
    return out


def expected_from_labels(labels: list[dict[str, Any]]) -> Counter[tuple[Any, ...]]:
    result: Counter[tuple[Any, ...]] = Counter()
    for x in labels:
        if x["type"] != "incident":
            continue
        d = x["detector"]
        if d == "failed_then_debited":
            result[d, x["card_id"], x["terminal_id"], x["count"]] += 1
        elif d == "small_amount_burst":
            result[d, x["card_id"], x["count"]] += 1
        elif d == "terminal_failure_spike":
            result[d, x["terminal_id"]] += 1
        elif d == "duplicate_debit":
            result[d, x["txn_ref"], x["count"]] += 1
        else:
            result[d, x["txn_ref"], None] += 1
    return result


# -- running a simulation ---------------------------------------------------------------------


@dataclass
class Run:
    lines: list[bytes]
    labels: list[dict[str, Any]]

    def valid_events(self) -> list[Event]:
        """Valid lines, first delivery of each event id, in arrival order."""
        seen: set[str] = set()
        out = []
        for raw in self.lines:
            if classify(raw) == "ok":
                event = json.loads(raw)
                if event["event_id"] not in seen:
                    seen.add(event["event_id"])
                    out.append(event)
        return out

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [x for x in self.labels if x["type"] == kind]


def simulate(**kwargs: Any) -> Run:
    sim = Simulation(SimulationSpec(**kwargs))
    lines = list(sim.lines())
    return Run(lines, [dict(x) for x in sim.labels])


@pytest.fixture(scope="module")
def run() -> Run:
    return simulate(seed=11, hours=2.0, merchants=12)


# -- tests --------------------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    a = simulate(seed=3, hours=0.5, merchants=6)
    b = simulate(seed=3, hours=0.5, merchants=6)
    c = simulate(seed=4, hours=0.5, merchants=6)
    assert a.lines == b.lines
    assert a.labels == b.labels
    assert a.lines != c.lines


def test_lines_can_be_replayed_and_labels_are_rebuilt() -> None:
    sim = Simulation(SimulationSpec(seed=5, hours=0.5, merchants=4))
    first = list(sim.lines())
    labels = list(sim.labels)
    assert list(sim.lines()) == first
    assert sim.labels == labels


def test_every_unlabelled_line_is_a_valid_event(run: Run) -> None:
    malformed = {x["line"]: x["reason"] for x in run.of_type("malformed")}
    for n, raw in enumerate(run.lines, start=1):
        assert classify(raw) == malformed.get(n, "ok"), (n, raw[:200])


def test_malformed_lines_cover_every_variant_and_reason(run: Run) -> None:
    labels = run.of_type("malformed")
    assert {x["variant"] for x in labels} == {v for v, _ in VARIANTS}
    assert {x["reason"] for x in labels} == {"not_json", "schema", "pan"}
    for raw in run.lines:
        assert b"\n" not in raw and b"\r" not in raw


def test_valid_events_follow_the_contract_conventions(run: Run) -> None:
    events = run.valid_events()
    start = micros("2026-11-02T08:00:00+00:00")
    for e in events:
        assert re.fullmatch(r"tok_[0-9a-f]{20}", e["card_id"]), e
        assert e["event_time"].endswith("+00:00")
        assert start <= micros(e["event_time"]) < start + 2 * 60 * MIN
        source = e["source"]
        if e["kind"].startswith("preauth"):
            assert source == "acquirer"
        elif e["kind"] in ("debit_posted", "refund"):
            assert source == "ledger"
        else:
            assert source == "terminal"
        if e["kind"] == "auth_approved":
            assert e["response_code"] == "00"
        elif e["kind"] == "auth_declined":
            assert e["response_code"] != "00"
        else:
            assert "response_code" not in e
    assert len({e["event_id"] for e in events}) == len(events)
    for e in events:  # no identifier may even look like a PAN (some scanners check them all)
        assert not any(isinstance(v, str) and _is_pan(v) for v in e.values()), e
        assert re.fullmatch("evt_[0-9a-f]{12}", e["event_id"]), e
        assert re.fullmatch("[0-9A-F]{12}", e["txn_ref"]), e
    assert {e["currency"] for e in events} == {"EUR", "USD", "GBP", "JPY"}
    jpy = [e["amount_minor"] for e in events if e["currency"] == "JPY"]
    assert all(a % 10 == 0 for a in jpy)


def test_a_reference_is_one_attempt_of_one_card_at_one_terminal(run: Run) -> None:
    requests = Counter(e["txn_ref"] for e in run.valid_events() if e["kind"] == "auth_request")
    assert max(requests.values()) == 1
    owners: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for e in run.valid_events():
        owners[e["txn_ref"]].add((e["card_id"], e["terminal_id"]))
    assert all(len(v) == 1 for v in owners.values())


def test_redeliveries_are_exact_copies_of_earlier_lines(run: Run) -> None:
    labelled = Counter(x["event_id"] for x in run.of_type("redelivery"))
    assert labelled
    first: dict[str, tuple[bytes, int]] = {}  # event id -> (line, newest event time then)
    copies: Counter[str] = Counter()
    newest = 0
    for raw in run.lines:
        if classify(raw) != "ok":
            continue
        eid = json.loads(raw)["event_id"]
        newest = max(newest, micros(json.loads(raw)["event_time"]))
        if eid in first:
            original, newest_then = first[eid]
            assert raw == original
            assert newest - newest_then <= 5 * MIN, "a copy comes within 5 min of event time"
            copies[eid] += 1
        else:
            first[eid] = (raw, newest)
    assert copies == labelled


def test_late_labels_follow_the_definition(run: Run) -> None:
    newest = None
    seen: set[str] = set()
    late: list[str] = []
    for raw in run.lines:
        if classify(raw) != "ok":
            continue
        e = json.loads(raw)
        if e["event_id"] in seen:
            continue
        seen.add(e["event_id"])
        t = micros(e["event_time"])
        if newest is not None and t < newest - 120 * US:
            late.append(e["event_id"])
        newest = t if newest is None else max(newest, t)
    assert late, "a run with incidents has late events"
    assert late == [x["event_id"] for x in run.of_type("late")]
    kinds = {e["event_id"]: e["kind"] for e in run.valid_events()}
    assert {kinds[eid] for eid in late} == {"debit_posted"}


def test_labels_agree_with_the_detector_semantics(run: Run) -> None:
    expected = expected_from_labels(run.labels)
    assert oracle(run.valid_events()) == expected
    detectors = {key[0] for key in expected}
    assert detectors == {
        "failed_then_debited", "duplicate_debit", "missing_reversal", "small_amount_burst",
        "terminal_failure_spike", "large_amount",
    }  # fmt: skip
    assert len(run.of_type("near_miss")) >= 10


def test_failed_then_debited_labels_name_the_first_failed_attempt(run: Run) -> None:
    events = run.valid_events()
    first_outcome: dict[str, Event] = {}
    for e in sorted(events, key=lambda e: (e["event_time"], e["event_id"])):
        if e["kind"] in OUTCOMES:
            first_outcome.setdefault(e["txn_ref"], e)
    for x in run.labels:
        if x.get("detector") == "failed_then_debited" and x["type"] == "incident":
            failed = first_outcome[x["txn_ref"]]
            assert failed["kind"] in ("auth_declined", "network_error")
            assert (failed["card_id"], failed["terminal_id"]) == (x["card_id"], x["terminal_id"])
    counts = Counter(
        x["count"] for x in run.of_type("incident") if "card_id" in x and "terminal_id" in x
    )
    assert counts[2] >= 1, "the repeated case is labelled once with count 2"


def test_background_alone_raises_nothing() -> None:
    quiet = simulate(seed=21, hours=3.0, merchants=30, incidents=False, anomalies=False)
    assert quiet.labels == []
    assert all(classify(raw) == "ok" for raw in quiet.lines)
    assert oracle(quiet.valid_events()) == Counter()


def test_a_day_long_run_has_stale_holds_and_late_releases() -> None:
    day = simulate(seed=8, hours=26.0, merchants=3)
    expected = expected_from_labels(day.labels)
    assert oracle(day.valid_events()) == expected
    assert sum(1 for k in expected if k[0] == "stale_preauth") >= 2
    assert any(x["detector"] == "stale_preauth" for x in day.of_type("near_miss"))


def test_runs_without_24_hours_of_room_have_no_stale_holds() -> None:
    short = simulate(seed=9, hours=24.5, merchants=1)
    assert not any(x.get("detector") == "stale_preauth" for x in short.of_type("incident"))


@given(
    seed=st.integers(0, 2**32),
    hours=st.sampled_from([0.5, 1.0, 1.5, 2.0]),
    merchants=st.integers(1, 8),
    minute=st.integers(0, 24 * 60 - 1),
)
def test_labels_agree_with_the_semantics_for_any_seed(
    seed: int, hours: float, merchants: int, minute: int
) -> None:
    start = datetime(2026, 3, 1, tzinfo=UTC) + timedelta(minutes=minute)
    r = simulate(seed=seed, hours=hours, merchants=merchants, start=start)
    assert oracle(r.valid_events()) == expected_from_labels(r.labels)


def test_write_simulation_writes_both_files(tmp_path: Path) -> None:
    out, labels = tmp_path / "events.jsonl", tmp_path / "labels.jsonl"
    spec = SimulationSpec(seed=2, hours=0.5, merchants=3)
    stats = write_simulation(spec, out, labels)
    lines = out.read_bytes().split(b"\n")
    assert lines[-1] == b""
    assert lines[:-1] == list(Simulation(spec).lines())
    assert stats.lines == len(lines) - 1
    assert stats.lines == stats.events + stats.malformed + stats.redeliveries
    written = [json.loads(x) for x in labels.read_text().splitlines()]
    assert sum(stats.incidents.values()) == sum(1 for x in written if x["type"] == "incident")
    assert stats.malformed == sum(1 for x in written if x["type"] == "malformed")


@pytest.mark.parametrize(
    "bad",
    [
        {"hours": 0},
        {"merchants": 0},
        {"allowed_lateness_s": 0},
        {"start": datetime(2026, 1, 1)},  # noqa: DTZ001 - the point of the test
    ],
)
def test_spec_rejects_nonsense(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SimulationSpec(**bad)


def test_identifiers_never_collide() -> None:
    ids = Ids(7)
    assert len({ids.event_id(n) for n in range(200_000)}) == 200_000
    assert len({ids.ref() for _ in range(200_000)}) == 200_000


def test_injected_pans_are_luhn_valid_card_numbers() -> None:
    import random

    rng = random.Random(1)
    for length in (15, 16, 19):
        pan = random_pan(rng, "4", length)
        assert len(pan) == length and luhn_valid(pan)
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")
