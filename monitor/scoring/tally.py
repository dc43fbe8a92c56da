"""What the anomaly model did, for the metrics: drained once per batch by the scoring metrics."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

# How a reload ended (`posmon_model_reload_total{outcome}`), every one exported from the start.
RELOAD_OUTCOMES = ("loaded", "refused_mismatch", "refused_parity", "refused_unreadable")

# What became of a label (`posmon_labels_total{outcome}`), every one exported from the start:
# used by the features, about a purchase or an alert the scorer does not hold (any more), without
# a `known_at` (never used), not a label at all (refused by the source), or no model to use it.
LABEL_OUTCOMES = ("applied", "unknown_event", "unknown_alert", "no_known_at", "invalid", "unused")

Scores = npt.NDArray[np.float64]


@dataclass(slots=True)
class ModelTally:
    """The live and shadow model's versions, the scores and scoring times since the metrics last
    drained them, running reload outcomes and the drift of each feature (and of the score)."""

    version: str | None = None
    shadow_version: str | None = None
    scores: list[Scores] = field(default_factory=list)
    shadow_scores: list[Scores] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    reloads: Counter[str] = field(default_factory=Counter)
    psi: dict[str, float] = field(default_factory=dict)
    labels: Counter[str] = field(default_factory=Counter)  # running, by LABEL_OUTCOMES

    def drain(self) -> tuple[list[Scores], list[Scores], list[float]]:
        """The scores, shadow scores and scoring seconds since the last drain (and forget them)."""
        drained = (self.scores, self.shadow_scores, self.seconds)
        self.scores, self.shadow_scores, self.seconds = [], [], []
        return drained
