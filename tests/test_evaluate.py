"""`posmon evaluate`'s parts: the labels reader and the figures, page and charts of `evaluate`,
on small hand-made rows whose answers are known."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from models.evaluate import BASELINE_FEATURE, CHARTS, NO_KIND, Evaluation, evaluate
from models.labels import Label, LabelsError, read_labels
from monitor.core.scored import ScoredRows
from tests.pans import PANS, pans_in_clear

T0 = 1_793_491_200_000_000  # 2026-11-01T00:00:00Z
HOUR = 3_600_000_000
DAY = 24 * HOUR
NAMES = ("amount_minor", BASELINE_FEATURE)


def scored(
    scores: Sequence[float],
    *,
    z: Sequence[float] | None = None,
    cards: Sequence[str] | None = None,
    times: Sequence[int] | None = None,
    names: tuple[str, ...] = NAMES,
) -> ScoredRows:
    n = len(scores)
    z = [0.0] * n if z is None else z
    features = np.zeros((n, len(names)), dtype=np.float32)
    if BASELINE_FEATURE in names:
        features[:, names.index(BASELINE_FEATURE)] = z
    return ScoredRows(
        event_id=[f"e{i}" for i in range(n)],
        event_time_us=np.asarray(times if times is not None else [T0 + i for i in range(n)]),
        card_id=list(cards) if cards is not None else [f"card{i:04d}" for i in range(n)],
        terminal_id=["t1"] * n,
        merchant_id=["m1"] * n,
        features=features,
        feature_names=names,
        feature_version="posmon-features/1",
        score=np.asarray(scores, dtype=np.float64),
        model_version="m-test",
    )


def positives(*indexes: int, kind: str | None = None) -> dict[str, Label]:
    return {f"e{i}": Label(event_id=f"e{i}", label=1, kind=kind) for i in indexes}


# The labels reader.


def test_labels_skip_other_records_and_the_later_line_wins(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    lines = [
        {"type": "incident", "detector": "large_amount", "event_id": "e9"},
        {"event_id": "e1", "label": 1, "kind": "burst", "source": "sim", "extra": [1, 2]},
        {"event_id": "e2", "label": 0, "known_at": "2026-11-01T08:00:00.5+01:00"},
        {"event_id": "e1", "label": 0},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    labels = read_labels(path)
    assert set(labels) == {"e1", "e2"}
    assert labels["e1"].label == 0 and labels["e1"].kind is None
    known = labels["e2"].known_at
    assert known is not None and known.isoformat() == "2026-11-01T08:00:00.500000+01:00"


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ('{"event_id": "e1", "label": true}', "label"),
        ('{"event_id": "e1", "label": 1.0}', "label"),
        ('{"event_id": "e1", "label": "1"}', "label"),
        ('{"event_id": "e1", "label": 2}', "label"),
        ('{"label": 1}', "event_id"),
        ('{"event_id": 7, "label": 1}', "event_id"),
        ('{"event_id": "e1", "label": 1, "known_at": 1793491200}', "known_at"),
        ('{"event_id": "e1", "label": 1, "known_at": "2026-11-01"}', "known_at"),
        ('{"event_id": "e1", "label": 1, "known_at": "2026-11-01T08:00:00"}', "known_at"),
        ('{"event_id": "e1", "label": 1, "kind": 3}', "kind"),
        ('{"event_id": "e1", "label": 1', "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ("[" * 100_000, "not JSON"),
        ('{"event_id": "e1", "label": 1' + "0" * 5000 + "}", "not JSON"),
    ],
)
def test_a_malformed_labelled_line_is_an_error_naming_it(
    tmp_path: Path, line: str, why: str
) -> None:
    path = tmp_path / "labels.jsonl"
    path.write_text('{"event_id": "e0", "label": 0}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(LabelsError, match=f"labels.jsonl:2: .*{why}"):
        read_labels(path)


def test_label_errors_show_no_card_number(tmp_path: Path) -> None:
    folder = tmp_path / f"card {PANS[0]}\x1b[2J"
    folder.mkdir()
    path = folder / "labels.jsonl"
    path.write_text(f'{{"event_id": "{PANS[1]}", "label": "{PANS[2]}"}}\n', encoding="utf-8")
    with pytest.raises(LabelsError) as caught:
        read_labels(path)
    message = str(caught.value)
    assert ":1: not a label (label:" in message
    assert pans_in_clear(message) == [] and "\x1b" not in message
    path.write_bytes(b'{"event_id": "e1", "label": 1, "kind": "\xff"}\n')
    with pytest.raises(LabelsError, match=":1: not UTF-8"):
        read_labels(path)
    with pytest.raises(LabelsError, match="no such file") as caught:
        read_labels(folder / "missing.jsonl")
    assert pans_in_clear(str(caught.value)) == []


# The figures.


def test_a_perfect_scorer(tmp_path: Path) -> None:
    rows = scored([0.9, 0.1, 0.8, 0.2, 0.3], z=[1, 0, 2, 0, 5])
    result = evaluate(
        rows, positives(0, 2), threshold=0.5, model_version="m-test", out=tmp_path, top_k=2
    )
    model = result.model
    assert (result.rows, result.positives, result.days) == (5, 2, 1)
    assert (model.alerts, model.true_alerts) == (2, 2)
    assert model.precision == model.recall == model.roc_auc == model.average_precision == 1.0
    assert model.precision_top_k == 1.0  # the two cards scored highest are the two labelled
    assert result.notes == []


def test_precision_recall_at_the_threshold_and_the_baseline_budget(tmp_path: Path) -> None:
    # Model: alerts at rows 0, 1, 2 (above 0.5; row 3, at it, is not), of which 0 and 2 are true.
    # Baseline: the same budget of three rows, its three largest z: rows 3, 4, 0.
    rows = scored([0.9, 0.7, 0.6, 0.5, 0.1, 0.0], z=[3, -1, 0, 9, 4, 1])
    result = evaluate(
        rows, positives(0, 2, 3, 5), threshold=0.5, model_version="m-test", out=tmp_path
    )
    model, baseline = result.model, result.baseline
    assert (model.alerts, model.true_alerts) == (3, 2)
    assert model.precision == pytest.approx(2 / 3) and model.recall == pytest.approx(2 / 4)
    assert model.roc_auc == pytest.approx(4 / 8)  # pairs (pos, neg) ordered right: 4 of 8
    assert baseline is not None
    assert (baseline.threshold, baseline.alerts, baseline.true_alerts) == (3.0, 3, 2)
    assert baseline.precision == pytest.approx(2 / 3) and baseline.recall == pytest.approx(1 / 2)
    # Average precision: the model's ranking 0+ 1- 2+ 3+ 4- 5+ (scores), precision at each hit.
    assert model.average_precision == pytest.approx((1 / 1 + 2 / 3 + 3 / 4 + 4 / 6) / 4)


def test_the_baseline_flags_ties_at_its_threshold_and_says_so(tmp_path: Path) -> None:
    rows = scored([0.9, 0.1, 0.1, 0.1], z=[2, 2, 2, 0])
    result = evaluate(rows, positives(0), threshold=0.5, model_version="m", out=tmp_path)
    assert result.model.alerts == 1
    assert result.baseline is not None and result.baseline.alerts == 3
    assert any("baseline flags 3 rows, not 1" in n for n in result.notes)


def test_the_baseline_flags_nothing_when_the_model_does_not(tmp_path: Path) -> None:
    result = evaluate(
        scored([0.1, 0.2], z=[5, 1]), positives(0), threshold=0.9, model_version="m", out=tmp_path
    )
    assert result.model.alerts == 0 and result.model.precision is None
    assert result.baseline is not None
    assert result.baseline.threshold is None and result.baseline.alerts == 0
    assert result.model.recall == 0.0 and result.model.average_precision is not None
    assert any("No row reaches the threshold" in n for n in result.notes)


def test_precision_of_the_top_k_cards_per_day(tmp_path: Path) -> None:
    # Day 1: cards a (0.9, 0.2), b (0.8), c (0.7), d (0.6); a's attempt labelled 1 is its low
    # one (a card counts with its highest score and any label-1 attempt that day); c labelled.
    # Day 2: a (0.1), b (0.5); b labelled; only two cards, both taken.
    cards = ["a", "a", "b", "c", "d", "a", "b"]
    scores = [0.9, 0.2, 0.8, 0.7, 0.6, 0.1, 0.5]
    times = [T0, T0 + 1, T0 + 2, T0 + 3, T0 + 4, T0 + DAY, T0 + DAY + 1]
    labels = positives(1, 3, 6)
    rows = scored(scores, cards=cards, times=times)
    top2 = evaluate(rows, labels, threshold=0.5, model_version="m", out=tmp_path, top_k=2)
    assert top2.days == 2
    assert top2.model.precision_top_k == pytest.approx((1 / 2 + 1 / 2) / 2)  # day 1: a, b
    top3 = evaluate(rows, labels, threshold=0.5, model_version="m", out=tmp_path, top_k=3)
    assert top3.model.precision_top_k == pytest.approx((2 / 3 + 1 / 2) / 2)  # day 1: a, b, c
    # Ties in a day's highest score: the card first in sort order is taken.
    tied = scored([0.5, 0.5], cards=["y", "x"])
    result = evaluate(tied, positives(1), threshold=0.9, model_version="m", out=tmp_path, top_k=1)
    assert result.model.precision_top_k == 1.0


def test_days_are_utc_days_of_event_time(tmp_path: Path) -> None:
    # The same card just before and just after midnight UTC: two days, each with one card.
    rows = scored([0.9, 0.9], cards=["a", "a"], times=[T0 + DAY - 1, T0 + DAY])
    result = evaluate(rows, positives(1), threshold=0.5, model_version="m", out=tmp_path)
    assert result.days == 2 and result.model.precision_top_k == pytest.approx(0.5)


def test_recall_per_labelled_kind(tmp_path: Path) -> None:
    rows = scored([0.9, 0.2, 0.8, 0.7, 0.1, 0.3], z=[0, 9, 0, 0, 8, 0])
    labels = {
        **positives(0, 1, kind="card_testing"),
        **positives(2, 3, 4, kind="large_amount"),
        **positives(5),
    }
    result = evaluate(rows, labels, threshold=0.5, model_version="m", out=tmp_path)
    assert result.positives_by_kind == {NO_KIND: 1, "card_testing": 2, "large_amount": 3}
    assert result.model.recall_by_kind == {
        NO_KIND: 0.0,
        "card_testing": 0.5,
        "large_amount": pytest.approx(2 / 3),
    }
    baseline = result.baseline
    assert baseline is not None  # a budget of three: z 9, 8, then 0, where the rest tie: all six
    assert baseline.alerts == 6
    assert baseline.recall_by_kind["card_testing"] == 1.0


def kinds_case() -> tuple[ScoredRows, dict[str, Label]]:
    """Eight rows: two of kind a, two of kind b, one labelled 0, three unlabelled."""
    rows = scored(
        [0.95, 0.3, 0.9, 0.85, 0.8, 0.5, 0.2, 0.1], z=[0, 1, 7, 6, 0, 5, 0, 3]
    )  # rows:  a+    a+   b+   b+   0    -    -    -
    labels = {
        **positives(0, 1, kind="a"),
        **positives(2, 3, kind="b"),
        "e4": Label(event_id="e4", label=0),
    }
    return rows, labels


def test_average_precision_per_kind_against_the_rows_not_labelled_1(tmp_path: Path) -> None:
    rows, labels = kinds_case()
    assert rows.score is not None
    z = rows.features[:, NAMES.index(BASELINE_FEATURE)].astype(np.float64)
    result = evaluate(rows, labels, threshold=0.6, model_version="m", out=tmp_path)
    negatives = [4, 5, 6, 7]  # labelled 0 or unlabelled
    for scorer, scores in ((result.model, rows.score), (result.baseline, z)):
        assert scorer is not None
        for kind, own in (("a", [0, 1]), ("b", [2, 3])):
            subset = own + negatives  # the other kind's positives are not in it
            truth = [1] * len(own) + [0] * len(negatives)
            expected = average_precision_score(truth, scores[subset])
            assert scorer.average_precision_by_kind[kind] == pytest.approx(expected, abs=1e-15)
    # By hand. Model, kind a ranked among the negatives: 0.95 (a), 0.8, 0.5, 0.3 (a), 0.2, 0.1:
    # precision 1/1 at the first hit, 2/4 at the second. Kind b: both its rows lead.
    assert result.model.average_precision_by_kind == {
        "a": pytest.approx((1 / 1 + 2 / 4) / 2),
        "b": 1.0,
    }
    # Baseline (z), kind b: z 7 and 6 lead the negatives' 0, 5, 0, 3.
    assert result.baseline is not None
    assert result.baseline.average_precision_by_kind["b"] == 1.0
    stored = Evaluation.model_validate_json((tmp_path / "evaluation.json").read_bytes())
    assert stored.model.average_precision_by_kind == result.model.average_precision_by_kind
    assert set(stored.model.average_precision_by_kind) == set(result.positives_by_kind)


def test_other_kinds_positives_are_not_negatives_of_a_kind(tmp_path: Path) -> None:
    # Kind b's rows score above kind a's second row: counted as negatives of kind a, they would
    # pull its average precision down to (1/1 + 2/6) / 2, and its figure would be the one of
    # every label-1 row against the rest.
    rows, labels = kinds_case()
    assert rows.score is not None
    result = evaluate(rows, labels, threshold=0.6, model_version="m", out=tmp_path)
    a = result.model.average_precision_by_kind["a"]
    assert a == pytest.approx(0.75)
    wrong = average_precision_score([1, 1, 0, 0, 0, 0, 0, 0], rows.score)
    assert wrong == pytest.approx((1 / 1 + 2 / 6) / 2) and a != pytest.approx(wrong)
    # With kind b's rows relabelled as kind a, they are a's positives: one kind, judged as all.
    merged = {**labels, **positives(2, 3, kind="a")}
    together = evaluate(rows, merged, threshold=0.6, model_version="m", out=tmp_path)
    truth = [1, 1, 1, 1, 0, 0, 0, 0]
    assert together.model.average_precision_by_kind == {
        "a": pytest.approx(average_precision_score(truth, rows.score))
    }


def test_average_precision_per_kind_of_challenger_and_on_the_page(tmp_path: Path) -> None:
    rows, labels = kinds_case()
    shadow = np.asarray([0.1, 0.2, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    rows = replace(rows, shadow_score=shadow, shadow_version="c-test")
    result = evaluate(
        rows, labels, threshold=0.6, model_version="m", out=tmp_path, challenger=("c", 0.5)
    )
    assert result.challenger is not None
    negatives = [4, 5, 6, 7]
    assert result.challenger.average_precision_by_kind == {
        "a": pytest.approx(average_precision_score([1, 1, 0, 0, 0, 0], shadow[[0, 1, *negatives]])),
        "b": 1.0,
    }
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    section = page.split("<h2>Average precision by anomaly kind</h2>")[1].split("<h2>")[0]
    assert "<th>champion average precision</th><th>challenger average precision</th>" in section
    assert "<th>baseline average precision</th>" in section
    a_row = section.split("<td>a</td>")[1].split("</tr>")[0]
    assert f'<td class="n">{result.model.average_precision_by_kind["a"]:.3f}</td>' in a_row
    assert f'<td class="n">{result.challenger.average_precision_by_kind["a"]:.3f}</td>' in a_row
    # Without positives there is no table, and an older evaluation.json (no figure by kind)
    # still reads.
    evaluate(rows, {}, threshold=0.6, model_version="m", out=tmp_path / "none")
    none = (tmp_path / "none" / "index.html").read_text(encoding="utf-8")
    assert none.count("No row is labelled 1.") >= 2
    old = json.loads((tmp_path / "evaluation.json").read_text(encoding="utf-8"))
    del old["model"]["average_precision_by_kind"]
    assert Evaluation.model_validate(old).model.average_precision_by_kind == {}


def test_unlabelled_rows_are_label_0_and_stray_labels_are_counted(tmp_path: Path) -> None:
    labels = {
        **positives(0),
        "e1": Label(event_id="e1", label=0),
        "gone": Label(event_id="gone", label=1),
        "gone2": Label(event_id="gone2", label=0),
    }
    result = evaluate(
        scored([0.9, 0.8, 0.1]), labels, threshold=0.5, model_version="m", out=tmp_path
    )
    assert (result.positives, result.labels_matched, result.labels_unmatched) == (1, 2, 2)
    assert result.model.precision == 0.5
    assert any("2 labels name event_ids" in n for n in result.notes)


def test_no_positives(tmp_path: Path) -> None:
    result = evaluate(scored([0.9, 0.1]), {}, threshold=0.5, model_version="m", out=tmp_path)
    model = result.model
    assert model.roc_auc is None and model.average_precision is None and model.recall is None
    assert model.precision == 0.0 and model.precision_top_k == 0.0
    assert any("No row is labelled 1" in n for n in result.notes)
    assert not (tmp_path / "precision_recall.png").exists()
    assert (tmp_path / "score_histogram.png").exists()


def test_every_row_positive(tmp_path: Path) -> None:
    result = evaluate(
        scored([0.9, 0.1]), positives(0, 1), threshold=0.5, model_version="m", out=tmp_path
    )
    assert result.model.roc_auc is None and result.model.average_precision == 1.0
    assert any("ROC-AUC is undefined" in n for n in result.notes)


def test_no_rows(tmp_path: Path) -> None:
    result = evaluate(scored([]), positives(0), threshold=0.5, model_version="m", out=tmp_path)
    assert (result.rows, result.positives, result.days, result.labels_unmatched) == (0, 0, 0, 1)
    for figure in (result.model, result.baseline):
        assert figure is not None
        assert figure.precision is None and figure.precision_top_k is None
        assert figure.alerts == 0 and figure.roc_auc is None
    assert not any((tmp_path / name).exists() for name in CHARTS)
    assert "No rows" in (tmp_path / "index.html").read_text(encoding="utf-8")


def test_rows_without_the_baseline_feature_or_a_score(tmp_path: Path) -> None:
    rows = scored([0.9, 0.1], names=("amount_minor",))
    result = evaluate(rows, positives(0), threshold=0.5, model_version="m", out=tmp_path)
    assert result.baseline is None
    assert "n/a" in (tmp_path / "index.html").read_text(encoding="utf-8")
    unscored = ScoredRows(
        [], np.zeros(0, np.int64), [], [], [], np.zeros((0, 0), np.float32), (), "v"
    )
    with pytest.raises(ValueError, match="no model score"):
        evaluate(unscored, {}, threshold=0.5, model_version="m", out=tmp_path)
    with pytest.raises(ValueError, match="finite"):
        evaluate(rows, {}, threshold=float("nan"), model_version="m", out=tmp_path)


def test_non_finite_scores_rank_without_failing(tmp_path: Path) -> None:
    rows = scored([0.9, 0.1, 0.2, 0.3], z=[float("inf"), float("nan"), float("-inf"), 1.0])
    result = evaluate(rows, positives(0), threshold=0.5, model_version="m", out=tmp_path)
    assert result.baseline is not None and result.baseline.average_precision == 1.0
    assert json.loads((tmp_path / "evaluation.json").read_text(encoding="utf-8"))["baseline"]


# The page.


def test_page_charts_and_json_are_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    n = 600
    y = rng.random(n) < 0.05
    scores = np.where(y, rng.uniform(0.5, 1.0, n), rng.uniform(0.0, 0.7, n))
    times = T0 + np.sort(rng.integers(0, 3 * DAY, n))
    rows = scored(scores.tolist(), z=rng.normal(0, 1, n).tolist(), times=times.tolist())
    labels = positives(*np.flatnonzero(y).tolist(), kind="burst")
    result = evaluate(rows, labels, threshold=0.6, model_version="m-test", out=tmp_path)
    for name in CHARTS:
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    for name in CHARTS:
        assert f'src="{name}"' in page
    assert "precision of the top 10 cards per day" in page and "ROC-AUC" in page
    stored = Evaluation.model_validate_json((tmp_path / "evaluation.json").read_bytes())
    assert stored == result
    # An evaluation without positives leaves no stale curve of the earlier one behind.
    evaluate(rows, {}, threshold=0.6, model_version="m-test", out=tmp_path)
    assert not (tmp_path / "precision_recall.png").exists()


def test_hostile_kind_and_version_are_escaped_and_masked(tmp_path: Path) -> None:
    kind = f'<script>alert("x")</script> {PANS[0]} \u202e'
    version = f"<b>v1</b> {PANS[1]}"
    rows = scored([0.9, 0.1])
    result = evaluate(
        rows, positives(0, kind=kind), threshold=0.5, model_version=version, out=tmp_path
    )
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "<script>" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "\u202e" not in page and "\\u202e" in page
    assert pans_in_clear(page) == []
    assert pans_in_clear((tmp_path / "evaluation.json").read_text(encoding="utf-8")) == []
    assert list(result.positives_by_kind) == list(result.model.recall_by_kind)


def test_many_days_are_binned(tmp_path: Path) -> None:
    # Two rows five years apart: the chart bins days instead of drawing 1,800 bars.
    rows = scored([0.9, 0.8], times=[T0, T0 + 5 * 365 * DAY])
    result = evaluate(rows, positives(0), threshold=0.5, model_version="m", out=tmp_path)
    assert result.days == 2 and (tmp_path / "alerts_per_day.png").exists()
