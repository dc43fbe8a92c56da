"""The supervised stage: a scikit-learn `HistGradientBoostingClassifier` fitted on labelled
attempts, optionally calibrated, and laid out as the flat arrays posmon scores with
(`monitor.scoring.boosting.Boosted`).

`fit_supervised` fits the classifier with small, deterministic settings (no early stopping: the
same rows and seed give the same trees), fits an isotonic calibration on a held-out share of the
rows when asked, and checks the arrays against scikit-learn's own `decision_function`,
`predict_proba` and `IsotonicRegression.predict` before returning them. Nothing is pickled: the
result is arrays (`Boosted.arrays`, written with `models.export.npz_bytes`) and plain numbers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import sklearn
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.isotonic import IsotonicRegression

from monitor.scoring.boosting import Boosted

MAX_ITER: Final = 300
MAX_LEAF_NODES: Final = 31
LEARNING_RATE: Final = 0.05
CALIBRATION_SHARE: Final = 0.25  # of each class's rows, held out to fit the calibration
PARITY_TOLERANCE: Final = 1e-9
_PARITY_ROWS: Final = 2000

Ints = npt.NDArray[np.intp]


class SupervisedError(ValueError):
    """The supervised stage cannot be built (labels not binary, a model posmon cannot represent,
    arrays that do not score as scikit-learn does)."""


@dataclass(frozen=True, slots=True)
class Supervised:
    """How the supervised stage was fitted, in plain numbers (for the model card)."""

    rows: int  # rows the classifier was fitted on
    positives: int  # of which labelled 1
    calibration_rows: int  # held out for the calibration (0 without one)
    calibration_positives: int
    calibration_points: int  # points of the isotonic map (0 without one)
    trees: int
    max_leaf_nodes: int
    learning_rate: float
    depth: int  # the deepest leaf
    seed: int
    sklearn: str  # the version that fitted it
    parity_error: float  # the largest difference from scikit-learn on the parity rows

    def as_dict(self) -> dict[str, int | float | str]:
        return asdict(self)


def boosting_from_sklearn(
    fitted: HistGradientBoostingClassifier, columns: Sequence[int]
) -> Boosted:
    """The flat layout of `fitted`, a binary classifier fitted on the feature columns `columns`
    (in that order). Refuses (SupervisedError) what the layout cannot represent: more than two
    classes, categorical features.

    Nodes are renumbered tree by tree, breadth first, so the two children of a node are next to
    each other; a leaf points at itself with an infinite threshold, its NaNs going to itself.
    """
    if len(fitted.classes_) != 2 or fitted.n_trees_per_iteration_ != 1:
        raise SupervisedError(f"a binary classifier expected, got {len(fitted.classes_)} classes")
    if fitted.is_categorical_ is not None and bool(np.any(fitted.is_categorical_)):
        raise SupervisedError(
            "categorical features are not supported: fit with categorical_features=None "
            "on numeric features"
        )
    if len(columns) != fitted.n_features_in_:
        raise SupervisedError(
            f"{len(columns)} columns given for a model of {fitted.n_features_in_} features"
        )
    feature: list[int] = []
    threshold: list[float] = []
    missing_right: list[bool] = []
    children: list[int] = []
    value: list[float] = []
    roots: list[int] = []
    for iteration in fitted._predictors:
        (predictor,) = iteration  # one tree per iteration in a binary classifier
        nodes = predictor.nodes
        if bool(np.any(nodes["is_categorical"][~nodes["is_leaf"].astype(bool)])):
            raise SupervisedError("categorical splits are not supported")
        root = len(feature)
        roots.append(root)
        _grow(feature, threshold, missing_right, children, value)
        queue: deque[tuple[int, int]] = deque([(0, root)])  # (scikit-learn's node, ours)
        while queue:
            index, ours = queue.popleft()
            node = nodes[index]
            if node["is_leaf"]:
                feature[ours], threshold[ours], missing_right[ours] = 0, np.inf, False
                children[ours], value[ours] = ours, float(node["value"])
                continue
            first = len(feature)
            _grow(feature, threshold, missing_right, children, value)
            _grow(feature, threshold, missing_right, children, value)
            feature[ours] = int(node["feature_idx"])
            threshold[ours] = float(node["num_threshold"])
            missing_right[ours] = not bool(node["missing_go_to_left"])
            children[ours] = first
            queue.append((int(node["left"]), first))
            queue.append((int(node["right"]), first + 1))
    baseline = np.asarray(fitted._baseline_prediction, dtype=np.float64).reshape(-1)
    arrays: dict[str, npt.NDArray[np.generic]] = {
        "columns": np.asarray(columns, dtype=np.int32),
        "roots": np.asarray(roots, dtype=np.int32),
        "feature": np.asarray(feature, dtype=np.int32),
        "threshold": np.asarray(threshold, dtype=np.float64),
        "missing_right": np.asarray(missing_right, dtype=np.bool_),
        "children": np.asarray(children, dtype=np.int32),
        "value": np.asarray(value, dtype=np.float64),
        "baseline": baseline,
    }
    return Boosted.from_arrays(arrays, "")


def with_calibration(boosted: Boosted, isotonic: IsotonicRegression) -> Boosted:
    """`boosted` with the isotonic map `isotonic` (fitted on its probabilities, increasing,
    `out_of_bounds="clip"`) as its two arrays."""
    if isotonic.out_of_bounds != "clip" or not isotonic.increasing_:
        raise SupervisedError("an increasing isotonic map clipped at its ends expected")
    arrays = boosted.arrays("")
    arrays["calibration_x"] = np.asarray(isotonic.X_thresholds_, dtype=np.float64)
    arrays["calibration_y"] = np.asarray(isotonic.y_thresholds_, dtype=np.float64)
    return Boosted.from_arrays(arrays, "")


def fit_supervised(
    x: npt.NDArray[np.floating],
    y: npt.NDArray[np.integer] | Sequence[int],
    *,
    seed: int,
    calibrate: bool,
    columns: Sequence[int] | None = None,
    weights: npt.NDArray[np.floating] | None = None,
) -> tuple[Boosted, Supervised]:
    """Fit the classifier on the rows `x` (rows x the feature vector; `columns` of it, all by
    default) labelled `y` (0 or 1), with an isotonic calibration on a held-out share of each
    class when `calibrate` (fitted unweighted: it maps the probabilities back to the frequencies
    of the rows); `weights` weigh the rows in the fit; check it against scikit-learn
    (SupervisedError beyond 1e-9)."""
    x = np.asarray(x)
    labels = np.asarray(y)
    if x.ndim != 2 or labels.shape != (x.shape[0],):
        raise SupervisedError("one label per row expected")
    if not np.all((labels == 0) | (labels == 1)):
        raise SupervisedError("labels are 0 or 1")
    used = list(range(x.shape[1])) if columns is None else [int(c) for c in columns]
    fit_rows, held_rows = _split(labels, seed, CALIBRATION_SHARE if calibrate else 0.0)
    fit_labels = labels[fit_rows]
    if fit_labels.min() == fit_labels.max():
        raise SupervisedError("both labels are needed to fit the classifier")
    classifier = HistGradientBoostingClassifier(
        max_iter=MAX_ITER,
        max_leaf_nodes=MAX_LEAF_NODES,
        learning_rate=LEARNING_RATE,
        early_stopping=False,
        categorical_features=None,
        random_state=seed,
    ).fit(
        x[fit_rows][:, used],
        fit_labels.astype(np.int64),
        sample_weight=None if weights is None else np.asarray(weights, np.float64)[fit_rows],
    )
    boosted = boosting_from_sklearn(classifier, used)
    isotonic: IsotonicRegression | None = None
    if calibrate:
        held_labels = labels[held_rows]
        if held_labels.size == 0 or held_labels.min() == held_labels.max():
            raise SupervisedError("both labels are needed in the calibration rows")
        isotonic = IsotonicRegression(out_of_bounds="clip", increasing=True)
        isotonic.fit(boosted.probability(x[held_rows]), held_labels.astype(np.float64))
        boosted = with_calibration(boosted, isotonic)
    probe = x[np.linspace(0, x.shape[0] - 1, min(_PARITY_ROWS, x.shape[0])).astype(np.intp)]
    error = parity_error(boosted, classifier, isotonic, probe)
    if error > PARITY_TOLERANCE:
        raise SupervisedError(f"the arrays differ from scikit-learn by {error:.3g}")
    return boosted, Supervised(
        rows=len(fit_rows),
        positives=int(fit_labels.sum()),
        calibration_rows=len(held_rows),
        calibration_positives=int(labels[held_rows].sum()),
        calibration_points=0 if boosted.calibration is None else len(boosted.calibration.x),
        trees=boosted.trees,
        max_leaf_nodes=MAX_LEAF_NODES,
        learning_rate=LEARNING_RATE,
        depth=boosted.depth,
        seed=seed,
        sklearn=sklearn.__version__,
        parity_error=error,
    )


def parity_error(
    boosted: Boosted,
    classifier: HistGradientBoostingClassifier,
    isotonic: IsotonicRegression | None,
    x: npt.NDArray[np.floating],
) -> float:
    """The largest difference between the arrays' raw prediction, probability and calibrated
    probability of the rows `x` and scikit-learn's."""
    sub = x[:, boosted.columns]
    raw = boosted.raw(x)
    probability = boosted.probability(x)
    errors = [
        np.abs(raw - classifier.decision_function(sub)),
        np.abs(probability - classifier.predict_proba(sub)[:, 1]),
    ]
    if isotonic is not None:
        errors.append(np.abs(boosted.score(x) - isotonic.predict(probability)))
    return float(max(e.max(initial=0.0) for e in errors))


def _split(labels: npt.NDArray[np.generic], seed: int, share: float) -> tuple[Ints, Ints]:
    """Rows to fit on and rows held out: `share` of each class, drawn with `seed` (the same
    labels and seed, the same split), each part in the rows' order."""
    rng = np.random.default_rng(seed)
    held: list[Ints] = []
    for label in (0, 1):
        rows = np.flatnonzero(labels == label)
        held.append(rng.permutation(rows)[: round(share * len(rows))])
    out = np.zeros(len(labels), dtype=np.bool_)
    out[np.concatenate(held)] = True
    return np.flatnonzero(~out), np.flatnonzero(out)


def _grow(
    feature: list[int],
    threshold: list[float],
    missing_right: list[bool],
    children: list[int],
    value: list[float],
) -> None:
    """Room for one more node (filled in when it is taken from the queue)."""
    feature.append(0)
    threshold.append(0.0)
    missing_right.append(False)
    children.append(0)
    value.append(0.0)
