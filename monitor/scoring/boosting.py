"""A gradient-boosted classifier evaluated from its fitted arrays with numpy, a batch at a time.

The supervised stage of the model: a binary scikit-learn `HistGradientBoostingClassifier`, fitted
offline on labelled attempts (`models/boosting.py`), laid out here as flat arrays in the layout of
`monitor.scoring.forest.Forest`: every node of every tree in one array, the two children of a
node next to each other (`children[node]` is the left one, the right one follows), a leaf
pointing at itself. Per node: the column it splits on, its threshold (`x <= threshold` goes left,
as in scikit-learn's predictor), where a missing value (NaN) goes, and a leaf's value.

A batch descends all its rows in all the trees at once, one vectorised step per level, as the
forest does:

    node = children[node] + (prepared[row, column[node]] > threshold[node])

NaN compares false with everything, so the input is prepared once per batch with each feature
three times: NaN as -inf (read by nodes sending missing values left), NaN as +inf (nodes sending
them right), and NaN as 1, a number as 0 (a split of the missing values from every number,
+inf included, which scikit-learn writes as a threshold of +inf: compared against 0.5). A leaf's
threshold is +inf and it reads the first copy: nothing passes it. The trees descend deepest
first, and a tree stops stepping once its deepest leaf is reached. Inputs are cast to float64, as
scikit-learn casts them before it predicts (a float32 feature becomes the same float64).

The raw prediction (`decision_function`) is the baseline plus each tree's leaf value, added in
tree order as scikit-learn adds them; the probability is its sigmoid (`predict_proba[:, 1]`).
An optional isotonic calibration, fitted on held-out rows, maps the probability through its
points with `np.interp` (clipped at the ends), as `IsotonicRegression(out_of_bounds="clip")`
predicts. tests/test_boosting.py proves all three equal scikit-learn's to 1e-9.
Categorical splits are not represented: the export refuses a model that has them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int32]
Flags = npt.NDArray[np.bool_]

# The arrays of one boosted model in an artifact, by the suffix of their names; the calibration
# pair is optional (both or neither).
NAMES: Final = (
    "columns",
    "roots",
    "feature",
    "threshold",
    "missing_right",
    "children",
    "value",
    "baseline",
)
CALIBRATION: Final = ("calibration_x", "calibration_y")

_INT32: Final = np.iinfo(np.int32)


@dataclass(frozen=True, slots=True)
class Calibration:
    """An isotonic map from the model's probability to a calibrated one: the points `x` (strictly
    increasing) and their values `y` (non-decreasing, in [0, 1]); linear between the points, flat
    beyond the ends."""

    x: Floats
    y: Floats

    def apply(self, probability: Floats) -> Floats:
        calibrated: Floats = np.interp(probability, self.x, self.y)
        return calibrated


@dataclass(frozen=True, slots=True)
class Plan:
    """The arrays the descent runs on, derived from a model's stored arrays (never stored)."""

    roots: npt.NDArray[np.intp]  # the roots, the deepest trees first
    inverse: npt.NDArray[np.intp]  # from that order back to the trees' own
    column: npt.NDArray[np.intp]  # per node: the column of the prepared input it compares
    threshold: Floats  # per node: go right when that column's value > threshold
    children: npt.NDArray[np.intp]  # per node: its left child (the right one is next)
    active: tuple[int, ...]  # per level: how many trees (deepest first) still descend


@dataclass(frozen=True, slots=True)
class Boosted:
    """One fitted binary gradient-boosted classifier over `columns` of the feature vector."""

    columns: Ints  # which features it reads, as indices into the feature vector
    roots: Ints  # the root node of each tree, in the order the trees add up
    feature: Ints  # per node: the column (of `columns`) it splits on; 0 for a leaf
    threshold: Floats  # per node: go right when x > threshold; +inf for a leaf (and a NaN split)
    missing_right: Flags  # per node: a NaN goes right; False for a leaf
    children: Ints  # per node: its left child (the right one is next); itself for a leaf
    value: Floats  # per node: the leaf's value (0 for an inner node)
    baseline: float  # the raw prediction before any tree (the training data's log-odds)
    plan: Plan  # the descent's own arrays, derived from the ones above
    calibration: Calibration | None = None

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, npt.NDArray[np.generic]], prefix: str) -> Boosted:
        """The model stored under `prefix` (`<prefix>columns`, ...); raises ValueError when the
        arrays do not make one (missing, wrong types or shapes, indices out of range, cycles,
        leaves that do not stop, values that are not finite, a calibration that is not one)."""
        try:
            get = {name: np.asarray(arrays[prefix + name]) for name in NAMES}
        except KeyError as exc:
            raise ValueError(f"missing array {exc.args[0]}") from exc
        if any(a.ndim != 1 for a in get.values()) or get["baseline"].size != 1:
            raise ValueError("an array of the wrong shape")
        columns, roots = _ints(get["columns"], "columns"), _ints(get["roots"], "roots")
        feature, children = _ints(get["feature"], "feature"), _ints(get["children"], "children")
        threshold, value = _floats(get["threshold"], "threshold"), _floats(get["value"], "value")
        baseline = _floats(get["baseline"], "baseline")
        missing_right = _flags(get["missing_right"], "missing_right")
        nodes = len(feature)
        if not (len(threshold) == len(missing_right) == len(children) == len(value) == nodes):
            raise ValueError("node arrays of different lengths")
        if nodes == 0 or len(roots) == 0 or len(columns) == 0:
            raise ValueError("an empty model")
        if columns.min() < 0:
            raise ValueError("a negative feature column")
        index = np.arange(nodes, dtype=np.int32)
        leaf = children == index
        if children.min() < 0 or children[~leaf].max(initial=0) >= nodes - 1:
            raise ValueError("a child index out of range")
        if roots.min() < 0 or roots.max() >= nodes:
            raise ValueError("a root index out of range")
        if feature.min() < 0 or feature.max() >= len(columns):
            raise ValueError("a split on a column the model does not read")
        if not np.all(np.isposinf(threshold[leaf])) or np.any(missing_right[leaf]):
            raise ValueError("a leaf that does not stop the descent")
        if np.any(np.isnan(threshold)):
            raise ValueError("a threshold that is not a number")
        if not np.all(np.isfinite(value)) or not np.all(np.isfinite(baseline)):
            raise ValueError("a leaf value that is not a finite number")
        # Children come after their parent (the layout's order): no cycle. Every node has one
        # parent at most and a root none: trees, so a walk from the roots visits a node once.
        if np.any(children[~leaf] <= index[~leaf]):
            raise ValueError("a child before its parent")
        parents = np.bincount(
            np.concatenate((children[~leaf], children[~leaf] + 1, roots)), minlength=nodes
        )
        if parents.max() > 1:
            raise ValueError("a node shared by two parents or two trees")
        return cls(
            columns=columns,
            roots=roots,
            feature=feature,
            threshold=threshold,
            missing_right=missing_right,
            children=children,
            value=np.where(leaf, value, 0.0),
            baseline=float(baseline[0]),
            plan=_plan(
                roots=roots,
                feature=feature,
                threshold=threshold,
                missing_right=missing_right,
                children=children,
                leaf=leaf,
                width=len(columns),
            ),
            calibration=_calibration(arrays, prefix),
        )

    def arrays(self, prefix: str) -> dict[str, npt.NDArray[np.generic]]:
        """What `from_arrays` reads back (the calibration pair only when there is one)."""
        stored: dict[str, npt.NDArray[np.generic]] = {
            name: getattr(self, name) for name in NAMES if name != "baseline"
        }
        stored["baseline"] = np.array([self.baseline])
        if self.calibration is not None:
            stored["calibration_x"] = self.calibration.x
            stored["calibration_y"] = self.calibration.y
        return {prefix + name: value for name, value in stored.items()}

    @property
    def trees(self) -> int:
        return len(self.roots)

    @property
    def depth(self) -> int:
        """Levels to descend: the deepest leaf's depth."""
        return len(self.plan.active)

    def raw(self, x: npt.NDArray[np.floating]) -> Floats:
        """The raw prediction (log-odds; scikit-learn's `decision_function`) of each row of `x`
        (rows x the whole feature vector)."""
        rows = x.shape[0]
        if rows == 0:
            return np.empty(0)
        plan = self.plan
        sub = np.asarray(x[:, self.columns], dtype=np.float64)
        nan = np.isnan(sub)
        prepared = np.concatenate(
            (np.where(nan, -np.inf, sub), np.where(nan, np.inf, sub), nan), axis=1
        )
        flat = prepared.ravel()
        offsets = np.arange(rows, dtype=np.intp) * prepared.shape[1]  # broadcast as (1, rows)
        node = np.repeat(plan.roots[:, None], rows, axis=1)  # (trees, rows), deepest first
        column, threshold, children = plan.column, plan.threshold, plan.children
        for descending in plan.active:
            here = node[:descending]
            values = flat.take(offsets + column.take(here))
            node[:descending] = children.take(here) + (values > threshold.take(here))
        # The baseline, then each tree's leaf in tree order, as scikit-learn adds them: the same
        # sum to the last bit.
        raw = np.full(rows, self.baseline)
        for leaves in self.value.take(node.take(plan.inverse, axis=0)):
            raw += leaves
        return raw

    def probability(self, x: npt.NDArray[np.floating]) -> Floats:
        """The probability of the positive class (`predict_proba[:, 1]`): the raw prediction's
        sigmoid, uncalibrated."""
        return sigmoid(self.raw(x))

    def score(self, x: npt.NDArray[np.floating]) -> Floats:
        """The model's answer for each row: the calibrated probability when the model has a
        calibration, its probability otherwise."""
        probability = self.probability(x)
        if self.calibration is None:
            return probability
        return self.calibration.apply(probability)


def sigmoid(raw: Floats) -> Floats:
    """1 / (1 + exp(-raw)), as scipy's `expit` (scikit-learn's inverse link) computes it; exp
    overflowing to +inf for a very negative raw value gives 0, as it should."""
    with np.errstate(over="ignore"):
        probability: Floats = 1.0 / (1.0 + np.exp(-raw))
    return probability


def _calibration(arrays: Mapping[str, npt.NDArray[np.generic]], prefix: str) -> Calibration | None:
    present = [prefix + name in arrays for name in CALIBRATION]
    if not any(present):
        return None
    if not all(present):
        raise ValueError("a calibration needs both calibration_x and calibration_y")
    x = _floats(np.asarray(arrays[prefix + "calibration_x"]), "calibration_x")
    y = _floats(np.asarray(arrays[prefix + "calibration_y"]), "calibration_y")
    if x.ndim != 1 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
        raise ValueError("calibration arrays of the wrong shape")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("a calibration point that is not a finite number")
    if np.any(np.diff(x) <= 0) or np.any(np.diff(y) < 0):
        raise ValueError("a calibration that is not increasing")
    if y[0] < 0 or y[-1] > 1:
        raise ValueError("a calibrated probability outside [0, 1]")
    return Calibration(x=x, y=y)


def _ints(array: npt.NDArray[np.generic], name: str) -> Ints:
    if array.dtype.kind not in "iu":
        raise ValueError(f"{name}: integers expected, got {array.dtype}")
    if array.size and (array.min() < _INT32.min or array.max() > _INT32.max):
        raise ValueError(f"{name}: an index out of range")
    return array.astype(np.int32)


def _floats(array: npt.NDArray[np.generic], name: str) -> Floats:
    if array.dtype.kind != "f":
        raise ValueError(f"{name}: floating-point numbers expected, got {array.dtype}")
    return array.astype(np.float64)


def _flags(array: npt.NDArray[np.generic], name: str) -> Flags:
    if array.dtype.kind not in "biu":
        raise ValueError(f"{name}: flags expected, got {array.dtype}")
    if array.dtype.kind != "b" and np.any((array != 0) & (array != 1)):
        raise ValueError(f"{name}: flags are 0 or 1")
    return array.astype(np.bool_)


def _plan(
    *,
    roots: Ints,
    feature: Ints,
    threshold: Floats,
    missing_right: Flags,
    children: Ints,
    leaf: Flags,
    width: int,
) -> Plan:
    """The descent's arrays for trees checked by `from_arrays` (one parent per node)."""
    trees = len(roots)
    depth = np.zeros(trees, dtype=np.intp)
    level, tree = roots.astype(np.intp), np.arange(trees, dtype=np.intp)
    levels = 0
    while True:
        inner = ~leaf[level]
        if not inner.any():
            break
        levels += 1
        depth[tree[inner]] = levels
        level = np.concatenate((children[level[inner]], children[level[inner]] + 1))
        tree = np.concatenate((tree[inner], tree[inner]))
    order = np.argsort(-depth, kind="stable")
    # Which column of the prepared input a node reads: NaN as -inf (missing values go left), NaN
    # as +inf (they go right), or NaN as 1 against 0.5 (a split of NaN from every number, +inf
    # included, which scikit-learn writes as a threshold of +inf with missing values right).
    nan_only = missing_right & np.isposinf(threshold)
    kind = np.where(nan_only, 2, missing_right.astype(np.intp))
    return Plan(
        roots=roots.astype(np.intp)[order],
        inverse=np.argsort(order).astype(np.intp),
        column=(feature + width * kind).astype(np.intp),
        threshold=np.where(nan_only, 0.5, threshold),
        children=children.astype(np.intp),
        active=tuple(int(np.count_nonzero(depth > d)) for d in range(levels)),
    )
