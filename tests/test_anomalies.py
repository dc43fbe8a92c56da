"""The simulator's anomalies: behaviour anomalies labelled, shaped as their kind says, rare, and
silent for every rule; compromised terminals labelling every attempt there for 14 days and
changing no event.

As in tests/test_simulate.py, the checks recompute from the events file alone what the labels
claim (a card's history, its merchants, the hours, a terminal's attempts), and the batch oracle
of docs/detectors.md proves that no rule fires on them; one check runs the real scorer with and
without anomalies.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from monitor.cli.settings import load_policy
from monitor.scoring.pipeline import replay_messages
from monitor.scoring.scorer import Scorer
from monitor.simulation.anomalies import Compromise, compromise_plan
from monitor.simulation.simulator import (
    CARDS_PER_MERCHANT,
    Simulation,
    SimulationSpec,
    write_simulation,
)
from monitor.simulation.world import build_world
from tests.test_simulate import (
    Event,
    Run,
    classify,
    expected_from_labels,
    micros,
    oracle,
    simulate,
)

US = 1_000_000
MIN = 60 * US
EPISODES = {"compromised_card", "distant_spree", "night_velocity"}  # behaviour anomalies
TERMINAL = "compromised_terminal"
KINDS = EPISODES | {TERMINAL}
DAY_US = 24 * 60 * MIN
#: Minor units per euro cent, to compare tickets across currencies (JPY has no minor unit).
PER_EUR_CENT = {"EUR": 1.0, "USD": 1.08, "GBP": 0.85, "JPY": 1.6}
#: A day and a half from 22:00: two nights and a day, every kind.
DAY_ARGS: dict[str, Any] = {
    "seed": 3, "hours": 30.0, "merchants": 30, "start": datetime(2026, 11, 1, 22, tzinfo=UTC)
}  # fmt: skip
DAY = SimulationSpec(**DAY_ARGS)
#: Six quiet hours over a night (a spree and night velocity).
NIGHT_ARGS: dict[str, Any] = {
    "seed": 3, "hours": 6.0, "merchants": 40, "start": datetime(2026, 11, 2, 22, tzinfo=UTC)
}  # fmt: skip


def eur(e: Event) -> float:
    return float(e["amount_minor"]) / PER_EUR_CENT[e["currency"]]


def time_of_day(t: int) -> int:
    return t % (24 * 60 * MIN)


class Day:
    """The events of `DAY` and their anomaly labels, indexed for the checks."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.events = run.valid_events()
        for e in self.events:
            e["t"] = micros(e["event_time"])
        self.labels = run.of_type("anomaly")
        self.by_id = {e["event_id"]: e for e in self.events}
        self.by_ref: dict[str, list[Event]] = defaultdict(list)
        self.by_card: dict[str, list[Event]] = defaultdict(list)
        for e in self.events:
            self.by_ref[e["txn_ref"]].append(e)
            self.by_card[e["card_id"]].append(e)
        # Attempts at a compromised terminal are the background's: part of a card's history.
        self.anomalous = {x["event_id"] for x in self.labels if x["kind"] in EPISODES}

    def episodes(self, kind: str) -> list[list[Event]]:
        """The labelled requests of each episode of `kind` (one card each), in time order."""
        cards: dict[str, list[Event]] = defaultdict(list)
        for x in self.labels:
            if x["kind"] == kind:
                request = self.by_id[x["event_id"]]
                cards[request["card_id"]].append(request)
        return [sorted(v, key=lambda e: e["t"]) for v in cards.values()]

    def paid_before(self, card: str, t: int) -> list[Event]:
        """The card's ordinary (unlabelled) approved requests before `t`."""
        return [
            e
            for e in self.by_card[card]
            if e["kind"] == "auth_request"
            and e["t"] < t
            and e["event_id"] not in self.anomalous
            and any(o["kind"] == "auth_approved" for o in self.by_ref[e["txn_ref"]])
        ]


@pytest.fixture(scope="module")
def day() -> Day:
    return Day(simulate(**DAY_ARGS))


def test_every_label_names_one_auth_request_of_the_file(day: Day) -> None:
    assert {x["kind"] for x in day.labels} == KINDS  # DAY has a compromised terminal too
    ids = [x["event_id"] for x in day.labels]
    assert len(ids) == len(set(ids))
    for x in day.labels:
        assert set(x) == {"type", "event_id", "label", "kind", "known_at"}
        assert x["label"] == 1
        request = day.by_id[x["event_id"]]
        assert request["kind"] == "auth_request"
        assert x["known_at"].endswith("+00:00")
        known = datetime.fromisoformat(x["known_at"]) - datetime.fromisoformat(
            request["event_time"]
        )
        assert known == timedelta(days=7)


def test_each_anomalous_attempt_is_an_ordinary_approved_purchase(day: Day) -> None:
    end = micros(DAY.start.isoformat()) + int(DAY.hours * 60 * MIN)
    for x in day.labels:
        if x["kind"] == TERMINAL:
            continue  # any attempt the terminal sees: see the compromised terminals' tests
        request = day.by_id[x["event_id"]]
        flow = Counter(e["kind"] for e in day.by_ref[request["txn_ref"]])
        assert flow["auth_request"] == flow["auth_approved"] == 1, flow
        assert flow["debit_posted"] <= 1 and set(flow) <= {
            "auth_request", "auth_approved", "debit_posted"
        }  # fmt: skip
        assert flow["debit_posted"] == 1 or request["t"] > end - 3 * 60 * MIN
        assert 1_000 <= request["amount_minor"] < 1_000_000


def test_compromised_cards_spend_several_times_their_usual(day: Day) -> None:
    episodes = day.episodes("compromised_card")
    assert episodes
    for requests in episodes:
        first = requests[0]["t"]
        history = day.paid_before(requests[0]["card_id"], first // MIN * MIN)
        assert history, "the card has paid before"
        usual = sum(map(eur, history)) / len(history)
        for e in requests:
            assert 3.9 <= eur(e) / usual <= 10.5, (eur(e), usual)
        assert 1 <= len(requests) <= 5
        gaps = [b["t"] - a["t"] for a, b in pairwise(requests)]
        assert all(20 * MIN <= g <= 90 * MIN for g in gaps)


def test_distant_sprees_go_where_the_card_never_went_within_an_hour(day: Day) -> None:
    episodes = day.episodes("distant_spree")
    assert episodes
    for requests in episodes:
        first = requests[0]["t"]
        history = day.paid_before(requests[0]["card_id"], first // MIN * MIN)
        assert history, "the card has paid before"
        usual = {e["merchant_id"] for e in history}
        assert not usual & {e["merchant_id"] for e in requests}
        assert len({e["terminal_id"] for e in requests}) == len(requests)
        assert 5 <= len(requests) <= 9
        assert requests[-1]["t"] - first <= 70 * MIN


def test_night_velocity_is_minutes_apart_in_the_small_hours(day: Day) -> None:
    episodes = day.episodes("night_velocity")
    assert len(episodes) >= 2
    for requests in episodes:
        assert time_of_day(requests[0]["t"]) < 4 * 60 * MIN + 40 * MIN
        assert 3 <= len(requests) <= 6
        assert len({e["terminal_id"] for e in requests}) == len(requests)
        gaps = [b["t"] - a["t"] for a, b in pairwise(requests)]
        assert all(30 * US <= g <= 3 * MIN for g in gaps)


def test_no_rule_fires_on_anomalies(day: Day) -> None:
    assert oracle(day.events) == expected_from_labels(day.run.labels)


def test_the_scorer_raises_the_same_alerts_with_and_without_anomalies() -> None:
    """A night at scale through the real scorer: the anomalies change no alert."""
    finals = []
    for anomalies in (True, False):
        spec = SimulationSpec(
            seed=17,
            hours=4.0,
            merchants=40,
            start=datetime(2026, 11, 3, 23, 30, tzinfo=UTC),
            anomalies=anomalies,
        )
        sim = Simulation(spec)
        sink, _ = replay_messages(list(sim.lines()), Scorer(load_policy(None)))
        finals.append({k: v.model_dump_json() for k, v in sink.final_alerts().items()})
        assert bool(sim.stats.anomalies.get("night_velocity")) == anomalies
    assert finals[0] == finals[1]
    assert finals[0]


def test_about_one_attempt_in_a_thousand_kinds_balanced() -> None:
    spec = SimulationSpec(seed=1, hours=24.0, merchants=40, start=datetime(2026, 11, 2, tzinfo=UTC))
    sim = Simulation(spec)
    requests = sum(1 for line in sim.lines() if b'"kind":"auth_request"' in line)
    every = Counter(str(x["kind"]) for x in sim.labels if x["type"] == "anomaly")
    kinds = Counter({k: every[k] for k in EPISODES})
    assert 0.7 <= kinds.total() / requests * 1000 <= 1.4, (kinds, requests)
    assert all(kinds[k] >= kinds.total() / 5 for k in EPISODES), kinds
    assert sim.stats.anomalies == dict.fromkeys(KINDS, 0) | dict(every)


def test_a_default_morning_holds_a_few_and_no_night_velocity() -> None:
    sim = Simulation(SimulationSpec())
    for _ in sim.lines():
        pass
    assert sim.stats.anomalies["night_velocity"] == 0
    assert sim.stats.anomalies[TERMINAL] == 0  # one compromise in 2 days: rarely in 2 hours
    assert sum(sim.stats.anomalies.values()) <= 12


def test_same_spec_same_bytes_and_labels() -> None:
    spec = SimulationSpec(**NIGHT_ARGS)
    a, b = Simulation(spec), Simulation(spec)
    assert list(a.lines()) == list(b.lines())
    assert a.labels == b.labels
    assert any(x["type"] == "anomaly" for x in a.labels)


def first_lines(run: Run) -> dict[str, bytes]:
    """Each valid event's first line, by event id."""
    out: dict[str, bytes] = {}
    for line in run.lines:
        if classify(line) == "ok":
            out.setdefault(json.loads(line)["event_id"], line)
    return out


def test_without_anomalies_the_rest_is_the_same_events() -> None:
    """Anomalies draw from their own stream and id ranges: turning them off removes exactly
    their attempts' events, and no other event changes by a byte."""
    on, off = simulate(**NIGHT_ARGS), simulate(**NIGHT_ARGS, anomalies=False)
    assert not off.of_type("anomaly")
    assert on.of_type("incident") == off.of_type("incident")
    assert on.of_type("near_miss") == off.of_type("near_miss")
    lines_on, lines_off = first_lines(on), first_lines(off)
    assert all(lines_on.get(eid) == line for eid, line in lines_off.items())
    labelled = {x["event_id"] for x in on.of_type("anomaly") if x["kind"] in EPISODES}
    refs = {json.loads(lines_on[eid])["txn_ref"] for eid in labelled}
    extra = [json.loads(lines_on[eid]) for eid in lines_on.keys() - lines_off.keys()]
    assert labelled and {e["event_id"] for e in extra} >= labelled
    assert {e["txn_ref"] for e in extra} == refs


def test_write_simulation_writes_the_anomaly_labels(tmp_path: Path) -> None:
    out, labels = tmp_path / "events.jsonl", tmp_path / "labels.jsonl"
    stats = write_simulation(SimulationSpec(**NIGHT_ARGS), out, labels)
    written = [json.loads(x) for x in labels.read_text().splitlines()]
    kinds = Counter(x["kind"] for x in written if x["type"] == "anomaly")
    assert kinds and stats.anomalies == dict.fromkeys(KINDS, 0) | dict(kinds)
    assert all("label" not in x for x in written if x["type"] != "anomaly")
    off = write_simulation(
        SimulationSpec(seed=2, hours=0.5, merchants=3, anomalies=False), out, labels
    )
    assert off.anomalies == {}
    assert '"anomaly"' not in labels.read_text()


# -- compromised terminals ----------------------------------------------------------------------

#: A week at a smaller scale, incidents included: four compromised terminals, the last one 25
#: minutes before the end (too late for any attempt).
WEEK_ARGS: dict[str, Any] = {"seed": 1, "hours": 168.0, "merchants": 12}


def planned(spec: SimulationSpec) -> list[Compromise]:
    """The spec's compromised terminals, planned from the world of its seed as
    `Simulation.lines` builds it."""
    cards = CARDS_PER_MERCHANT * spec.merchants + 200
    world = build_world(random.Random(f"posmon-sim:{spec.seed}:world"), spec.merchants, cards)
    start = micros(spec.start.isoformat())
    end = start + int(spec.hours * 60 * MIN)
    return compromise_plan(spec.seed, world, start, end, spec.compromised_terminals_per_day)


class Attempts:
    """The valid `auth_request`s of a run (first delivery), the references of its declined
    attempts, and its anomaly labels by event id."""

    def __init__(self, run: Run) -> None:
        self.run = run
        seen: set[str] = set()
        self.requests: list[Event] = []
        self.declined: set[str] = set()
        for raw in run.lines:
            if b'"auth_declined"' in raw and classify(raw) == "ok":
                self.declined.add(json.loads(raw)["txn_ref"])
            elif b'"auth_request"' in raw and classify(raw) == "ok":
                e = json.loads(raw)
                if e["event_id"] not in seen:
                    seen.add(e["event_id"])
                    e["t"] = micros(e["event_time"])
                    self.requests.append(e)
        self.labels = {x["event_id"]: x for x in run.of_type("anomaly")}

    def kind(self, e: Event) -> str | None:
        label = self.labels.get(e["event_id"])
        return None if label is None else str(label["kind"])


@pytest.fixture(scope="module")
def week() -> Attempts:
    return Attempts(simulate(**WEEK_ARGS))


def test_a_week_has_a_handful_of_steady_compromised_terminals(week: Attempts) -> None:
    spec = SimulationSpec(**WEEK_ARGS)
    plan = planned(spec)
    assert 3 <= len(plan) <= 4  # one every two days
    terminals = {c.terminal.terminal_id for c in plan}
    assert len(terminals) == len(plan)
    labelled = Counter(e["terminal_id"] for e in week.requests if week.kind(e) == TERMINAL)
    assert set(labelled) <= terminals
    end = micros(spec.start.isoformat()) + 7 * DAY_US
    quiet = min(c.terminal.rate_per_h for c in plan)
    for c in plan:
        assert not c.terminal.merchant.profile.preauth
        assert c.terminal.rate_per_h == quiet
        assert c.end_us - c.start_us == 14 * DAY_US
        days = (end - c.start_us) / DAY_US
        if days >= 1:  # some tens of attempts a day
            assert 50 <= labelled[c.terminal.terminal_id] / days <= 200, (c, labelled)


def test_every_attempt_at_a_compromised_terminal_is_labelled_and_no_other(week: Attempts) -> None:
    windows = {c.terminal.terminal_id: c for c in planned(SimulationSpec(**WEEK_ARGS))}
    by_id = {e["event_id"]: e for e in week.requests}
    for e in week.requests:
        c = windows.get(e["terminal_id"])
        if c is not None and c.start_us <= e["t"] < c.end_us:
            # A behaviour anomaly placed there keeps its own kind.
            assert week.kind(e) in KINDS, e
        else:
            assert week.kind(e) != TERMINAL, e
    terminal = [x for x in week.labels.values() if x["kind"] == TERMINAL]
    assert len(terminal) > 1_000
    for x in terminal:
        assert set(x) == {"type", "event_id", "label", "kind", "known_at"}
        assert x["label"] == 1
        request = by_id[x["event_id"]]  # a valid auth_request of the file
        known = datetime.fromisoformat(x["known_at"]) - datetime.fromisoformat(
            request["event_time"]
        )
        assert known == timedelta(days=7)
    # Whatever the attempt and however it ended: declined attempts are labelled too.
    assert any(by_id[x["event_id"]]["txn_ref"] in week.declined for x in terminal)


def test_compromised_terminals_change_no_event_and_no_other_label(week: Attempts) -> None:
    off = simulate(**WEEK_ARGS, compromised_terminals_per_day=0)
    assert off.lines == week.run.lines
    assert [x for x in week.run.labels if x.get("kind") != TERMINAL] == off.labels
    assert not any(x.get("kind") == TERMINAL for x in off.labels)


def test_compromised_terminals_follow_the_seed() -> None:
    def terminal_labels(seed: int) -> list[dict[str, Any]]:
        spec = SimulationSpec(seed=seed, hours=6.0, merchants=10, compromised_terminals_per_day=8)
        assert len(planned(spec)) == 2
        sim = Simulation(spec)
        for _ in sim.lines():
            pass
        return [dict(x) for x in sim.labels if x.get("kind") == TERMINAL]

    first = terminal_labels(5)
    assert first and first == terminal_labels(5)
    assert {x["event_id"] for x in first}.isdisjoint(x["event_id"] for x in terminal_labels(6))


def test_labels_stop_fourteen_days_after_the_compromise() -> None:
    args: dict[str, Any] = {"seed": 1, "hours": 15.5 * 24, "merchants": 3, "incidents": False}
    [c] = planned(SimulationSpec(**args))
    run = Attempts(simulate(**args))
    at = [e for e in run.requests if e["terminal_id"] == c.terminal.terminal_id]
    assert all((run.kind(e) is not None) == (c.start_us <= e["t"] < c.end_us) for e in at)
    assert sum(1 for e in at if e["t"] >= c.end_us) >= 20
    assert sum(1 for e in at if e["t"] < c.start_us) >= 20


def test_the_compromise_rate_is_a_knob() -> None:
    with pytest.raises(ValueError, match="compromised_terminals_per_day"):
        SimulationSpec(compromised_terminals_per_day=-0.5)
    assert not planned(SimulationSpec(hours=400.0, merchants=4, compromised_terminals_per_day=0))
    assert len(planned(SimulationSpec(hours=96.0, merchants=40))) == 2
