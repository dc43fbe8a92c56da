"""Seeded, deterministic POS terminal traffic with labelled incidents and anomalies (`posmon
simulate`).

`Simulation(spec).lines()` yields the JSONL lines of the events file (docs/contract.md, "Event")
in arrival order; once they are exhausted, `labels` holds what a perfect monitor should report:

- `{"type": "incident", "detector", <entity fields>, "start", "end", ["count"], "note"}`: one
  per expected alert. The entity fields identify the alert: `card_id` + `terminal_id` +
  `txn_ref` (the first case's failed attempt) for `failed_then_debited`; `txn_ref` (the
  alert's `details.txn_ref`) for `duplicate_debit`, `missing_reversal`, `large_amount` and
  `stale_preauth`; `card_id` for `small_amount_burst`; `terminal_id` for
  `terminal_failure_spike`. `count`, when present, is the alert's final `count`.
- `{"type": "near_miss", "detector", <entity fields>, "start", "end", "note"}`: a pattern
  close to a rule that must raise nothing (information only).
- `{"type": "malformed", "line", "reason", "variant"}`: `line` is 1-based in the events file,
  `reason` is `not_json`, `schema` or `pan`.
- `{"type": "redelivery", "event_id"}`: a later exact copy of an earlier line.
- `{"type": "late", "event_id"}`: an event whose `event_time` is below the largest earlier
  `event_time` minus `allowed_lateness_s` when it arrives.
- `{"type": "anomaly", "event_id", "label": 1, "kind", "known_at"}`: an `auth_request` of a
  behaviour anomaly that no rule names (`monitor.simulation.anomalies`), `kind` one of
  `compromised_card`, `distant_spree`, `night_velocity`, or any other `auth_request` at a
  compromised terminal during its 14 days, `kind` `compromised_terminal`; `known_at` (RFC 3339,
  UTC) is its `event_time` plus 7 days, when analysts learn of it. Every other `auth_request`
  counts as a label 0; no label-0 line is written. The only records with a `label` key.

Every scene's decisions fall due well before the end of the period, and the last event of the
file is 3 s before the end, so a replay decides all of them. Background traffic and anomalies are
built so that no rule fires on them (see `monitor.simulation.traffic` and `.anomalies`). The
same spec always gives the same bytes (same Python version).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from monitor.simulation.anomalies import KINDS, TERMINALS_PER_DAY, Anomalies
from monitor.simulation.delivery import Delivery, Tally
from monitor.simulation.incidents import INCIDENTS
from monitor.simulation.lines import EventQueue, Ids, TimeFormat
from monitor.simulation.malformed import MalformedLines
from monitor.simulation.near_misses import NEAR_MISSES
from monitor.simulation.stage import Label, Stage, plan
from monitor.simulation.traffic import Background
from monitor.simulation.world import US_PER_H, US_PER_MIN, US_PER_S, CardPool, build_world

__all__ = ["Simulation", "SimulationSpec", "SimulationStats", "write_simulation"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CARDS_PER_MERCHANT = 400  # about 1.5 purchases per card and day
CARD_COOLDOWN_US = 10 * US_PER_MIN + US_PER_S  # just over the burst window


@dataclass(frozen=True, slots=True)
class SimulationSpec:
    """What to simulate. `merchants` is the scale knob: terminals (about 2.5 per merchant)
    and cards (400 per merchant) follow it; about 1,500 events per merchant-day, most of them
    between 08:00 and 20:00 UTC."""

    seed: int = 7
    hours: float = 2.0
    start: datetime = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
    merchants: int = 40
    incidents: bool = True  # incidents, near misses, redeliveries, late events, malformed lines
    anomalies: bool = True  # labelled behaviour anomalies (monitor.simulation.anomalies)
    compromised_terminals_per_day: float = TERMINALS_PER_DAY  # with anomalies; 0 disables
    allowed_lateness_s: float = 120.0  # the monitor's, to label exactly which events are late

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.start.utcoffset() is None:
            raise ValueError("SimulationSpec.start must be timezone-aware")
        if not self.hours > 0:
            raise ValueError("SimulationSpec.hours must be positive")
        if self.merchants < 1:
            raise ValueError("SimulationSpec.merchants must be at least 1")
        if not self.allowed_lateness_s > 0:
            raise ValueError("SimulationSpec.allowed_lateness_s must be positive")
        if not 0 <= self.compromised_terminals_per_day < float("inf"):
            raise ValueError("SimulationSpec.compromised_terminals_per_day must be at least 0")


@dataclass(frozen=True, slots=True)
class SimulationStats:
    """What a run wrote. `events` counts valid first deliveries; `lines` every line."""

    lines: int
    events: int
    incidents: dict[str, int] = field(default_factory=dict)  # expected alerts by detector
    near_misses: int = 0
    malformed: int = 0
    redeliveries: int = 0
    late: int = 0
    anomalies: dict[str, int] = field(default_factory=dict)  # labelled auth_requests by kind


class Simulation:
    """One simulated period. Each call of `lines()` replays it from the seed and rebuilds
    `labels`, which is complete once that call's iterator is exhausted."""

    def __init__(self, spec: SimulationSpec) -> None:
        self.spec = spec
        self.labels: list[Label] = []
        self._tally = Tally()

    def lines(self) -> Iterator[bytes]:
        """The events file's lines in arrival order, without line terminators."""
        spec = self.spec
        self.labels = labels = []
        start_us = (spec.start - _EPOCH) // timedelta(microseconds=1)
        period_us = round(spec.hours * US_PER_H)
        end_us = start_us + period_us
        lateness_us = round(spec.allowed_lateness_s * US_PER_S)
        max_jitter_us = max(min(60 * US_PER_S, lateness_us // 2), 1)

        def rng(purpose: str) -> random.Random:
            # Seeded simulated traffic, reproducible on purpose (not a secret).
            return random.Random(f"posmon-sim:{spec.seed}:{purpose}")  # nosec B311

        cards = CARDS_PER_MERCHANT * spec.merchants + 200
        world = build_world(rng("world"), spec.merchants, cards)
        pool = CardPool(rng("cards"), cards, CARD_COOLDOWN_US)
        queue = EventQueue(start_us, end_us)
        ids = Ids(spec.seed)
        if spec.incidents:
            margin = min(max(period_us // 4, 3 * US_PER_MIN), 30 * US_PER_MIN)
            stage = Stage(
                world,
                queue,
                ids,
                rng("incidents"),
                TimeFormat(),
                lo_us=start_us + min(5 * US_PER_MIN, period_us // 20),
                hi_us=end_us - margin,
                max_jitter_us=max_jitter_us,
            )
            plan(stage, INCIDENTS, spec.hours)
            plan(stage, NEAR_MISSES, spec.hours)
            labels.extend(stage.labels)
        anomalies = None
        if spec.anomalies:
            anomalies = Anomalies(
                world,
                queue,
                spec.seed,
                rng("anomalies"),
                labels,
                start_us=start_us,
                end_us=end_us,
                pool_size=cards,
                terminals_per_day=spec.compromised_terminals_per_day,
            )
        background = Background(
            world,
            pool,
            queue,
            ids,
            rng("traffic"),
            start_us=start_us,
            lateness_us=lateness_us,
            late_events=spec.incidents,
            anomalies=anomalies,
        )
        malformed = (
            MalformedLines(spec.seed, rng("malformed"), world.terminals) if spec.incidents else None
        )
        delivery = Delivery(
            ids, rng("delivery"), malformed, labels, lateness_us=lateness_us, start_us=start_us
        )
        self._tally = delivery.tally
        events = background.run()
        if anomalies is not None:  # labels the attempts at compromised terminals as they pass
            events = anomalies.label_terminals(events)
        yield from delivery.lines(events)

    @property
    def stats(self) -> SimulationStats:
        """Counts of the last run (complete once `lines()` is exhausted)."""
        tally = self._tally
        expected = Counter(str(x["detector"]) for x in self.labels if x["type"] == "incident")
        anomalies = Counter(str(x["kind"]) for x in self.labels if x["type"] == "anomaly")
        return SimulationStats(
            lines=tally.lines,
            events=tally.events,
            incidents=dict(sorted(expected.items())),
            near_misses=sum(1 for x in self.labels if x["type"] == "near_miss"),
            malformed=tally.malformed,
            redeliveries=tally.redeliveries,
            late=tally.late,
            anomalies={kind: anomalies[kind] for kind in KINDS} if self.spec.anomalies else {},
        )


def write_simulation(spec: SimulationSpec, out: Path, labels: Path) -> SimulationStats:
    """Write the events file (`out`, JSONL, `\\n` after every line) and the labels file."""
    sim = Simulation(spec)
    chunk: list[bytes] = []
    with out.open("wb") as f:
        for line in sim.lines():
            chunk.append(line)
            if len(chunk) >= 8192:
                chunk.append(b"")
                f.write(b"\n".join(chunk))
                chunk.clear()
        if chunk:
            chunk.append(b"")
            f.write(b"\n".join(chunk))
    with labels.open("w", encoding="utf-8") as f:
        for label in sim.labels:
            f.write(json.dumps(label) + "\n")
    return sim.stats
