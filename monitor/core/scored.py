"""Scored attempts: the rows the anomaly model saw, as plain arrays the edges may carry.

One `ScoredRows` holds the `auth_request`s the model scored in one batch (or a whole replay), in
the order it scored them: their ids and keys, their feature vectors (one column per name of
`feature_names`, the versioned list of `monitor.scoring.features`) and their scores. The feature
log (`monitor.streaming.featurelog`) and the offline code (`models/`) take it from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class ScoredRows:
    event_id: list[str]
    event_time_us: npt.NDArray[np.int64]
    card_id: list[str]
    terminal_id: list[str]
    merchant_id: list[str]
    features: npt.NDArray[np.float32]  # shape (rows, len(feature_names))
    feature_names: tuple[str, ...]
    feature_version: str
    score: npt.NDArray[np.float64] | None = None  # the score that alerts; None: no model
    model_version: str | None = None
    shadow_score: npt.NDArray[np.float64] | None = None
    shadow_version: str | None = None
    # The forests' score: the same as `score` unless the model has a supervised stage.
    unsupervised_score: npt.NDArray[np.float64] | None = None

    def __len__(self) -> int:
        return len(self.event_id)
