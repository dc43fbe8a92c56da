"""The stage on which incidents and near misses are played: fresh entities, attempts, labels.

A *scene* is one incident or near miss. Each scene gets cards, references and (where it matters)
a terminal of its own, so background traffic and other scenes can never add to or take from
its evidence. Its decisions must be due no later than `hi_us`, well before the end of the
period, so that the final watermark of a replay passes them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from monitor.simulation.lines import (
    AUTH_APPROVED,
    AUTH_REQUEST,
    DEBIT_POSTED,
    NO_RC,
    RC_APPROVED,
    REFUND,
    EventQueue,
    Ids,
    Kind,
    TimeFormat,
    response_code,
)
from monitor.simulation.world import US_PER_MIN, US_PER_S, Merchant, Terminal, World, new_token

Label = dict[str, str | int]


class Stage:
    """Helpers shared by scenes, and the labels they leave."""

    def __init__(
        self,
        world: World,
        queue: EventQueue,
        ids: Ids,
        rng: random.Random,
        fmt: TimeFormat,
        *,
        lo_us: int,
        hi_us: int,
        max_jitter_us: int,
    ) -> None:
        self.world = world
        self.queue = queue
        self.ids = ids
        self.rng = rng
        self.fmt = fmt
        self.lo_us = lo_us
        self.hi_us = hi_us
        self.max_jitter_us = max_jitter_us
        self.labels: list[Label] = []
        self._free = list(world.terminals)
        rng.shuffle(self._free)
        self._scene: list[Label] = []
        self._first: int | None = None
        self._last = 0

    # -- entities ---------------------------------------------------------------------------

    def card(self) -> str:
        """A card token no one else uses."""
        return new_token(self.rng)

    def terminal(self, accept: Callable[[Merchant], bool] | None = None) -> Terminal:
        """A background terminal no other scene uses (so at most one scene's network errors
        meet the background's at any terminal), or a dedicated one when none is left."""
        for i, term in enumerate(self._free):
            if accept is None or accept(term.merchant):
                return self._free.pop(i)
        return self.dedicated(accept)

    def dedicated(self, accept: Callable[[Merchant], bool] | None = None) -> Terminal:
        """A new terminal of a (preferably accepted) merchant that background never uses."""
        merchants = [m for m in self.world.merchants if accept is None or accept(m)]
        return self.rng.choice(merchants or self.world.merchants).add_dedicated_terminal(self.world)

    def merchant_terminals(self) -> Sequence[Terminal]:
        """The background terminals of a random merchant (where a card tester walks along)."""
        return self.rng.choice(self.world.merchants).terminals

    # -- time -------------------------------------------------------------------------------

    def between(self, low_us: int, high_us: int) -> int:
        """A uniform time offset in [low_us, high_us]; `high_us` below `low_us` means the
        scene was placed without room, a planning bug."""
        if high_us < low_us:
            raise AssertionError(f"scene has no room: {low_us} > {high_us}")
        return low_us + int(self.rng.random() * (high_us - low_us))

    def due(self, deadline_us: int) -> None:
        """Assert that a decision the scene relies on is due inside the labelled window."""
        if deadline_us > self.hi_us:
            raise AssertionError(f"scene decision due at {deadline_us} after {self.hi_us}")

    # -- events -----------------------------------------------------------------------------

    def add(  # noqa: PLR0917 - the event's fields, in the order of EventQueue.add
        self,
        t: int,
        kind: Kind,
        term: Terminal,
        card: str,
        ref: str,
        amount: int,
        rc: str = NO_RC,
    ) -> None:
        """Queue a scene event. Ledger events are sometimes written out of order, within the
        lateness, since any such order must give the same alerts."""
        delay = 0
        if kind in (DEBIT_POSTED, REFUND) and self.rng.random() < 0.3:
            delay = 1 + int(self.rng.random() * self.max_jitter_us)
        if not self.queue.add(t, kind, term, card, ref, amount, rc, delay):
            raise AssertionError(f"scene event {kind.name} at {t} falls after the period")
        if self._first is None or t < self._first:
            self._first = t
        self._last = max(self._last, t)

    def attempt(
        self, t: int, term: Terminal, card: str, amount: int, outcome: Kind, *, code: str = ""
    ) -> tuple[str, int]:
        """An `auth_request` at `t` under a fresh reference and its outcome 0.3-3 s later;
        returns (reference, outcome time)."""
        ref = self.ids.ref()
        self.add(t, AUTH_REQUEST, term, card, ref, amount)
        t_out = t + 300_000 + int(self.rng.random() * 2_700_000)
        rc = RC_APPROVED if outcome is AUTH_APPROVED else response_code(code) if code else NO_RC
        self.add(t_out, outcome, term, card, ref, amount, rc)
        return ref, t_out

    def maybe(  # noqa: PLR0917 - the event's fields, in the order of EventQueue.add
        self, t: int, kind: Kind, term: Terminal, card: str, ref: str, amount: int
    ) -> None:
        """Queue a harmless follow-up (e.g. the debit of an approved retry) if it falls inside
        the period; it is not part of the scene's evidence."""
        self.queue.add(t, kind, term, card, ref, amount)

    # -- labels -----------------------------------------------------------------------------

    def incident(
        self, detector: str, note: str, *, count: int | None = None, **entity: str
    ) -> None:
        """Expect exactly one alert of `detector` identified by `entity`."""
        label: Label = {"type": "incident", "detector": detector, **entity}
        if count is not None:
            label["count"] = count
        label["note"] = note
        self._scene.append(label)

    def near_miss(self, detector: str, note: str, **entity: str) -> None:
        """Record a pattern that must raise no alert (for information)."""
        self._scene.append({"type": "near_miss", "detector": detector, **entity, "note": note})

    def play(self, scene: Scene, t0: int) -> None:
        """Run a scene starting at `t0`; its labels get the scene's first and last event
        times as `start` and `end`."""
        self._scene = []
        self._first, self._last = None, t0
        scene.play(self, t0)
        for label in self._scene:
            label["start"] = self.fmt(t0 if self._first is None else self._first)
            label["end"] = self.fmt(self._last)
            self.labels.append(label)


@dataclass(frozen=True, slots=True)
class Scene:
    """A kind of incident or near miss: `min_span_us` is the least time from its first event
    to its last decision; `play` draws the rest of its timing inside the room it is given."""

    name: str
    play_fn: Callable[[Stage, int], None]
    min_span_us: int
    per_12h: float = 1.0  # how many per 12 hours of simulated time
    at_least: int = 1  # how many in any run that has room for the scene

    def play(self, stage: Stage, t0: int) -> None:
        self.play_fn(stage, t0)


def plan(stage: Stage, scenes: Sequence[Scene], hours: float) -> int:
    """Place every scene the period has room for, spread over it (stratified start times);
    returns how many scene instances were placed."""
    placed = 0
    for scene in scenes:
        room = stage.hi_us - stage.lo_us - scene.min_span_us
        if room < 0:
            continue
        n = max(scene.at_least, round(scene.per_12h * hours / 12))
        for i in range(n):
            t0 = stage.lo_us + (room * i) // n + int(stage.rng.random() * (room // n))
            stage.play(scene, t0)
            placed += 1
    return placed


MIN = US_PER_MIN
SEC = US_PER_S
