"""`model_outlier`: the anomaly model's score of a purchase attempt is above its threshold.

An ordered detector: it holds `auth_request`s and outcomes back until the watermark passes them,
then, in event-time order, computes each request's features (`scoring.features`) and adds the
events to the history; the released requests are scored as one batch by the live model (and the
shadow, which never alerts). A request above the threshold opens an alert for its card, or grows
the card's open one when the card's previous outlier is less than `group_window` before it. The
alert names the reasons: the features furthest in the tails of the training distribution, in
plain words (`reasons`).

The model sits in a `ModelSlot` beside the state (a reload swaps it between batches); only the
feature history belongs to the state (snapshots keep it, not the model).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from typing import Annotated, Final

import numpy as np
import numpy.typing as npt
from pydantic import Field

from monitor.core.alerts import Alert, alert_id
from monitor.core.durations import PositiveInt, Seconds, us
from monitor.core.events import Event
from monitor.core.labels import Label
from monitor.core.scored import ScoredRows
from monitor.core.text import short_card
from monitor.scoring.detectors.base import DetectorSettings, Found, Hooks, Ordered, Shared, Stage
from monitor.scoring.features import FEATURE_VERSION, FEATURES, FeatureState
from monitor.scoring.incident import Incident
from monitor.scoring.model import Model, ModelSlot
from monitor.scoring.reasons import reasons
from monitor.scoring.state import Expiring

NAME: Final = "model_outlier"
_OUTCOMES: Final = ("auth_approved", "auth_declined", "network_error")
_MAX_LISTED: Final = 100  # amounts, scores and terminals listed in an alert's details
_MAX_GIVEN: Final = 1_000_000  # labels remembered to recognise one given again

# A label held until the watermark passes its `known_at`: (known_at, order given, event_id or
# None, alert_id or None, label).
Held = tuple[int, int, str | None, str | None, int]


class Settings(DetectorSettings):
    group_window: Seconds = 3600.0
    max_reasons: Annotated[PositiveInt, Field(le=10)] = 3
    # None: the threshold shipped with the model (its card).
    threshold: Annotated[float, Field(gt=0, le=1)] | None = None

    def wanted(self, shared: Shared) -> bool:
        return shared.model is not None and shared.model.active

    def stages(self) -> frozenset[Stage]:
        return frozenset({"card"})  # the card's history is a feature

    def build(self, shared: Shared, rank: int) -> ModelOutlier:
        assert shared.model is not None
        return ModelOutlier(self, shared, shared.model)


@dataclass(slots=True, kw_only=True)
class Outlier(Incident):
    """A card's attempts above the threshold while they keep coming within the group window."""

    score: float  # the highest score
    threshold: float
    model_version: str
    reasons: list[str] = field(default_factory=list)  # of the highest-scoring attempt
    scores: list[float] = field(default_factory=list)
    amounts_minor: list[int] = field(default_factory=list)
    terminals: list[str] = field(default_factory=list)

    def details(self) -> dict[str, object]:
        return {
            "score": self.score,
            "threshold": self.threshold,
            "reasons": list(self.reasons),
            "scores": list(self.scores),
            "amounts_minor": list(self.amounts_minor),
            "currency": self.currency,
            "terminals": list(self.terminals),
        }

    def to_alert(self) -> Alert:
        update = {"score": self.score, "model_version": self.model_version}
        return Incident.to_alert(self).model_copy(update=update)


class ModelOutlier(Ordered):
    def __init__(self, settings: Settings, shared: Shared, slot: ModelSlot) -> None:
        self.settings = settings
        self.window = us(settings.group_window)
        self.max_evidence = shared.max_evidence
        self.features = FeatureState(shared.cap)
        self._held: list[tuple[int, str, Event]] = []
        self._open: Expiring[Outlier] = Expiring(self.window, shared.cap)
        self._model = slot
        self.scored = 0
        self._labels: list[Held] = []
        self._given: dict[tuple[str | None, str | None, int, int | None], None] = {}
        self._evidence = shared.evidence
        self.label_counts = dict.fromkeys(
            ("applied", "unknown_event", "unknown_alert", "no_known_at"), 0
        )

    def attach(self, slot: ModelSlot) -> None:
        """Use `slot` (after a snapshot load: the model is not part of the state)."""
        self._model = slot

    def hooks(self) -> Hooks:
        return Hooks(
            on_event={"auth_request": self.hold},
            on_attempt={kind: self.hold_outcome for kind in _OUTCOMES},
        )

    def hold(self, ev: Event) -> Found:
        self._held.append((ev.t, ev.event_id, ev))
        return None

    def hold_outcome(self, ev: Event, _attempt: object) -> Found:
        self._held.append((ev.t, ev.event_id, ev))
        return None

    def learn(self, labels: Iterable[Label]) -> None:
        """Hold `labels` until the watermark passes their `known_at` (a label given again with
        the same verdict and time changes nothing)."""
        given, held = self._given, self._labels
        for label in labels:
            known = label.known_at_us
            key = (label.event_id, label.alert_id, label.label, known)
            if key in given:
                continue
            if len(given) >= _MAX_GIVEN:
                del given[next(iter(given))]
            given[key] = None
            if known is None:
                self.label_counts["no_known_at"] += 1
                continue
            held.append((known, len(given), label.event_id, label.alert_id, label.label))

    def _take_labels(self, watermark: int, *, inclusive: bool) -> list[Held]:
        labels = self._labels
        if not labels:
            return []
        labels.sort()
        end = bisect_left(labels, (watermark + 1,) if inclusive else (watermark,))
        taken = labels[:end]
        del labels[:end]
        return taken

    def _apply(self, held: Held) -> None:
        """A label's verdict joins the features (at its `known_at`, in event-time order)."""
        known, _, event_id, alert_id, verdict = held
        label, counts = self.features.label, self.label_counts
        if event_id is not None:
            counts["applied" if label(event_id, verdict == 1, known) else "unknown_event"] += 1
            return
        evidence = self._evidence.get(alert_id or "")
        if evidence is None:
            counts["unknown_alert"] += 1
            return
        applied = [label(e, verdict == 1, known) for e in evidence]
        counts["applied" if any(applied) else "unknown_event"] += 1

    def release(self, watermark: int, *, inclusive: bool) -> Iterator[Outlier]:
        labels = self._take_labels(watermark, inclusive=inclusive)
        held = self._held
        if not held:
            for label in labels:
                self._apply(label)
            return
        held.sort()
        end = bisect_left(held, (watermark + 1,) if inclusive else (watermark,))
        released = held[:end]
        del held[:end]
        request, outcome = self.features.request, self.features.outcome
        rows: list[list[float]] = []
        requests: list[Event] = []
        # Labels go in at their `known_at`, before the events of that time or later.
        pending = iter(labels)
        next_label = next(pending, None)
        for t, _id, ev in released:
            while next_label is not None and next_label[0] <= t:
                self._apply(next_label)
                next_label = next(pending, None)
            if ev.kind == "auth_request":
                rows.append(request(ev))
                requests.append(ev)
            else:
                outcome(ev)
        while next_label is not None:
            self._apply(next_label)
            next_label = next(pending, None)
        if rows:
            width = len(rows[0])
            flat = np.fromiter(chain.from_iterable(rows), np.float32, count=len(rows) * width)
            yield from self._score(requests, flat.reshape(len(rows), width))

    def _score(self, requests: list[Event], x: npt.NDArray[np.float32]) -> Iterator[Outlier]:
        slot = self._model
        self.scored += len(requests)
        live, shadow = slot.live, slot.shadow
        started = slot.timer()
        scores, unsupervised = (None, None) if live is None else live.scores(x)
        shadow_scores = None if shadow is None else shadow.score(x)
        if live is not None or shadow is not None:
            slot.tally.seconds.append(slot.timer() - started)
        if slot.keep_rows:
            slot.rows.append(
                _rows(
                    requests,
                    x,
                    live=live,
                    scores=scores,
                    unsupervised=unsupervised,
                    shadow=shadow,
                    shadow_scores=shadow_scores,
                )
            )
        if shadow_scores is not None:
            slot.tally.shadow_scores.append(shadow_scores)
        if live is None or scores is None:
            return
        slot.tally.scores.append(scores)
        if slot.drift is not None:
            slot.drift.add(requests[-1].t, x, scores)
            if slot.drift.due(requests[-1].t):
                slot.tally.psi = slot.drift.psi()
        threshold = live.threshold if self.settings.threshold is None else self.settings.threshold
        for i in np.flatnonzero(scores > threshold):
            yield self._outlier(requests[int(i)], float(scores[i]), x[i], live, threshold)

    def _outlier(
        self, ev: Event, score: float, row: npt.NDArray[np.float32], model: Model, threshold: float
    ) -> Outlier:
        incident = self._open.get(ev.card_id)
        if incident is None or ev.t - incident.last_seen > self.window:
            incident = Outlier(
                alert_id=alert_id(NAME, ev.card_id, ev.event_id),
                detector=NAME,
                severity=self.settings.severity,
                terminal_id=ev.terminal_id,
                merchant_id=ev.merchant_id,
                card_id=ev.card_id,
                first_seen=ev.t,
                last_seen=ev.t,
                max_evidence=self.max_evidence,
                count=0,
                currency=ev.currency,
                score=score,
                threshold=threshold,
                model_version=model.version,
            )
            self._open.put(ev.card_id, ev.t, incident)
        else:
            self._open.touch(ev.card_id, ev.t)
        incident.count += 1
        incident.add_evidence(ev.t, ev.event_id)
        if len(incident.scores) < _MAX_LISTED:
            incident.scores.append(round(score, 6))
            incident.amounts_minor.append(ev.amount_minor)
        if ev.terminal_id not in incident.terminals and len(incident.terminals) < _MAX_LISTED:
            incident.terminals.append(ev.terminal_id)
        if score >= incident.score or not incident.reasons:
            incident.score = score
            incident.model_version = model.version
            incident.reasons = reasons(row, model.card, ev.currency, self.settings.max_reasons)
        attempts = "1 attempt" if incident.count == 1 else f"{incident.count} attempts"
        incident.summary = (
            f"Card {short_card(ev.card_id)}: {attempts} unlike its usual behaviour (anomaly score"
            f" {incident.score:.2f}, threshold {threshold:.2f}): " + "; ".join(incident.reasons)
        )
        return incident

    def advance(self, watermark: int) -> None:
        return None

    def sizes(self) -> dict[str, int]:
        return {
            "held_back": len(self._held),
            "feature_cards": len(self.features.cards),
            "feature_terminals": len(self.features.terminals),
            "feature_merchants": len(self.features.merchants),
            "label_purchases": len(self.features.purchases),
            "labels_held": len(self._labels),
        }

    def tallies(self) -> dict[str, int]:
        counts = {f"labels_{outcome}": n for outcome, n in self.label_counts.items()}
        return {"model_scored": self.scored, **counts}

    def sweep(self, watermark: int) -> None:
        self.features.expire(watermark)
        self._open.expire(watermark)


def _rows(
    requests: list[Event],
    x: npt.NDArray[np.float32],
    *,
    live: Model | None,
    scores: npt.NDArray[np.float64] | None,
    unsupervised: npt.NDArray[np.float64] | None,
    shadow: Model | None,
    shadow_scores: npt.NDArray[np.float64] | None,
) -> ScoredRows:
    return ScoredRows(
        event_id=[ev.event_id for ev in requests],
        event_time_us=np.array([ev.t for ev in requests], dtype=np.int64),
        card_id=[ev.card_id for ev in requests],
        terminal_id=[ev.terminal_id for ev in requests],
        merchant_id=[ev.merchant_id for ev in requests],
        features=x,
        feature_names=FEATURES,
        feature_version=FEATURE_VERSION,
        score=scores,
        model_version=None if live is None else live.version,
        shadow_score=shadow_scores,
        shadow_version=None if shadow is None else shadow.version,
        unsupervised_score=unsupervised,
    )
