"""The anomaly model as the scorer holds it: its artifact, checked on load, and the slot that
holds the live and shadow models (swapped whole between batches by a reload).

An artifact is a directory of two files (docs/model.md, "The artifact"):

- `forest.npz`: the fitted forests as plain numeric arrays (`monitor.scoring.forest`), read with
  `allow_pickle=False`: loading runs no code;
- `card.json`: the model card (`ModelCard`): feature names and version, library versions,
  training data, threshold and how it was set, evaluation figures, reference quantiles for the
  reasons and the drift, parity vectors, and the SHA-256 of `forest.npz`.

`load_model` refuses (`ModelError`, with the outcome counted by `posmon_model_reload_total`) an
artifact it cannot read, whose arrays were altered, whose features are not this code's, or
whose parity vectors do not score as the card says.
"""

from __future__ import annotations

import hashlib
import io
import math
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Final, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from monitor.core.scored import ScoredRows
from monitor.scoring.boosting import Boosted
from monitor.scoring.features import FEATURE_VERSION, FEATURES
from monitor.scoring.forest import Forest
from monitor.scoring.tally import ModelTally

CARD: Final = "card.json"
ARRAYS: Final = "forest.npz"
FORMAT: Final = "posmon-model"
PARITY_TOLERANCE: Final = 1e-9
_MAX_CARD_BYTES: Final = 16 * 1024 * 1024
_MAX_ARRAY_BYTES: Final = 256 * 1024 * 1024
SCORE: Final = "score"  # the drift series of the score itself
# The supervised stage reads the features and, after them, the forests' score under this name.
UNSUPERVISED: Final = "unsupervised_score"
STAGE_INPUTS: Final = (*FEATURES, UNSUPERVISED)
SUPERVISED_PREFIX: Final = "s_"

Outcome = Literal["refused_mismatch", "refused_parity", "refused_unreadable"]


class ModelError(ValueError):
    """An artifact that cannot be used; `outcome` is the reload outcome it counts as."""

    def __init__(self, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.outcome: Outcome = outcome


class _Card(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Member(_Card):
    """One forest of the model: the features it reads and how it was fitted."""

    name: str
    features: list[str]
    trees: Annotated[int, Field(gt=0)]
    max_samples: Annotated[int, Field(gt=0)]


class Bins(_Card):
    """A feature's (or the score's) drift bins, frozen at training: a value falls in bin i when
    `edges[i-1] < value <= edges[i]` (the first bin takes everything up to `edges[0]`, the last
    everything above `edges[-1]`); `shares` are the training rows' shares per bin."""

    edges: list[float]
    shares: list[Annotated[float, Field(ge=0, le=1)]]


class Parity(_Card):
    """A feature vector and the score the model gave it when it was written (and the forests'
    score, when a supervised stage gives the score)."""

    features: list[float]
    score: float
    unsupervised: float | None = None


class Supervised(_Card):
    """The supervised stage: a gradient-boosted classifier over `features` (names of
    `STAGE_INPUTS`: the features and the forests' score), trained on labels; its calibrated
    probability is the model's score."""

    kind: Literal["hist_gradient_boosting"] = "hist_gradient_boosting"
    features: list[str]
    calibrated: bool
    labels: dict[str, int | float | str | None]  # how it was fitted: rows, positives, split


class TrainingData(_Card):
    files: list[str]  # names only, not paths
    first_event: str  # RFC 3339
    last_event: str
    events: int
    rows: int  # auth_requests scored
    rows_sha256: str  # of the feature matrix (float32, C order)
    seed: int


class ModelCard(_Card):
    """What the model is, how it was made and how to check it (validated on load)."""

    format: Literal["posmon-model"] = FORMAT
    format_version: Literal[1] = 1
    version: str
    feature_version: str
    features: list[str]
    members: list[Member]
    combine: Literal["mean"] = "mean"
    threshold: Annotated[float, Field(gt=0, le=1)]  # scores lie in (0, 1]
    threshold_rule: str
    alert_rate: float
    libraries: dict[str, str]
    training: TrainingData
    evaluation: dict[str, float | int | None] = Field(default_factory=dict)
    quantiles: dict[str, list[float]]  # 101 points (0 %, 1 %, ... 100 %) per feature
    hour_shares: list[float] = Field(default_factory=list)  # training attempts per UTC hour
    drift: dict[str, Bins]  # per feature and for "score"
    parity: list[Parity]
    arrays_sha256: str
    supervised: Supervised | None = None  # None: the forests' score is the score


@dataclass(frozen=True, slots=True)
class Model:
    """A loaded, checked model: its forests, combined by their mean score."""

    card: ModelCard
    forests: tuple[Forest, ...]
    stage: Boosted | None = None  # the supervised stage, over `STAGE_INPUTS`

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def threshold(self) -> float:
        return self.card.threshold

    def unsupervised(self, x: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        """The forests' mean score of each row of `x` (rows x `FEATURES`), higher = more
        anomalous."""
        total = self.forests[0].score(x)
        for forest in self.forests[1:]:
            total = total + forest.score(x)
        combined: npt.NDArray[np.float64] = total / len(self.forests)
        return combined

    def scores(
        self, x: npt.NDArray[np.floating]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """The score that alerts and the forests' score, of each row of `x`: the same array
        without a supervised stage; with one, its calibrated probability of fraud."""
        forests = self.unsupervised(x)
        if self.stage is None:
            return forests, forests
        return stage_score(self.stage, np.column_stack((x.astype(np.float64), forests))), forests

    def score(self, x: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        """The score that alerts, of each row of `x` (rows x `FEATURES`)."""
        return self.scores(x)[0]


TIE_BREAK: Final = 1e-6


def stage_score(stage: Boosted, inputs: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The supervised stage's score of `inputs` (rows x `STAGE_INPUTS`): its calibrated
    probability, the plateaus of the isotonic map ordered by the uncalibrated probability (moved
    by at most `TIE_BREAK`, staying in [0, 1]): a plateau would otherwise tie thousands of
    attempts, losing the ranking the alerts and the alert budget need."""
    probability = stage.probability(inputs)
    if stage.calibration is None:
        return probability
    calibrated = stage.calibration.apply(probability)
    tie_broken: npt.NDArray[np.float64] = calibrated * (1 - TIE_BREAK) + TIE_BREAK * probability
    return tie_broken


def forest_prefix(i: int) -> str:
    return f"m{i}_"


def load_model(directory: Path) -> Model:
    """The model in `directory`, checked; raises `ModelError`."""
    card_path, arrays_path = directory / CARD, directory / ARRAYS
    try:
        card_bytes = _read(card_path, _MAX_CARD_BYTES)
        array_bytes = _read(arrays_path, _MAX_ARRAY_BYTES)
    except OSError as exc:
        raise ModelError("refused_unreadable", f"cannot read the model: {exc}") from exc
    try:
        card = ModelCard.model_validate_json(card_bytes)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ModelError(
            "refused_unreadable", f"{card_path.name}: {where}: {first['msg']}"
        ) from None
    return model_from(card, array_bytes)


def model_from(card: ModelCard, array_bytes: bytes) -> Model:
    """The model a card and its arrays' bytes make, checked as `load_model` does."""
    if card.feature_version != FEATURE_VERSION or tuple(card.features) != FEATURES:
        raise ModelError(
            "refused_mismatch",
            f"the model was trained on features {card.feature_version!r} and this posmon computes"
            f" {FEATURE_VERSION!r} (names differ)"
            if card.feature_version == FEATURE_VERSION
            else f"the model was trained on features {card.feature_version!r} and this posmon"
            f" computes {FEATURE_VERSION!r}",
        )
    if hashlib.sha256(array_bytes).hexdigest() != card.arrays_sha256:
        raise ModelError("refused_unreadable", f"{ARRAYS} does not match the card's SHA-256")
    try:
        with zipfile.ZipFile(io.BytesIO(array_bytes)) as archive:  # no archive bomb
            if sum(member.file_size for member in archive.infolist()) > _MAX_ARRAY_BYTES:
                raise ModelError("refused_unreadable", f"{ARRAYS} unpacks to too many bytes")
        with np.load(io.BytesIO(array_bytes), allow_pickle=False) as arrays:
            stored = {name: arrays[name] for name in arrays.files}
        forests = tuple(
            Forest.from_arrays(stored, forest_prefix(i)) for i in range(len(card.members))
        )
        stage = None
        if card.supervised is not None:
            stage = Boosted.from_arrays(stored, SUPERVISED_PREFIX)
            if [STAGE_INPUTS[c] for c in stage.columns if c < len(STAGE_INPUTS)] != list(
                card.supervised.features
            ) or stage.columns.max() >= len(STAGE_INPUTS):
                raise ModelError(
                    "refused_unreadable",
                    f"{ARRAYS}: the supervised stage's columns differ from the card's features",
                )
    except ModelError:
        raise
    except Exception as exc:  # bad bytes raise many kinds (zipfile, zlib, numpy): all refused
        raise ModelError("refused_unreadable", f"{ARRAYS}: {exc}") from exc
    if not forests:
        raise ModelError("refused_unreadable", "the model has no forest")
    for forest in forests:
        if forest.columns.min() < 0 or forest.columns.max() >= len(FEATURES):
            raise ModelError("refused_unreadable", f"{ARRAYS}: a column beyond the features")
    check_references(card)
    model = Model(card, forests, stage)
    check_parity(model)
    if not math.isfinite(card.threshold):
        raise ModelError("refused_unreadable", "the threshold is not a finite number")
    return model


def check_references(card: ModelCard) -> None:
    """The card's reference data covers every feature, in the shapes the reasons and the drift
    read (a hand-edited card must be refused at load, not fail the scoring later)."""
    for name in FEATURES:
        if len(card.quantiles.get(name, ())) < 2:
            raise ModelError("refused_unreadable", f"{CARD}: no quantiles of {name}")
    for name in (*FEATURES, SCORE):
        bins = card.drift.get(name)
        if bins is None or len(bins.shares) != len(bins.edges) + 1:
            raise ModelError("refused_unreadable", f"{CARD}: no drift bins of {name}")
    if card.hour_shares and len(card.hour_shares) != 24:
        raise ModelError("refused_unreadable", f"{CARD}: hour_shares are not 24 hours")


def check_parity(model: Model) -> None:
    """The card's parity vectors score as the card says (to `PARITY_TOLERANCE`)."""
    parity = model.card.parity
    if not parity:
        raise ModelError("refused_parity", "the card has no parity vectors")
    if any(len(p.features) != len(FEATURES) for p in parity):
        raise ModelError("refused_parity", "a parity vector of the wrong length")
    x = np.array([p.features for p in parity], dtype=np.float64)
    got, forests = model.scores(x)
    expected = np.array([p.score for p in parity])
    worst = float(np.max(np.abs(got - expected)))
    if model.stage is not None:
        if any(p.unsupervised is None for p in parity):
            raise ModelError("refused_parity", "a parity vector without the forests' score")
        stored = np.array([p.unsupervised for p in parity], dtype=np.float64)
        worst = max(worst, float(np.max(np.abs(forests - stored))))
    if not worst <= PARITY_TOLERANCE:
        raise ModelError(
            "refused_parity", f"parity vectors score {worst:.3g} away from the card's scores"
        )


def _read(path: Path, limit: int) -> bytes:
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(f"{path.name} is larger than {limit} bytes")
    return data


# -- the slot the scorer reads -----------------------------------------------------------------


@dataclass(slots=True)
class ModelSlot:
    """The live model and the optional shadow, swapped whole between batches (`swap`), with
    what the metrics and the feature log take from the scorer.

    `timer` measures the scoring time (the entry layer passes a clock; nothing here reads
    one). With `keep_rows`, each scored batch's rows are kept for `take_rows` (the feature log,
    `posmon train`).
    """

    live: Model | None = None
    shadow: Model | None = None
    tally: ModelTally = field(default_factory=ModelTally)
    timer: Callable[[], float] = field(default=lambda: 0.0)
    keep_rows: bool = False
    rows: list[ScoredRows] = field(default_factory=list)
    drift_window_us: int = 24 * 3_600_000_000
    drift: Drift | None = None

    def __post_init__(self) -> None:
        self.tally.version = None if self.live is None else self.live.version
        self.tally.shadow_version = None if self.shadow is None else self.shadow.version
        if self.live is not None:
            self.drift = Drift(self.live.card, self.drift_window_us)

    def swap(self, live: Model | None = None, shadow: Model | None = None) -> None:
        """Put in a new live model (and shadow, when given); the drift window starts again."""
        if live is not None:
            self.live = live
            self.tally.version = live.version
            self.drift = Drift(live.card, self.drift_window_us)
            self.tally.psi = {}
        if shadow is not None:
            self.shadow = shadow
            self.tally.shadow_version = shadow.version

    @property
    def active(self) -> bool:
        """Whether anything is to be computed: a model, or rows wanted."""
        return self.live is not None or self.shadow is not None or self.keep_rows

    def take_rows(self) -> list[ScoredRows]:
        rows, self.rows = self.rows, []
        return rows


def psi(counts: npt.NDArray[np.float64], shares: Sequence[float]) -> float:
    """The population stability index of observed bin `counts` against reference `shares`;
    empty bins count as 1e-4 of the rows (the usual floor)."""
    total = counts.sum()
    if total <= 0:
        return 0.0
    actual = np.maximum(counts / total, 1e-4)
    expected = np.maximum(np.asarray(shares, dtype=np.float64), 1e-4)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


class Drift:
    """Each feature's (and the score's) distribution over a sliding event-time window, binned
    by the live model's frozen edges, and its population stability index against the card.

    Counts are kept per `slice_us` of event time, and their running total over the slices of
    the last `window_us` (the window ends at the newest slice). A batch is binned in one numpy
    step for every feature (the edges padded with +inf to one width). Kept beside the model,
    not in the scorer's state: a restart starts a new window.
    """

    __slots__ = (
        "_columns",
        "_edges",
        "_names",
        "_offsets",
        "_psi_at",
        "_shares",
        "_slices",
        "_total",
        "psi_every_us",
        "slice_us",
        "window_us",
    )

    def __init__(self, card: ModelCard, window_us: int, slice_us: int = 3_600_000_000) -> None:
        self.window_us, self.slice_us = window_us, max(1, min(slice_us, window_us))
        # A calendar feature is compared only over a window that holds its whole cycle: over a
        # day, `weekend` is all 0 or all 1 whatever the traffic, far from the training's shares.
        cycles = {"weekend": 7 * 86_400_000_000, "hour_sin": 86_400_000_000}
        cycles["hour_cos"] = cycles["hour_sin"]
        self._names = (*(f for f in FEATURES if window_us >= cycles.get(f, 0)), SCORE)
        bins = [card.drift[name] for name in self._names]
        self._columns = [FEATURES.index(name) for name in self._names[:-1]]
        width = max(len(b.edges) for b in bins)
        self._edges = np.full((len(bins), width), np.inf)
        self._shares = np.zeros((len(bins), width + 1))  # bins a feature lacks: 0 on both sides
        for i, b in enumerate(bins):
            self._edges[i, : len(b.edges)] = b.edges
            self._shares[i, : len(b.shares)] = b.shares
        self._offsets = np.arange(len(bins)) * (width + 1)
        self._slices: dict[int, npt.NDArray[np.int64]] = {}
        self._total = np.zeros((len(bins), width + 1), dtype=np.int64)
        self.psi_every_us = 60_000_000  # the gauges follow a minute of event time
        self._psi_at = -(2**62)

    def due(self, t_us: int) -> bool:
        """Whether the index is to be computed again (once per `psi_every_us` of event time)."""
        if t_us - self._psi_at < self.psi_every_us:
            return False
        self._psi_at = t_us
        return True

    def add(self, t_us: int, x: npt.NDArray[np.float32], scores: npt.NDArray[np.float64]) -> None:
        """Count a scored batch (`x`: rows x features) in the slice of `t_us`."""
        key = t_us // self.slice_us
        counts = self._slices.get(key)
        if counts is None:
            counts = self._slices[key] = np.zeros_like(self._total)
            oldest = key - self.window_us // self.slice_us
            for old in [k for k in self._slices if k <= oldest]:
                self._total -= self._slices.pop(old)
        values = np.column_stack((x[:, self._columns].astype(np.float64), scores))
        # A value's bin is the number of edges below it (`edges[i-1] < v <= edges[i]`).
        where = (values[:, :, None] > self._edges[None, :, :]).sum(axis=2) + self._offsets
        added = np.bincount(where.ravel(), minlength=self._total.size).reshape(self._total.shape)
        counts += added
        self._total += added

    def psi(self) -> dict[str, float]:
        rows = self._total.sum(axis=1, keepdims=True)
        if not rows.any():
            return {}
        actual = np.maximum(self._total / np.maximum(rows, 1), 1e-4)
        expected = np.maximum(self._shares, 1e-4)
        index = np.sum((actual - expected) * np.log(actual / expected), axis=1)
        return {name: float(v) for name, v in zip(self._names, index, strict=True)}
