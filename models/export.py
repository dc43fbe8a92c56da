"""A fitted scikit-learn `IsolationForest` as the flat arrays posmon scores with
(`monitor.scoring.forest.Forest`), and the artifact's files written byte for byte the same for
the same model (`make model` is reproducible).
"""

from __future__ import annotations

import io
import zipfile
from collections import deque
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import IsolationForest

from monitor.scoring.forest import Forest, average_path_length


def forest_from_sklearn(fitted: IsolationForest, columns: Sequence[int]) -> Forest:
    """The flat layout of `fitted`, fitted on the feature columns `columns` (in that order).

    Nodes are renumbered tree by tree, breadth first, so the two children of a node are next to
    each other; a leaf points at itself with an infinite threshold and holds its path length:
    its depth plus c(samples that reached it), as scikit-learn's `score_samples` adds them.
    """
    feature: list[int] = []
    threshold: list[float] = []
    children: list[int] = []
    value: list[float] = []
    roots: list[int] = []
    for tree_index, estimator in enumerate(fitted.estimators_):
        tree = estimator.tree_
        used = fitted.estimators_features_[tree_index]  # the columns this tree saw, in order
        samples = average_path_length(tree.n_node_samples.astype(np.float64))
        root = len(feature)
        roots.append(root)
        _grow(feature, threshold, children, value)
        queue: deque[tuple[int, int, int]] = deque([(0, root, 0)])  # (sklearn node, ours, depth)
        while queue:
            node, ours, depth = queue.popleft()
            left, right = int(tree.children_left[node]), int(tree.children_right[node])
            if left == -1:  # a leaf
                feature[ours], threshold[ours], children[ours] = 0, np.inf, ours
                value[ours] = depth + float(samples[node])
                continue
            first = len(feature)
            _grow(feature, threshold, children, value)
            _grow(feature, threshold, children, value)
            feature[ours] = int(used[tree.feature[node]])
            threshold[ours] = float(tree.threshold[node])
            children[ours] = first
            queue.append((left, first, depth + 1))
            queue.append((right, first + 1, depth + 1))
    trees = len(fitted.estimators_)
    norm = trees * float(average_path_length(np.array([fitted.max_samples_], dtype=np.float64))[0])
    arrays: dict[str, npt.NDArray[np.generic]] = {
        "columns": np.asarray(columns, dtype=np.int32),
        "roots": np.asarray(roots, dtype=np.int32),
        "feature": np.asarray(feature, dtype=np.int32),
        "threshold": np.asarray(threshold, dtype=np.float64),
        "children": np.asarray(children, dtype=np.int32),
        "value": np.asarray(value, dtype=np.float64),
        "norm": np.array([norm]),
    }
    return Forest.from_arrays(arrays, "")


def _grow(*lists: list[int] | list[float]) -> None:
    for values in lists:
        values.append(0)


def npz_bytes(arrays: Mapping[str, npt.NDArray[np.generic]]) -> bytes:
    """An `.npz` archive of `arrays` (sorted by name) with fixed timestamps: the same arrays
    always give the same bytes (numpy's own `savez` stamps the time)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            member = io.BytesIO()
            np.lib.format.write_array(
                member, np.ascontiguousarray(arrays[name]), allow_pickle=False
            )
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()
