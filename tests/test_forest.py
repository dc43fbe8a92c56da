"""The forest evaluated from its arrays scores exactly as scikit-learn's `score_samples`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest

from models.export import forest_from_sklearn, npz_bytes
from monitor.scoring.features import FEATURES
from monitor.scoring.forest import Forest
from monitor.scoring.model import check_parity, load_model

SHIPPED = Path(__file__).resolve().parent.parent / "monitor" / "data" / "model"


@pytest.mark.parametrize(
    ("trees", "max_samples", "max_features", "columns"),
    [
        (50, 256, 1.0, [0, 3, 5]),
        (20, 64, 0.5, [1, 2, 4, 6, 7]),
        (7, 1000, 1.0, [2]),
        (30, 16, 1.0, [0, 1]),
    ],
)
def test_scores_equal_scikit_learns_on_random_inputs(
    trees: int, max_samples: int, max_features: float, columns: list[int]
) -> None:
    rng = np.random.default_rng(trees)
    train = rng.normal(size=(3000, 8)).astype(np.float32)
    train[:, 2] = np.round(train[:, 2])  # ties and repeated values
    fitted = IsolationForest(
        n_estimators=trees, max_samples=max_samples, max_features=max_features, random_state=1
    ).fit(train[:, columns])
    forest = forest_from_sklearn(fitted, columns)
    # float64 inputs: scikit-learn and the forest both cast them to float32 first.
    probe = np.concatenate([rng.normal(size=(2000, 8)) * 4, train[:500].astype(np.float64)])
    got = forest.score(probe)
    expected = -fitted.score_samples(probe[:, columns])
    assert np.max(np.abs(got - expected)) < 1e-9
    assert forest.trees == trees


def test_the_arrays_survive_an_npz_round_trip_without_pickle() -> None:
    rng = np.random.default_rng(0)
    fitted = IsolationForest(n_estimators=5, random_state=0).fit(rng.normal(size=(500, 3)))
    forest = forest_from_sklearn(fitted, [0, 1, 2])
    data = npz_bytes(forest.arrays("m0_"))
    assert npz_bytes(forest.arrays("m0_")) == data  # the same arrays, the same bytes
    import io

    with np.load(io.BytesIO(data), allow_pickle=False) as stored:
        again = Forest.from_arrays({k: stored[k] for k in stored.files}, "m0_")
    probe = rng.normal(size=(100, 3))
    np.testing.assert_array_equal(again.score(probe), forest.score(probe))


def test_arrays_that_make_no_forest_are_refused() -> None:
    rng = np.random.default_rng(0)
    fitted = IsolationForest(n_estimators=3, random_state=0).fit(rng.normal(size=(300, 2)))
    good = forest_from_sklearn(fitted, [0, 1]).arrays("")
    children, feature = good["children"], good["feature"]
    changes = [
        ("children", np.where(children == children.max(), 10**6, children)),  # out of range
        ("children", np.where(np.arange(len(children)) == 0, 0, children)),  # a cycle at a root
        ("feature", feature + 5),  # a split on a column the forest does not read
    ]
    for key, changed in changes:
        with pytest.raises(ValueError):
            Forest.from_arrays({**good, key: changed}, "")
    bad = dict(good)
    bad["threshold"] = np.zeros_like(good["threshold"])  # leaves that do not stop
    with pytest.raises(ValueError, match="leaf"):
        Forest.from_arrays(bad, "")


def test_the_shipped_model_passes_its_parity_vectors() -> None:
    model = load_model(SHIPPED)  # load checks them too
    check_parity(model)
    assert model.card.features == list(FEATURES)
    assert len(model.card.parity) >= 4
    x = np.array([p.features for p in model.card.parity])
    assert np.max(np.abs(model.score(x) - [p.score for p in model.card.parity])) < 1e-9


def test_a_value_equal_to_a_threshold_goes_left_as_in_scikit_learn() -> None:
    """scikit-learn sends `x <= threshold` left. A one-split tree: root 0 on column 0 at 0.5,
    left leaf 1 (path length 1), right leaf 2 (path length 3)."""
    forest = Forest.from_arrays(
        {
            "columns": np.array([0], dtype=np.int32),
            "roots": np.array([0], dtype=np.int32),
            "feature": np.array([0, 0, 0], dtype=np.int32),
            "threshold": np.array([0.5, np.inf, np.inf]),
            "children": np.array([1, 1, 2], dtype=np.int32),
            "value": np.array([0.0, 1.0, 3.0]),
            "norm": np.array([1.0]),
        },
        "",
    )
    scores = forest.score(np.array([[0.25], [0.5], [0.75]]))
    np.testing.assert_array_equal(scores, [0.5, 0.5, 0.125])


def test_indices_too_large_for_the_layout_are_refused_not_wrapped() -> None:
    rng = np.random.default_rng(0)
    fitted = IsolationForest(n_estimators=2, random_state=0).fit(rng.normal(size=(100, 2)))
    good = forest_from_sklearn(fitted, [0, 1]).arrays("")
    for key, huge in (("children", 2**32 + 1), ("children", 2**31 - 1), ("roots", 2**32)):
        changed = good[key].astype(np.int64)
        changed[-1] = huge
        with pytest.raises(ValueError):
            Forest.from_arrays({**good, key: changed}, "")
