"""An isolation forest evaluated from its fitted arrays with numpy, a batch at a time.

scikit-learn's `score_samples` costs milliseconds per call whatever the batch (input checks,
per-tree Python, a thread pool), far too much for a stream scored every batch. The trees are
laid out here as flat arrays: every node of every tree in one array, the two children of a node
next to each other (`children[node]` is the left one, the right one follows), a leaf pointing at
itself with a threshold no value passes. A batch then descends all its rows in all the trees at
once, one vectorised step per level:

    node = children[node] + (x[row, feature[node]] > threshold[node])

and a row's path length in a tree is `value[leaf]`: the leaf's depth plus the average path
length of an unbuilt tree over the training samples that reached the leaf, as scikit-learn
computes it. The score is scikit-learn's, negated: `2 ** (-mean path length / c(max_samples))`,
in (0, 1], higher = more anomalous. Inputs are cast to float32 first, as scikit-learn does before
comparing them with its float64 thresholds; tests/test_forest.py proves the scores equal
`-score_samples` to 1e-9.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int32]

# The arrays of one forest in an artifact, by the suffix of their names.
NAMES: Final = ("columns", "roots", "feature", "threshold", "children", "value", "norm")


@dataclass(frozen=True, slots=True)
class Forest:
    """One fitted isolation forest over `columns` of the feature vector."""

    columns: Ints  # which features it reads, as indices into the feature vector
    roots: Ints  # the root node of each tree
    feature: Ints  # per node: the column (of `columns`) it splits on; 0 for a leaf
    threshold: Floats  # per node: go right when x > threshold; +inf for a leaf
    children: Ints  # per node: its left child (the right one is next); itself for a leaf
    value: Floats  # per node: the path length of a row that ends there (leaves)
    norm: float  # trees * c(max_samples)
    depth: int  # levels to descend (the deepest leaf's depth)

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, npt.NDArray[np.generic]], prefix: str) -> Forest:
        """The forest stored under `prefix` (`<prefix>columns`, ...); raises ValueError when the
        arrays do not make a forest (wrong types, indices out of range, cycles)."""
        try:
            get = {name: np.asarray(arrays[prefix + name]) for name in NAMES}
        except KeyError as exc:
            raise ValueError(f"missing array {exc.args[0]}") from exc
        if any(a.ndim != 1 for a in get.values()) or get["norm"].size != 1:
            raise ValueError("an array of the wrong shape")
        wide = {n: get[n].astype(np.int64, casting="same_kind") for n in _INTS}
        # Indices beyond int32 would wrap when narrowed (and `+ 1` below could overflow).
        if any(a.size and (a.min() < -(2**31) or a.max() >= 2**31 - 1) for a in wide.values()):
            raise ValueError("an index out of range")
        ints = {n: a.astype(np.int32) for n, a in wide.items()}
        floats = {n: get[n].astype(np.float64, casting="same_kind") for n in _FLOATS}
        nodes = len(ints["feature"])
        if not (len(floats["threshold"]) == len(ints["children"]) == len(floats["value"]) == nodes):
            raise ValueError("node arrays of different lengths")
        if nodes == 0 or len(ints["roots"]) == 0 or len(ints["columns"]) == 0:
            raise ValueError("an empty forest")
        children, feature = ints["children"], ints["feature"]
        leaf = children == np.arange(nodes, dtype=np.int32)
        if children.min() < 0 or (children[~leaf] + 1).max(initial=0) >= nodes:
            raise ValueError("a child index out of range")
        if feature.min() < 0 or feature.max() >= len(ints["columns"]):
            raise ValueError("a split on a column the forest does not read")
        if ints["roots"].min() < 0 or ints["roots"].max() >= nodes:
            raise ValueError("a root index out of range")
        if not np.all(np.isposinf(floats["threshold"][leaf])):
            raise ValueError("a leaf that does not stop the descent")
        if not np.all(np.isfinite(floats["value"])) or not np.isfinite(floats["norm"]).all():
            raise ValueError("a path length that is not a finite number")
        norm = float(floats["norm"].reshape(-1)[0])
        if norm <= 0:
            raise ValueError("a forest without trees")
        # Children come after their parent (the layout's order): the descent ends within the
        # number of levels found by walking once.
        if np.any(children[~leaf] <= np.flatnonzero(~leaf)):
            raise ValueError("a child before its parent")
        return cls(
            columns=ints["columns"],
            roots=ints["roots"],
            feature=feature,
            threshold=floats["threshold"],
            children=children,
            value=floats["value"],
            norm=norm,
            depth=_depth(ints["roots"], children, leaf),
        )

    def arrays(self, prefix: str) -> dict[str, npt.NDArray[np.generic]]:
        """What `from_arrays` reads back."""
        stored = {name: getattr(self, name) for name in NAMES if name != "norm"}
        stored["norm"] = np.array([self.norm])
        return {prefix + name: value for name, value in stored.items()}

    @property
    def trees(self) -> int:
        return len(self.roots)

    def score(self, x: npt.NDArray[np.floating]) -> Floats:
        """The anomaly score of each row of `x` (rows x the whole feature vector)."""
        rows = x.shape[0]
        if rows == 0:
            return np.empty(0)
        # float32 as scikit-learn sees the input, then float64 to compare exactly.
        sub = np.ascontiguousarray(x[:, self.columns], dtype=np.float32).astype(np.float64)
        flat = sub.ravel()
        width = sub.shape[1]
        offsets = (np.arange(rows, dtype=np.intp) * width)[:, None]
        node = np.repeat(self.roots[None, :].astype(np.intp), rows, axis=0)
        feature, threshold, children = self.feature, self.threshold, self.children
        for _ in range(self.depth):
            values = flat.take(offsets + feature.take(node))
            node = children.take(node) + (values > threshold.take(node))
        lengths = self.value.take(node).sum(axis=1)
        scores: Floats = np.exp2(-lengths / self.norm)
        return scores


_INTS = ("columns", "roots", "feature", "children")
_FLOATS = ("threshold", "value", "norm")


def _depth(roots: Ints, children: Ints, leaf: npt.NDArray[np.bool_]) -> int:
    """The number of levels from the roots to the deepest leaf."""
    level = np.unique(roots)
    depth = 0
    while True:
        inner = level[~leaf[level]]
        if inner.size == 0:
            return depth
        depth += 1
        if depth > len(children):
            raise ValueError("a cycle in the trees")
        level = np.unique(np.concatenate((children[inner], children[inner] + 1)))


def average_path_length(n: npt.NDArray[np.floating]) -> Floats:
    """c(n): the average path length of an unsuccessful search in a binary search tree of n
    nodes (scikit-learn's `_average_path_length`)."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    m = n[big]
    out[big] = 2.0 * (np.log(m - 1.0) + np.euler_gamma) - 2.0 * (m - 1.0) / m
    return out
