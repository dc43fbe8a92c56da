"""What a detector is to the scorer: the event kinds it wants, its own state, its decisions.

The rules are of three kinds (docs/detectors.md, "Time"), one protocol each:

- `OnArrival` decides as an event arrives: its hooks return what they found (`large_amount`).
- `Deadline` schedules a decision on its `Timers` when an event arrives; the decision is
  taken once the watermark passes its deadline, so it only looks at events before the deadline
  (`failed_then_debited`, `duplicate_debit`, `missing_reversal`, `stale_preauth`).
- `Ordered` holds its events back and counts them in event-time order once the watermark has
  passed them (`small_amount_burst`, `terminal_failure_spike`).

A detector owns its whole rule: its settings (a `DetectorSettings` in its module, which builds
it), which event kinds it wants (`hooks`), its typed state, its decisions and the text of its
alerts (an `Incident` subclass). Thresholds live in the settings, apart from the state. The
scorer owns what detectors share (`Shared`): dedup, the watermark, the attempts and the timers.
The registry is `monitor.scoring.policy.Detectors`, one line per detector.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict

from monitor.core.alerts import Severity
from monitor.core.events import Event
from monitor.scoring.attempts import Attempt, Attempts
from monitor.scoring.incident import Incident
from monitor.scoring.model import ModelSlot
from monitor.scoring.state import Expiring, Order, Timers, Watermark

P = TypeVar("P")

# Which events a scorer holds: "all" of them (one monitor, a replay), or one stage of the
# partitioned design (docs/streaming.md, "Scale-out"): a "merchant" stage holds a merchant
# partition's events and runs the rules whose keys all live in one merchant's events; a "card"
# stage is given the attempts the card-level rules need and runs those.
Stage = Literal["all", "merchant", "card"]

# What a hook found: the incidents it opened or grew (None, the usual answer: nothing).
Found = Sequence[Incident] | None
EventHook = Callable[[Event], Found]
AttemptHook = Callable[[Event, Attempt], Found]


@dataclass(frozen=True, slots=True)
class Amounts:
    """An event hook the scorer calls only for amounts in `[at_least, at_most]`: a rule about
    small or large amounts is not called for the rest (the per-event path is the hot one)."""

    hook: EventHook
    at_least: int = 0
    at_most: int | None = None


@dataclass(frozen=True, slots=True)
class Hooks:
    """The event kinds a detector wants and what it does with each.

    `on_attempt` takes the kinds of `ATTEMPT_KINDS` (outcomes, reversals, refunds, debits) and
    is called with the attempt the scorer has just applied the event to; `on_event` takes the
    other kinds (requests, holds), each hook possibly limited to a band of `Amounts`.
    """

    on_event: Mapping[str, EventHook | Amounts] = field(default_factory=dict)
    on_attempt: Mapping[str, AttemptHook] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Shared:
    """What the scorer shares with its detectors. Detectors read the attempts and the watermark;
    only the scorer applies events to attempts and moves time."""

    attempts: Attempts
    watermark: Watermark
    lateness_us: int
    attempt_ttl_us: int
    cap: int  # the hard cap of every keyed store
    max_evidence: int
    # The event_ids of each alert of the last 30 days (every detector's), for verdicts given on
    # an alert (`Scorer.take_alerts` fills it).
    evidence: Expiring[tuple[str, ...]]
    model: ModelSlot | None = None  # the anomaly model (None: none loaded)
    stage: Stage = "all"


@runtime_checkable
class Detector(Protocol):
    """What every detector offers the scorer."""

    def hooks(self) -> Hooks:
        """The event kinds it wants; asked once, when the scorer is built."""
        ...

    def sweep(self, watermark: int) -> None:
        """Forget the state the watermark has left behind (called every few minutes)."""

    def sizes(self) -> Mapping[str, int]:
        """Entries held per store, for `posmon_state_entries` (stores of one name add up)."""
        return {}

    def tallies(self) -> Mapping[str, int]:
        """Running counts of what it saw, for the metrics."""
        return {}


@runtime_checkable
class OnArrival(Detector, Protocol):
    """Decides on arrival: its hooks return the incidents they opened or grew."""


@runtime_checkable
class Deadline(Detector, Protocol[P]):
    """Its hooks schedule decisions on its own `timers` (ranked by its place in the registry);
    `decisions` takes those the watermark has passed, and the scorer emits them in `Order`
    across every deadline detector."""

    timers: Timers[P]

    @abstractmethod
    def decide(self, payload: P, deadline: int) -> Incident | None:
        """Take one decision; it may only look at events before `deadline`."""

    def decisions(self, watermark: int) -> Iterator[tuple[Order, Incident | None]]:
        for order, payload in self.timers.due(watermark):
            yield order, self.decide(payload, order[0])


@runtime_checkable
class Ordered(Detector, Protocol):
    """Its hooks hold events back until the watermark passes them."""

    @abstractmethod
    def release(self, watermark: int, *, inclusive: bool) -> Iterator[Incident]:
        """Count the held-back events older than the watermark (or at it, once the input has
        ended) in (time, event_id) order; yield the incidents they opened or grew."""

    @abstractmethod
    def advance(self, watermark: int) -> None:
        """Every event older than `watermark` has been counted."""


class DetectorSettings(BaseModel):
    """A detector's section of the policy. Unknown keys are refused; the defaults are the
    contract's (docs/detectors.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    severity: Severity = "warning"

    def attempt_horizon(self) -> float:
        """Seconds of attempt state its decisions look back over (the policy checks that
        `state.attempt_ttl` covers it)."""
        return 0.0

    def wanted(self, shared: Shared) -> bool:
        """Whether the detector has what it needs to run (enabled or not)."""
        return True

    def stages(self) -> frozenset[Stage]:
        """The stages of the partitioned design that run it: "merchant" for a rule whose keys
        (attempt, terminal, merchant) all live in one merchant's events, "card" for a rule
        that follows a card across merchants."""
        return frozenset({"merchant"})

    @abstractmethod
    def build(self, shared: Shared, rank: int) -> Detector:
        """The detector these settings describe."""
