"""The per-event path: for each event kind, one function the scorer calls for every event.

It applies the event to its purchase attempt (`Attempts.record`: outcomes, reversals, refunds,
debits) and calls every detector hook of that kind, in registry order, collecting the incidents
they found. One or two hooks per kind are the rule, so those are called without a loop (a loop
over a tuple costs more than a hook that finds nothing), and an event hook limited to `Amounts`
is not called for other amounts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from monitor.core.events import KINDS, Event
from monitor.scoring.attempts import ATTEMPT_KINDS, Attempt, Attempts
from monitor.scoring.detectors.base import Amounts, AttemptHook, Detector, EventHook, Found
from monitor.scoring.incident import Incident

Handler = Callable[[Event], None]


def handlers(
    detectors: Sequence[Detector], attempts: Attempts, changed: dict[str, Incident]
) -> dict[str, Handler]:
    """For each event kind, one function that applies the event to the shared state and calls
    every detector hook of that kind, in registry order, collecting what they found.

    Plain closures over the stores, not bound methods of the scorer: those would make the scorer
    a reference cycle, and the CLI runs without the cycle collector (`cli.commands._tune_gc`).
    """
    event_hooks: dict[str, list[EventHook | Amounts]] = {kind: [] for kind in KINDS}
    attempt_hooks: dict[str, list[AttemptHook]] = {kind: [] for kind in KINDS}
    for detector in detectors:
        hooks = detector.hooks()
        for kind, hook in hooks.on_event.items():
            if kind in ATTEMPT_KINDS or kind not in event_hooks:
                raise ValueError(f"{type(detector).__name__}: no event hook for {kind!r}")
            event_hooks[kind].append(hook)
        for kind, attempt_hook in hooks.on_attempt.items():
            if kind not in ATTEMPT_KINDS:
                raise ValueError(f"{type(detector).__name__}: no attempt hook for {kind!r}")
            attempt_hooks[kind].append(attempt_hook)
    handlers = {}
    for kind in KINDS:
        if kind in ATTEMPT_KINDS:
            handlers[kind] = _on_attempt(attempts.record, tuple(attempt_hooks[kind]), changed)
        else:
            handlers[kind] = _on_event(tuple(event_hooks[kind]), changed)
    return handlers


# The handlers are the per-event path: one or two hooks per kind are the rule, so those are
# called without a loop (a loop over a tuple costs more than the call of a hook that finds
# nothing).


def _on_event(hooks: tuple[EventHook | Amounts, ...], changed: dict[str, Incident]) -> Handler:
    def found(incidents: Found) -> None:
        if incidents is not None:
            for incident in incidents:
                changed[incident.alert_id] = incident

    bands = [
        (h.hook, h.at_least, math.inf if h.at_most is None else h.at_most)
        if isinstance(h, Amounts)
        else (h, 0, math.inf)
        for h in hooks
    ]
    if len(bands) == 1:
        ((first, low1, high1),) = bands

        def handle_one(ev: Event) -> None:
            if low1 <= ev.amount_minor <= high1:
                incidents = first(ev)
                if incidents is not None:
                    found(incidents)

        return handle_one
    if len(bands) == 2:
        (first, low1, high1), (second, low2, high2) = bands

        def handle_two(ev: Event) -> None:
            amount = ev.amount_minor
            if low1 <= amount <= high1:
                incidents = first(ev)
                if incidents is not None:
                    found(incidents)
            if low2 <= amount <= high2:
                incidents = second(ev)
                if incidents is not None:
                    found(incidents)

        return handle_two

    def handle(ev: Event) -> None:
        amount = ev.amount_minor
        for hook, low, high in bands:
            if low <= amount <= high:
                incidents = hook(ev)
                if incidents is not None:
                    found(incidents)

    return handle


def _on_attempt(
    record: Callable[[Event], Attempt],
    hooks: tuple[AttemptHook, ...],
    changed: dict[str, Incident],
) -> Handler:
    def found(incidents: Found) -> None:
        if incidents is not None:
            for incident in incidents:
                changed[incident.alert_id] = incident

    if len(hooks) == 1:
        (first,) = hooks

        def handle_one(ev: Event) -> None:
            attempt = record(ev)
            incidents = first(ev, attempt)
            if incidents is not None:
                found(incidents)

        return handle_one

    if len(hooks) == 2:
        first, second = hooks

        def handle_two(ev: Event) -> None:
            attempt = record(ev)
            incidents = first(ev, attempt)
            if incidents is not None:
                found(incidents)
            incidents = second(ev, attempt)
            if incidents is not None:
                found(incidents)

        return handle_two

    def handle(ev: Event) -> None:
        attempt = record(ev)
        for hook in hooks:
            incidents = hook(ev, attempt)
            if incidents is not None:
                found(incidents)

    return handle
