"""The gradient-boosted stage evaluated from its arrays predicts exactly as scikit-learn's
`HistGradientBoostingClassifier` (and its isotonic calibration as `IsotonicRegression`)."""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.isotonic import IsotonicRegression

from models.boosting import (
    MAX_ITER,
    PARITY_TOLERANCE,
    SupervisedError,
    boosting_from_sklearn,
    fit_supervised,
    with_calibration,
)
from models.export import npz_bytes
from monitor.scoring.boosting import Boosted

Matrix = npt.NDArray[np.float64]


def _data(seed: int, rows: int = 3000, width: int = 8) -> tuple[Matrix, npt.NDArray[np.int64]]:
    """Rows with ties, missing values that carry signal, and labels from a few features."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, width))
    x[:, 2] = np.round(x[:, 2])  # ties and repeated values
    signal = x[:, 0] + x[:, 1] ** 2 - x[:, 2] + rng.normal(size=rows)
    missing = rng.random(rows) < 0.1
    signal[missing] += 2.0  # a missing value in column 3 makes a positive likelier
    x[missing, 3] = np.nan
    x[rng.random((rows, width)) < 0.02] = np.nan  # and missing values anywhere
    return x, (signal > 1.5).astype(np.int64)


def _probe(boosted: Boosted, seed: int, width: int = 8) -> Matrix:
    """Random rows, rows with NaN and ±inf, and rows exactly at the model's thresholds."""
    rng = np.random.default_rng(seed)
    probe = rng.normal(size=(2000, width)) * 2
    probe[rng.random(probe.shape) < 0.1] = np.nan
    probe[rng.random(probe.shape) < 0.01] = np.inf
    probe[rng.random(probe.shape) < 0.01] = -np.inf
    inner = boosted.children != np.arange(len(boosted.children))
    ties = probe[:500].copy()
    for j, column in enumerate(boosted.columns):
        splits = boosted.threshold[inner & (boosted.feature == j) & np.isfinite(boosted.threshold)]
        if splits.size:
            ties[:, column] = rng.choice(splits, size=500)
    return np.concatenate((probe, ties))


@pytest.mark.parametrize(
    ("iterations", "leaves", "depth", "columns"),
    [
        (100, 15, None, [0, 1, 2, 3, 4, 5, 6, 7]),
        (30, 31, None, [3, 0, 2]),
        (50, 8, 3, [1, 3, 5]),
        (7, 4, None, [2]),
        (120, 15, 6, [7, 6, 5, 4, 3, 2, 1, 0]),
    ],
)
def test_raw_and_probability_equal_scikit_learns(
    iterations: int, leaves: int, depth: int | None, columns: list[int]
) -> None:
    x, y = _data(iterations)
    fitted = HistGradientBoostingClassifier(
        max_iter=iterations,
        max_leaf_nodes=leaves,
        max_depth=depth,
        early_stopping=False,
        random_state=1,
    ).fit(x[:, columns], y)
    boosted = boosting_from_sklearn(fitted, columns)
    assert boosted.trees == iterations
    probe = _probe(boosted, iterations)
    for rows in (probe, probe.astype(np.float32), x):  # float32 is cast as scikit-learn casts it
        raw = boosted.raw(rows)
        assert np.max(np.abs(raw - fitted.decision_function(rows[:, columns]))) < 1e-9
        # The same leaves added in the same order: the same bits (what `Boosted.raw` claims).
        np.testing.assert_array_equal(raw, fitted.decision_function(rows[:, columns]))
        probability = boosted.probability(rows)
        expected = fitted.predict_proba(rows[:, columns])[:, 1]
        assert np.max(np.abs(probability - expected)) < 1e-9
        np.testing.assert_array_equal(boosted.score(rows), probability)  # no calibration


def test_missing_values_go_where_each_split_sends_them() -> None:
    """Splits that send NaN left, right, and splits of NaN from every number (scikit-learn's
    threshold +inf) all occur, and NaN and +inf part where scikit-learn parts them."""
    x, y = _data(3)
    fitted = HistGradientBoostingClassifier(
        max_iter=60, max_leaf_nodes=15, early_stopping=False, random_state=0
    ).fit(x, y)
    boosted = boosting_from_sklearn(fitted, range(8))
    inner = boosted.children != np.arange(len(boosted.children))
    nan_only = inner & np.isposinf(boosted.threshold)
    assert nan_only.any()
    assert (inner & ~nan_only & boosted.missing_right).any()
    assert (inner & ~boosted.missing_right).any()
    rows = np.zeros((4, 8))
    rows[:, 3] = [np.nan, np.inf, -np.inf, 0.0]
    np.testing.assert_allclose(
        boosted.raw(rows), fitted.decision_function(rows), rtol=0, atol=1e-12
    )
    assert boosted.raw(rows)[0] != boosted.raw(rows)[1]


def test_a_hand_built_tree_follows_scikit_learns_rules() -> None:
    """Root 0 splits column 0 at 0.5 (x <= 0.5 left; NaN right) into leaf 1 (value 1) and node
    2, a split of NaN from every number (threshold +inf, NaN right) into leaves 3 (value 10)
    and 4 (value 100); baseline 0.25."""
    boosted = Boosted.from_arrays(
        {
            "columns": np.array([0], dtype=np.int32),
            "roots": np.array([0], dtype=np.int32),
            "feature": np.zeros(5, dtype=np.int32),
            "threshold": np.array([0.5, np.inf, np.inf, np.inf, np.inf]),
            "missing_right": np.array([True, False, True, False, False]),
            "children": np.array([1, 1, 3, 3, 4], dtype=np.int32),
            "value": np.array([0.0, 1.0, 0.0, 10.0, 100.0]),
            "baseline": np.array([0.25]),
        },
        "",
    )
    x = np.array([[0.25], [0.5], [0.75], [np.inf], [np.nan], [-np.inf]])
    np.testing.assert_array_equal(boosted.raw(x), [1.25, 1.25, 10.25, 10.25, 100.25, 1.25])
    assert boosted.depth == 2
    assert boosted.raw(np.empty((0, 1))).shape == (0,)
    assert boosted.probability(np.array([[-1e6]]))[0] == pytest.approx(1 / (1 + np.exp(-1.25)))


def test_the_calibration_equals_isotonic_regression() -> None:
    x, y = _data(5)
    fitted = HistGradientBoostingClassifier(
        max_iter=40, max_leaf_nodes=15, early_stopping=False, random_state=0
    ).fit(x[:2000], y[:2000])
    isotonic = IsotonicRegression(out_of_bounds="clip")
    isotonic.fit(fitted.predict_proba(x[2000:])[:, 1], y[2000:])
    boosted = with_calibration(boosting_from_sklearn(fitted, range(8)), isotonic)
    assert boosted.calibration is not None
    probe = np.concatenate((_probe(boosted, 5), x))
    probability = fitted.predict_proba(probe)[:, 1]
    assert np.max(np.abs(boosted.score(probe) - isotonic.predict(probability))) < 1e-9
    # Beyond its ends the map is flat, as out_of_bounds="clip".
    ends = np.array([0.0, 1.0])
    np.testing.assert_array_equal(boosted.calibration.apply(ends), isotonic.predict(ends))


def test_fit_supervised_is_deterministic_and_checked() -> None:
    x, y = _data(7)
    first, details = fit_supervised(x, y, seed=3, calibrate=True)
    again, _ = fit_supervised(x, y, seed=3, calibrate=True)
    assert npz_bytes(first.arrays("s_")) == npz_bytes(again.arrays("s_"))
    assert details.rows + details.calibration_rows == len(y)
    assert details.positives + details.calibration_positives == int(y.sum())
    assert details.calibration_rows == pytest.approx(0.25 * len(y), abs=2)
    assert details.trees == first.trees == MAX_ITER
    assert details.parity_error <= PARITY_TOLERANCE
    assert first.calibration is not None and details.calibration_points == len(first.calibration.x)
    assert set(details.as_dict()) >= {"rows", "trees", "seed", "sklearn", "parity_error"}
    plain, plain_details = fit_supervised(x, y, seed=3, calibrate=False, columns=[0, 1, 3])
    assert plain.calibration is None and plain_details.calibration_rows == 0
    np.testing.assert_array_equal(plain.columns, [0, 1, 3])
    assert plain_details.rows == len(y)


def test_fit_supervised_refuses_labels_it_cannot_learn_from() -> None:
    x, y = _data(9, rows=400)
    with pytest.raises(SupervisedError, match="0 or 1"):
        fit_supervised(x, y * 2, seed=0, calibrate=False)
    with pytest.raises(SupervisedError, match="both labels"):
        fit_supervised(x, np.zeros_like(y), seed=0, calibrate=False)
    with pytest.raises(SupervisedError, match="one label per row"):
        fit_supervised(x, y[:-1], seed=0, calibrate=False)


def test_categorical_features_and_more_classes_are_refused() -> None:
    rng = np.random.default_rng(0)
    x = np.column_stack((rng.integers(0, 5, size=600), rng.normal(size=600)))
    y = (x[:, 0] == 2).astype(np.int64)
    categorical = HistGradientBoostingClassifier(
        max_iter=5, categorical_features=[0], early_stopping=False, random_state=0
    ).fit(x, y)
    with pytest.raises(SupervisedError, match="categorical"):
        boosting_from_sklearn(categorical, [0, 1])
    three = HistGradientBoostingClassifier(max_iter=5, early_stopping=False).fit(x, x[:, 0] % 3)
    with pytest.raises(SupervisedError, match="binary"):
        boosting_from_sklearn(three, [0, 1])
    numeric = HistGradientBoostingClassifier(max_iter=5, early_stopping=False).fit(x, y)
    with pytest.raises(SupervisedError, match="columns"):
        boosting_from_sklearn(numeric, [0])


def test_the_arrays_survive_an_npz_round_trip_without_pickle() -> None:
    x, y = _data(11, rows=1500)
    boosted, _ = fit_supervised(x, y, seed=0, calibrate=True, columns=[0, 1, 2, 3])
    data = npz_bytes(boosted.arrays("b0_"))
    assert npz_bytes(boosted.arrays("b0_")) == data  # the same arrays, the same bytes
    with np.load(io.BytesIO(data), allow_pickle=False) as stored:
        again = Boosted.from_arrays({k: stored[k] for k in stored.files}, "b0_")
    probe = _probe(boosted, 11)
    np.testing.assert_array_equal(again.raw(probe), boosted.raw(probe))
    np.testing.assert_array_equal(again.score(probe), boosted.score(probe))
    assert again.calibration is not None


def test_arrays_that_make_no_model_are_refused() -> None:
    x, y = _data(13, rows=800)
    boosted, _ = fit_supervised(x, y, seed=0, calibrate=True, columns=[0, 1, 2])
    good = boosted.arrays("")
    Boosted.from_arrays(good, "")  # the unchanged arrays load
    children, feature = good["children"], good["feature"]
    index = np.arange(len(children))
    inner = np.flatnonzero(children != index)
    leaf = np.flatnonzero(children == index)
    first_leaf = int(leaf[0])
    # An inner node `a` whose children come after another inner node `b`: b can point there too.
    a, b = next((a, b) for a in inner for b in inner if a < b < children[a])
    changes: list[tuple[str, npt.NDArray[np.generic], str]] = [
        ("children", np.where(children == children.max(), 10**6, children), "out of range"),
        ("children", np.where(index == inner[-1], inner[-1] - 1, children), "before its parent"),
        ("children", np.where(index == b, children[a], children), "two parents"),
        ("children", children.astype(np.float64), "integers"),
        ("children", np.where(index == 0, np.iinfo(np.int32).max, children), "out of range"),
        ("children", np.where(index == 0, np.int64(2**40), children.astype(np.int64)), "range"),
        ("roots", np.array([good["roots"][0], good["roots"][0]], dtype=np.int32), "two"),
        ("roots", np.array([-1], dtype=np.int32), "root"),
        ("feature", feature + 5, "column"),
        ("threshold", np.where(index == first_leaf, 0.0, good["threshold"]), "leaf"),
        ("missing_right", np.where(index == first_leaf, True, good["missing_right"]), "leaf"),
        ("missing_right", np.full(len(index), 2), "0 or 1"),
        ("threshold", np.where(index == inner[0], np.nan, good["threshold"]), "not a number"),
        ("value", np.where(index == first_leaf, np.inf, good["value"]), "finite"),
        ("baseline", np.array([0.0, 1.0]), "shape"),
        ("feature", feature[:-1], "lengths"),
        ("value", good["value"].reshape(1, -1), "shape"),
        ("columns", np.array([], dtype=np.int32), "empty"),
        ("calibration_y", good["calibration_y"][::-1], "increasing"),
        ("calibration_y", np.asarray(good["calibration_y"], dtype=np.float64) + 2.0, "outside"),
        ("calibration_x", good["calibration_x"][:-1], "shape"),
    ]
    for key, changed, reason in changes:
        with pytest.raises(ValueError, match=reason):
            Boosted.from_arrays({**good, key: changed}, "")
    for missing in ("threshold", "calibration_x"):
        partial = {k: v for k, v in good.items() if k != missing}
        with pytest.raises(ValueError, match=r"missing|both"):
            Boosted.from_arrays(partial, "")


def test_weights_change_the_fit_and_stay_checked() -> None:
    """Weighted rows fit another classifier, still equal to scikit-learn's; kind weights give
    each kind's rows labelled 1 the square root of its shortfall, their total unchanged."""
    from models.train import kind_weights

    x, y = _data(7)
    plain, _ = fit_supervised(x, y, seed=3, calibrate=False)
    weights = np.where(y == 1, 5.0, 1.0)
    weighed, details = fit_supervised(x, y, seed=3, calibrate=False, weights=weights)
    assert details.parity_error <= PARITY_TOLERANCE
    assert not np.array_equal(plain.raw(x), weighed.raw(x))
    labels = np.array([1, 1, 1, 1, 1, 0, 0])
    kinds = ["a", "a", "a", "a", "b", None, None]
    w = kind_weights(labels, kinds)
    # a: share 0.8 of the positives, b: 0.2; target 0.5 each.
    raw = np.array([np.sqrt(0.5 / 0.8)] * 4 + [np.sqrt(0.5 / 0.2)])
    np.testing.assert_allclose(w[:5], raw * 5 / raw.sum())
    assert w[5:].tolist() == [1.0, 1.0] and w[:5].sum() == pytest.approx(5)
