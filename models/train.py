"""`posmon train`: replay events through the serving features, fit the forests, write the artifact.

The model is one scikit-learn `IsolationForest` per feature group (`GROUPS`), their scores
averaged: forests on chosen groups find what one forest over every feature dilutes (docs/model.md
has the measurement). The threshold is the score above which `alert_rate` of the training
attempts lie (the alert budget). The artifact is arrays and JSON only (`monitor.scoring.model`):
the forests as flat arrays, checked here against scikit-learn's own `score_samples` before they
are written, and a model card.
"""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import sklearn
from sklearn.ensemble import IsolationForest
from sklearn.metrics import average_precision_score

from models.boosting import SupervisedError, fit_supervised
from models.export import forest_from_sklearn, npz_bytes
from models.rows import take
from monitor.core.scored import ScoredRows
from monitor.scoring.features import FEATURE_VERSION, FEATURES
from monitor.scoring.forest import Forest
from monitor.scoring.model import (
    ARRAYS,
    CARD,
    SCORE,
    STAGE_INPUTS,
    SUPERVISED_PREFIX,
    Bins,
    Member,
    Model,
    ModelCard,
    Parity,
    Supervised,
    TrainingData,
    forest_prefix,
    model_from,
    stage_score,
)

# The feature groups, one forest each, their scores averaged. Chosen by measurement on
# simulated traffic not used for training (docs/model.md, "Choosing the features"): one forest
# over where and when the card pays found the anomalies best; forests over every feature, or
# adding amount or velocity forests to it, scored lower (their noise dilutes its signal).
GROUPS: Final[Mapping[str, tuple[str, ...]]] = {
    "places_and_time": (
        "card_terminals_1h",
        "card_terminals_24h",
        "card_merchants_1h",
        "card_merchants_24h",
        "first_at_terminal",
        "first_at_mcc",
        "hour_sin",
        "hour_cos",
    ),
}
TREES: Final = 50
MAX_SAMPLES: Final = 256
PARITY_TOLERANCE: Final = 1e-9
_PARITY_ROWS: Final = 8
_DRIFT_BINS: Final = 10


class TrainingError(ValueError):
    """Training cannot produce a model (too few attempts, a parity failure)."""


@dataclass(frozen=True, slots=True)
class Trained:
    model: Model
    card_json: bytes
    arrays: bytes

    def judged(self, figures: Mapping[str, float | int | None]) -> Trained:
        """The same model with `figures` added to its card's evaluation."""
        card = self.model.card
        card = card.model_copy(update={"evaluation": {**card.evaluation, **figures}})
        card_json = (card.model_dump_json(indent=1) + "\n").encode()
        return Trained(model_from(card, self.arrays), card_json, self.arrays)

    def write(self, out: Path) -> None:
        """Write the artifact into `out` (created): each file to a temporary name, then renamed,
        the arrays first (a running monitor reading the directory sees the old or new card)."""
        out.mkdir(parents=True, exist_ok=True)
        for name, data in ((ARRAYS, self.arrays), (CARD, self.card_json)):
            temporary = out / f".{name}.tmp"
            temporary.write_bytes(data)
            temporary.replace(out / name)


def train(
    rows: ScoredRows,
    *,
    files: Sequence[str],
    events: int,
    alert_rate: float = 0.001,
    seed: int = 0,
    groups: Mapping[str, Sequence[str]] = GROUPS,
    trees: int = TREES,
    max_samples: int = MAX_SAMPLES,
    labels: npt.NDArray[np.integer] | None = None,
    kinds: Sequence[str | None] | None = None,
    label_notes: Mapping[str, int | float | str | None] | None = None,
) -> Trained:
    """Fit the model on `rows` (the features of replayed attempts). With `labels` (0 or 1 per
    row, as known when the model is fitted), a supervised stage too, over the features and the
    forests' score: its calibrated probability becomes the score (`kinds`, the anomaly kind of
    each row labelled 1, weigh the kinds: `kind_weights`; `label_notes` describe the labels on
    the card: where they came from, the split)."""
    x = rows.features
    if len(rows) < max_samples:
        raise TrainingError(f"{len(rows)} attempts to train on; at least {max_samples} are needed")
    if not 0 < alert_rate < 1:
        raise TrainingError("the alert rate must be between 0 and 1")
    index = {name: i for i, name in enumerate(FEATURES)}
    forests: list[Forest] = []
    members: list[Member] = []
    for g, (name, features) in enumerate(groups.items()):
        columns = [index[f] for f in features]
        fitted = IsolationForest(
            n_estimators=trees, max_samples=max_samples, random_state=seed + g
        ).fit(x[:, columns])
        forest = forest_from_sklearn(fitted, columns)
        check = x[_sample(len(x), 2000, seed)]
        worst = float(np.max(np.abs(forest.score(check) + fitted.score_samples(check[:, columns]))))
        if not worst < PARITY_TOLERANCE:
            raise TrainingError(f"forest {name!r} scores {worst:.3g} away from scikit-learn")
        forests.append(forest)
        members.append(
            Member(name=name, features=list(features), trees=trees, max_samples=max_samples)
        )
    arrays: dict[str, npt.NDArray[np.generic]] = {}
    for i, forest in enumerate(forests):
        arrays.update(forest.arrays(forest_prefix(i)))
    forest_scores = sum((f.score(x) for f in forests), np.zeros(len(x))) / len(forests)
    scores, supervised = forest_scores, None
    if labels is not None:
        inputs = np.column_stack((x.astype(np.float64), forest_scores))
        try:
            stage, fitted = fit_supervised(
                inputs,
                labels,
                seed=seed,
                calibrate=True,
                weights=None if kinds is None else kind_weights(labels, kinds),
            )
        except SupervisedError as exc:
            raise TrainingError(f"the supervised stage: {exc}") from exc
        arrays.update(stage.arrays(SUPERVISED_PREFIX))
        scores = stage_score(stage, inputs)
        supervised = Supervised(
            features=list(STAGE_INPUTS),
            calibrated=stage.calibration is not None,
            labels={**fitted.as_dict(), **(label_notes or {})},
        )
        threshold = float(np.quantile(scores, 1.0 - alert_rate, method="higher"))
        rule = (
            f"the calibrated probability above which {alert_rate:g} of the training attempts"
            " lie (the alert budget)"
        )
    else:
        threshold = float(np.quantile(scores, 1.0 - alert_rate, method="higher"))
        rule = (
            f"the {100 * (1 - alert_rate):g}th percentile of the training attempts' scores:"
            f" an alert budget of {alert_rate:g} of attempts"
        )
    array_bytes = npz_bytes(arrays)
    sha = hashlib.sha256(array_bytes).hexdigest()
    parity_rows = np.unique(
        np.concatenate([_sample(len(x), _PARITY_ROWS // 2, seed), np.argsort(scores)[-4:]])
    )
    # The version names the arrays and the features they read (the same forests over another
    # feature version are another model).
    named = hashlib.sha256(f"{sha} {FEATURE_VERSION}".encode()).hexdigest()
    card = ModelCard(
        version=f"{'supervised' if supervised else 'iforest'}-{named[:12]}",
        feature_version=FEATURE_VERSION,
        features=list(FEATURES),
        members=members,
        threshold=threshold,
        threshold_rule=rule,
        alert_rate=alert_rate,
        libraries={
            "scikit-learn": sklearn.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        training=TrainingData(
            files=list(files),
            first_event=_rfc3339(int(rows.event_time_us.min())),
            last_event=_rfc3339(int(rows.event_time_us.max())),
            events=events,
            rows=len(rows),
            rows_sha256=hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest(),
            seed=seed,
        ),
        evaluation={
            "training_alert_rate": float(np.mean(scores > threshold)),
            "score_p50": float(np.quantile(scores, 0.5)),
            "score_p99": float(np.quantile(scores, 0.99)),
            "score_p999": float(np.quantile(scores, 0.999)),
        },
        quantiles={
            name: [float(q) for q in np.quantile(x[:, i], np.linspace(0, 1, 101))]
            for i, name in enumerate(FEATURES)
        },
        hour_shares=_hour_shares(rows.event_time_us),
        drift={
            **{name: _bins(x[:, i]) for i, name in enumerate(FEATURES)},
            SCORE: _bins(scores),
        },
        parity=[
            Parity(
                features=[float(v) for v in x[i]],
                score=float(scores[i]),
                unsupervised=None if supervised is None else float(forest_scores[i]),
            )
            for i in parity_rows
        ],
        arrays_sha256=sha,
        supervised=supervised,
    )
    card_json = (card.model_dump_json(indent=1) + "\n").encode()
    return Trained(model_from(card, array_bytes), card_json, array_bytes)


def kind_weights(
    labels: npt.NDArray[np.integer], kinds: Sequence[str | None]
) -> npt.NDArray[np.float64]:
    """Row weights that keep one frequent anomaly kind from drowning the rare ones: the rows
    labelled 1 of kind k weigh sqrt((1 / kinds) / share of k among the rows labelled 1), then
    scaled so the rows labelled 1 weigh their number together (the classes keep their balance);
    rows labelled 0 weigh 1. A row labelled 1 without a kind is a kind of its own ("")."""
    weights = np.ones(len(labels))
    positive = np.flatnonzero(np.asarray(labels) == 1)
    if len(positive) == 0:
        return weights
    of = np.array([kinds[i] or "" for i in positive.tolist()])
    names, counts = np.unique(of, return_counts=True)
    share = dict(zip(names.tolist(), (counts / len(positive)).tolist(), strict=True))
    target = 1.0 / len(names)
    weights[positive] = [np.sqrt(target / share[k]) for k in of.tolist()]
    weights[positive] *= len(positive) / weights[positive].sum()
    return weights


def _sample(n: int, k: int, seed: int) -> npt.NDArray[np.intp]:
    return np.random.default_rng(seed).choice(n, size=min(n, k), replace=False)


def _bins(values: npt.NDArray[np.floating]) -> Bins:
    """Decile edges (repeated ones merged) and the training shares per bin."""
    v = values.astype(np.float64)
    edges = np.unique(np.quantile(v, np.linspace(0, 1, _DRIFT_BINS + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, v), minlength=len(edges) + 1)
    return Bins(edges=[float(e) for e in edges], shares=[float(c) for c in counts / len(v)])


def _hour_shares(times_us: npt.NDArray[np.int64]) -> list[float]:
    hours = (times_us // 3_600_000_000) % 24
    counts = np.bincount(hours, minlength=24)
    return [float(c) for c in counts / max(1, counts.sum())]


def _rfc3339(t_us: int) -> str:
    return datetime.fromtimestamp(t_us / 1e6, tz=UTC).isoformat().replace("+00:00", "Z")


DAY_US: Final = 86_400_000_000


def held_back_split(
    rows: ScoredRows, *, held_back_days: float, gap_days: float
) -> tuple[ScoredRows, ScoredRows]:
    """The time-respecting split: the rows to fit on (before the gap), and the held-back rows
    (the last `held_back_days` of event time) the models are judged on. The gap, as long as the
    labels' delay, keeps the fit from rows whose labels could not be known yet."""
    if len(rows) == 0:
        raise TrainingError("no attempts to split")
    end = int(rows.event_time_us.max())
    judged_from = end - round(held_back_days * DAY_US)
    fit_until = judged_from - round(gap_days * DAY_US)
    return (
        take(rows, rows.event_time_us < fit_until),
        take(rows, rows.event_time_us >= judged_from),
    )


@dataclass(frozen=True, slots=True)
class Judgement:
    """A challenger against the champion on the same held-back rows (average precision; None
    when no row is labelled 1)."""

    challenger: float | None
    champion: float | None

    @property
    def worse(self) -> bool:
        """Whether the challenger must not be published (unless forced): worse than the
        champion, or not judged at all."""
        if self.challenger is None or self.champion is None:
            return True
        return self.challenger < self.champion


def judge(challenger: Model, champion: Model, rows: ScoredRows, positive: set[str]) -> Judgement:
    """Both models' average precision on `rows` (the attempts in `positive` labelled 1). Raises
    TrainingError when the champion reads other features (it cannot score these rows)."""
    if champion.card.feature_version != rows.feature_version:
        raise TrainingError(
            f"the champion {champion.version} reads features {champion.card.feature_version!r},"
            f" these rows are {rows.feature_version!r}: they cannot be compared"
        )
    return Judgement(
        average_precision(challenger, rows, positive), average_precision(champion, rows, positive)
    )


def average_precision_by_kind(
    model: Model, rows: ScoredRows, kinds: Mapping[str, str]
) -> dict[str, float]:
    """Per anomaly kind (`kinds`: the kind of each event_id labelled 1), the model's average
    precision of that kind's rows against the rows not labelled 1 (other kinds left out)."""
    scores = model.score(rows.features)
    of = np.array([kinds.get(e, "") for e in rows.event_id])
    negative = of == ""
    figures: dict[str, float] = {}
    for kind in sorted(set(of.tolist()) - {""}):
        chosen = negative | (of == kind)
        figures[kind] = float(average_precision_score(of[chosen] == kind, scores[chosen]))
    return figures


def average_precision(model: Model, rows: ScoredRows, positive: set[str]) -> float | None:
    """The model's average precision on `rows`, the attempts in `positive` labelled 1; None
    when no row is."""
    y = np.fromiter((e in positive for e in rows.event_id), bool, count=len(rows))
    if not y.any():
        return None
    return float(average_precision_score(y, model.score(rows.features)))
