"""The notebooks' workflow functions (models/workflow.py) on hand-made rows: the budget table's
figures, the feature log read back as it was written (and refused when it is of other features),
the traffic and alert tables, the split in time and the labels known by the end of the fit,
retrain (with and without the supervised stage), compare, and the publish gate both ways, on
small random rows."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models import train as training
from models import workflow
from models.evaluate import Evaluation
from models.labels import Label
from models.train import Trained
from monitor.core.alerts import Alert, alert_id
from monitor.core.events import to_datetime
from monitor.core.scored import ScoredRows
from monitor.scoring.features import FEATURE_VERSION, FEATURES
from monitor.scoring.model import Model, load_model
from monitor.streaming.featurelog import FeatureLog

T0 = 1_793_491_200_000_000  # 2026-11-01T00:00:00Z, a Sunday
HOUR = 3_600_000_000
DAY = 24 * HOUR


def rows_of(
    times: list[int],
    *,
    first: int = 0,
    scores: list[float] | None = None,
    version: str | None = "iforest-a",
    names: tuple[str, ...] = FEATURES,
    feature_version: str = FEATURE_VERSION,
    seed: int = 0,
) -> ScoredRows:
    n = len(times)
    ids = range(first, first + n)
    features = np.random.default_rng(seed).normal(size=(n, len(names))).astype(np.float32)
    return ScoredRows(
        event_id=[f"e{i:05d}" for i in ids],
        event_time_us=np.asarray(times, dtype=np.int64),
        card_id=[f"card{i % 3}" for i in ids],
        terminal_id=[f"t{i % 2}" for i in ids],
        merchant_id=["m1"] * n,
        features=features,
        feature_names=names,
        feature_version=feature_version,
        score=None if scores is None else np.asarray(scores, dtype=np.float64),
        model_version=None if scores is None else version,
    )


def labelled(*positives: str, negatives: tuple[str, ...] = ()) -> dict[str, Label]:
    labels = {e: Label(event_id=e, label=1, kind="distant_spree") for e in positives}
    labels.update({e: Label(event_id=e, label=0) for e in negatives})
    return labels


# -- the budget table ------------------------------------------------------------------------


def test_budget_table_figures_on_hand_made_rows() -> None:
    # 1,000 attempts over two UTC days scoring 0.001, 0.002, ... 1.000 (row k: (k + 1) / 1000).
    # At rate 0.002 the threshold is the 99.8th percentile taken upwards, 0.999: one alert (1.0).
    # At rate 0.005 it is 0.996: four alerts (0.997 ... 1.0).
    n = 1000
    rows = rows_of(
        [T0 + k * (2 * DAY // n) for k in range(n)], scores=[(k + 1) / n for k in range(n)]
    )
    labels = labelled("e00999", "e00997", "e00500", "elsewhere", negatives=("e00998",))
    table = workflow.budget_table(rows, labels, rates=(0.002, 0.005))
    assert table.columns == (
        "alert_rate",
        "threshold",
        "alerts",
        "alerts_per_day",
        "true_alerts",
        "precision",
        "recall",
    )
    assert table.rows == [
        (0.002, 0.999, 1, 0.5, 1, 1.0, 1 / 3),
        (0.005, 0.996, 4, 2.0, 2, 0.5, 2 / 3),
    ]
    assert "1,000 scored attempts, 3 labelled 1" in table.title


def test_budget_table_leaves_out_unscored_rows_and_says_when_nothing_is_scored() -> None:
    rows = rows_of([T0 + k for k in range(4)], scores=[0.1, 0.2, float("nan"), 0.9])
    table = workflow.budget_table(rows, labelled("e00003"), rates=(0.25,))
    # Three scored rows: the 75th percentile taken upwards is 0.9, so no row is above it.
    assert table.dicts() == [
        {
            "alert_rate": 0.25,
            "threshold": 0.9,
            "alerts": 0,
            "alerts_per_day": 0.0,
            "true_alerts": 0,
            "precision": None,
            "recall": 0.0,
        }
    ]
    with pytest.raises(ValueError, match="no row carries a score"):
        workflow.budget_table(rows_of([T0]), {})
    with pytest.raises(ValueError, match="between 0 and 1"):
        workflow.budget_table(rows, {}, rates=(0.0,))


def test_budget_chart_draws() -> None:
    rows = rows_of([T0 + k for k in range(100)], scores=[k / 100 for k in range(100)])
    table = workflow.budget_table(rows, labelled("e00099"), rates=(0.01, 0.05))
    assert workflow.picture(workflow.budget_chart(table)).png.startswith(b"\x89PNG")


# -- the feature log read back ---------------------------------------------------------------


def test_feature_log_round_trip(tmp_path: Path) -> None:
    first = rows_of([T0 + HOUR + 5, T0 + 7, T0 + 2 * HOUR], scores=[0.3, 0.6, 0.9])
    second = rows_of([T0 + 9, T0 + DAY], first=3, scores=[0.4, 0.5], seed=1)
    with FeatureLog(tmp_path) as log:
        log.write(first)
        log.write(second)
    # A restart scores e00001 again (logged again, read once), then a reload changes the model.
    again = workflow.take(first, np.array([1]))
    later = rows_of([T0 + DAY + HOUR], first=5, scores=[0.7], version="iforest-b")
    with FeatureLog(tmp_path) as log:
        log.write(again)
        log.write(later)
    rows = workflow.read_feature_log(tmp_path)
    assert rows.feature_names == FEATURES and rows.feature_version == FEATURE_VERSION
    assert rows.event_id == ["e00001", "e00003", "e00000", "e00002", "e00004", "e00005"]
    times = [T0 + 7, T0 + 9, T0 + HOUR + 5, T0 + 2 * HOUR, T0 + DAY, T0 + DAY + HOUR]
    assert rows.event_time_us.tolist() == times
    assert rows.card_id == ["card1", "card0", "card0", "card2", "card1", "card2"]
    assert rows.terminal_id == ["t1", "t1", "t0", "t0", "t0", "t1"]
    assert rows.features.dtype == np.float32
    expected = np.stack([first.features[1], second.features[0], first.features[0]])
    np.testing.assert_array_equal(rows.features[:3], expected)
    np.testing.assert_array_equal(rows.features[3:5], [first.features[2], second.features[1]])
    np.testing.assert_array_equal(rows.features[5], later.features[0])
    assert rows.score is not None and rows.score.tolist() == [0.6, 0.4, 0.3, 0.9, 0.5, 0.7]
    assert rows.model_version == "iforest-a, iforest-b"  # in the order they first appear
    assert rows.shadow_score is None
    assert rows.unsupervised_score is None  # none was logged (the rows had none)


def test_the_forests_score_is_read_back(tmp_path: Path) -> None:
    rows = replace(
        rows_of([T0, T0 + 1], scores=[0.9, 0.2]), unsupervised_score=np.array([0.6, 0.5])
    )
    with FeatureLog(tmp_path) as log:
        log.write(rows)
    back = workflow.read_feature_log(tmp_path)
    assert back.unsupervised_score is not None
    assert back.unsupervised_score.tolist() == [0.6, 0.5]


def test_a_log_written_without_a_model_reads_without_scores(tmp_path: Path) -> None:
    with FeatureLog(tmp_path) as log:
        log.write(rows_of([T0, T0 + 1]))
    rows = workflow.read_feature_log(tmp_path)
    assert len(rows) == 2 and rows.score is None and rows.model_version is None


def test_a_log_of_other_features_is_refused(tmp_path: Path) -> None:
    with FeatureLog(tmp_path / "old") as log:
        log.write(rows_of([T0], feature_version="posmon-features/0"))
    with pytest.raises(workflow.FeatureLogError, match=f"'posmon-features/0'.*'{FEATURE_VERSION}'"):
        workflow.read_feature_log(tmp_path / "old")
    with FeatureLog(tmp_path / "fewer") as log:
        log.write(rows_of([T0], names=FEATURES[:-1]))
    with pytest.raises(workflow.FeatureLogError, match=f"no column {FEATURES[-1]}"):
        workflow.read_feature_log(tmp_path / "fewer")
    with FeatureLog(tmp_path / "mixed") as log:
        log.write(rows_of([T0]))
        log.flush()
        log.write(rows_of([T0 + 1], first=1, feature_version="posmon-features/99"))
    with pytest.raises(workflow.FeatureLogError, match="posmon-features/99"):
        workflow.read_feature_log(tmp_path / "mixed")
    (tmp_path / "empty").mkdir()
    with pytest.raises(workflow.FeatureLogError, match="no feature log files"):
        workflow.read_feature_log(tmp_path / "empty")
    with pytest.raises(workflow.FeatureLogError, match="no such directory"):
        workflow.read_feature_log(tmp_path / "missing")


# -- traffic, alerts, labels -----------------------------------------------------------------


def test_traffic_summary_counts_days_hours_and_distinct_keys() -> None:
    times = [T0 + 1, T0 + HOUR, T0 + HOUR + 2, T0 + DAY + 3 * HOUR]
    traffic = workflow.traffic_summary(rows_of(times, scores=[0.1, 0.2, 0.3, 0.4]))
    assert traffic.rows == 4
    assert traffic.first_event == "2026-11-01T00:00:00.000001Z"
    assert traffic.per_day.rows == [("2026-11-01", 3, 3, 2, 1), ("2026-11-02", 1, 1, 2 - 1, 1)]
    attempts = traffic.per_hour.column("attempts")
    assert attempts[:4] == [1, 2, 0, 1] and sum(v for v in attempts if isinstance(v, int)) == 4
    assert traffic.score_quantiles.dicts()[-1] == {"quantile": 1.0, "score": 0.4}
    assert workflow.picture(workflow.traffic_chart(traffic, 0.35)).png.startswith(b"\x89PNG")
    empty = workflow.traffic_summary(rows_of([]))
    assert empty.rows == 0 and empty.per_day.rows == [] and empty.score_quantiles.rows == []


def alert(detector: str, key: str, day: int, count: int = 1) -> Alert:
    at = to_datetime(T0 + day * DAY + HOUR)
    return Alert(
        alert_id=alert_id(detector, key),
        detector=detector,
        severity="warning",
        terminal_id="t1",
        merchant_id="m1",
        card_id=None,
        first_seen=at,
        last_seen=at + timedelta(minutes=count),
        event_ids=[f"{key}-{i}" for i in range(count)],
        count=count,
        summary="test",
        details={},
    )


def test_alerts_summary_counts_each_alert_once_on_its_first_day(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    updated = [alert("small_amount_burst", "a", 0), alert("small_amount_burst", "a", 0, 3)]
    others = [alert("model_outlier", "b", 0), alert("model_outlier", "c", 1)]
    path.write_text("".join(a.model_dump_json() + "\n" for a in [*updated, *others]) + "\n")
    table = workflow.alerts_summary(path)
    assert table.columns == ("day", "model_outlier", "small_amount_burst", "total")
    assert table.rows == [("2026-11-01", 1, 1, 2), ("2026-11-02", 1, 0, 1)]
    path.write_text(json.dumps({"detector": "nothing"}) + "\n")
    with pytest.raises(ValueError, match=r"alerts.jsonl:1: not an alert"):
        workflow.alerts_summary(path)
    with pytest.raises(ValueError, match="no such file"):
        workflow.alerts_summary(tmp_path / "missing.jsonl")


def test_labels_summary_by_kind() -> None:
    rows = rows_of([T0, T0 + HOUR])
    known = "2026-11-04T00:00:00Z"  # three days after the attempt
    labels = {
        "e00000": Label.model_validate(
            {"event_id": "e00000", "label": 1, "kind": "night_velocity", "known_at": known}
        ),
        "e00001": Label(event_id="e00001", label=0),
        "gone": Label(event_id="gone", label=1, kind="night_velocity"),
        "x": Label(event_id="x", label=1),
    }
    table = workflow.labels_summary(rows, labels)
    assert table.rows == [("(no kind)", 1, 0, None), ("night_velocity", 2, 1, 3.0)]
    assert "1 lines labelled 0" in table.title


# -- tables, settings, splitting -------------------------------------------------------------


def test_table_shows_data_as_text() -> None:
    table = workflow.Table(("name", "n", "share"), [("<b>x</b>", 12345, None)], "t")
    html = table._repr_html_()
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>" not in html and "12,345" in html
    assert str(table).splitlines() == [
        "t",
        "name           n  share",
        "<b>x</b>  12,345  n/a",
    ]


def test_path_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MODELS_SOMETHING", raising=False)
    assert workflow.path_setting("MODELS_SOMETHING", ".demo/x") == workflow.PROJECT / ".demo/x"
    assert workflow.path_setting("MODELS_SOMETHING", tmp_path) == tmp_path
    monkeypatch.setenv("MODELS_SOMETHING", "here/there")
    assert workflow.path_setting("MODELS_SOMETHING", ".demo/x") == Path("here/there")


def test_split_by_time_keeps_every_row_once() -> None:
    rows = rows_of([T0 + k * HOUR for k in range(7)], scores=[k / 10 for k in range(7)])
    earlier, later = workflow.split_by_time(rows, earlier=0.5)
    assert earlier.event_id == ["e00000", "e00001", "e00002"]
    assert later.event_id == ["e00003", "e00004", "e00005", "e00006"]
    assert later.score is not None and later.score.tolist() == [0.3, 0.4, 0.5, 0.6]
    np.testing.assert_array_equal(later.features, rows.features[3:])
    with pytest.raises(ValueError, match="between 0 and 1"):
        workflow.split_by_time(rows, earlier=1.0)


# -- retrain, compare, publish ---------------------------------------------------------------


def test_retrain_compare_publish(tmp_path: Path) -> None:
    n = 600
    rows = rows_of([T0 + k * 60_000_000 for k in range(n)], seed=3)
    champion = workflow.retrain(rows, alert_rate=0.01, seed=0).model
    challenger = workflow.retrain(rows, alert_rate=0.01, seed=1)
    assert challenger.model.card.training.files == ["feature log"]
    assert challenger.model.card.training.rows == n
    assert challenger.model.card.supervised is None  # no labels: the forests alone
    labels = labelled("e00010", "e00500")
    comparison = workflow.compare(champion, challenger.model, rows, labels, tmp_path / "out")
    assert comparison.champion.model_version == champion.version
    assert comparison.challenger.model_version == challenger.model.version
    assert comparison.champion.threshold == champion.threshold
    assert comparison.champion.rows == comparison.challenger.rows == n
    for role in ("champion", "challenger"):
        assert (tmp_path / "out" / role / "evaluation.json").is_file()
    assert workflow.read_comparison(tmp_path / "out") == comparison
    assert workflow.read_comparison(tmp_path / "nothing") is None
    table = comparison.table()
    assert table.columns == ("figure", "champion", "challenger")
    assert table.rows[0] == ("model", champion.version, challenger.model.version)
    assert ("positives", 2, 2) in table.rows
    by_kind = comparison.challenger.model.average_precision_by_kind
    assert (
        "average precision of distant_spree",
        comparison.champion.model.average_precision_by_kind["distant_spree"],
        by_kind["distant_spree"],
    ) in table.rows
    judgement = comparison.judgement
    assert judgement.challenger == comparison.challenger.model.average_precision
    assert judgement.champion == comparison.champion.model.average_precision
    assert comparison.card_figures() == {
        "held_back_rows": n,
        "held_back_average_precision": judgement.challenger,
        "champion_average_precision": judgement.champion,
    }
    # The judgement in the card (the version stays: it is the arrays'), published when the
    # gate allows it, or forced.
    challenger = challenger.judged(comparison.card_figures())
    published = workflow.publish(
        challenger, tmp_path / "live", comparison=comparison, force=judgement.worse
    )
    assert published.version == load_model(tmp_path / "live").version == challenger.model.version
    again = workflow.load_trained(tmp_path / "live")
    assert again.card_json == challenger.card_json and again.arrays == challenger.arrays
    card = workflow.card_table(published).dicts()
    assert card[0] == {"field": "version", "value": published.version}
    assert {"field": "held_back_rows", "value": n} in card


# -- the publish gate ------------------------------------------------------------------------


def judged_as(
    comparison: workflow.Comparison, challenger: float | None, champion: float | None
) -> workflow.Comparison:
    """`comparison` with the two models' average precisions replaced."""

    def with_ap(evaluation: Evaluation, value: float | None) -> Evaluation:
        figures = evaluation.model.model_copy(update={"average_precision": value})
        return evaluation.model_copy(update={"model": figures})

    return workflow.Comparison(
        with_ap(comparison.champion, champion), with_ap(comparison.challenger, challenger)
    )


GateCase = tuple[Model, Trained, workflow.Comparison]  # champion, challenger, comparison


@pytest.fixture(scope="module")
def gate_case(tmp_path_factory: pytest.TempPathFactory) -> GateCase:
    rows = rows_of([T0 + k * 60_000_000 for k in range(300)], seed=7)
    champion = workflow.retrain(rows, alert_rate=0.01, seed=0).model
    challenger = workflow.retrain(rows, alert_rate=0.01, seed=1)
    out = tmp_path_factory.mktemp("gate") / "comparison"
    comparison = workflow.compare(champion, challenger.model, rows, labelled("e00001"), out)
    return champion, challenger, comparison


def test_the_gate_refuses_a_worse_challenger_unless_forced(
    gate_case: GateCase, tmp_path: Path
) -> None:
    champion, challenger, comparison = gate_case
    worse = judged_as(comparison, 0.25, 0.5)
    decision = workflow.publish_decision(challenger.model, worse)
    assert not decision.publish and decision.reason.startswith("worse than the champion")
    assert (decision.challenger_average_precision, decision.champion_average_precision) == (
        0.25,
        0.5,
    )
    assert decision.champion == champion.version and decision.judged_rows == 300
    assert decision.table().dicts()[0] == {"field": "decision", "value": "refuse"}
    live = tmp_path / "live"
    with pytest.raises(
        workflow.PublishError, match=r"not published: worse .*0\.2500 against 0\.5000"
    ):
        workflow.publish(challenger, live, comparison=worse)
    assert not live.exists()  # nothing written
    published = workflow.publish(challenger, live, comparison=worse, force=True)
    assert published.version == challenger.model.version == load_model(live).version


def test_the_gate_publishes_a_challenger_at_least_as_good(
    gate_case: GateCase, tmp_path: Path
) -> None:
    _, challenger, comparison = gate_case
    for mine, theirs in ((0.5, 0.25), (0.5, 0.5)):
        better = judged_as(comparison, mine, theirs)
        decision = workflow.publish_decision(challenger.model, better)
        assert decision.publish and decision.reason.startswith("at least as good")
        assert "publish" in str(decision) and "<table>" in decision._repr_html_()
        live = tmp_path / f"live-{theirs}"
        assert workflow.publish(challenger, live, comparison=better).version == (
            challenger.model.version
        )


def test_the_gate_refuses_a_challenger_never_judged(gate_case: GateCase, tmp_path: Path) -> None:
    champion, challenger, comparison = gate_case
    live = tmp_path / "live"
    # No comparison at all; one of another model (03 run again, or the champion's own); one
    # without a judged attempt labelled 1 (no average precision).
    other = workflow.Comparison(comparison.champion, comparison.champion)
    cases = [
        (None, "never judged: no comparison"),
        (other, f"never judged: the comparison judged {champion.version}"),
        (judged_as(comparison, None, None), "never judged: no judged attempt is labelled 1"),
        (judged_as(comparison, 0.5, None), "never judged: no judged attempt is labelled 1"),
    ]
    for case, why in cases:
        assert not workflow.publish_decision(challenger.model, case).publish
        with pytest.raises(workflow.PublishError, match=why):
            workflow.publish(challenger, live, comparison=case)
        assert not live.exists()
    assert workflow.publish(challenger, live, comparison=None, force=True).version == (
        challenger.model.version
    )


# -- the split in time and the labels known by then ------------------------------------------


def to_rfc3339(t_us: int) -> str:
    return to_datetime(t_us).isoformat().replace("+00:00", "Z")


def verdict(event_id: str, label: int, known_at_us: int | None, kind: str = "x") -> Label:
    known = None if known_at_us is None else to_rfc3339(known_at_us)
    return Label.model_validate(
        {"event_id": event_id, "label": label, "known_at": known, "kind": kind}
    )


def test_known_labels_are_the_verdicts_known_by_then() -> None:
    verdicts = [
        verdict("a", 1, T0 + 2 * HOUR),
        verdict("a", 0, T0 + 5 * HOUR),  # corrected later: genuine from 5 h on
        verdict("b", 1, T0 + 3 * HOUR),
        verdict("b", 0, T0 + 1 * HOUR),  # a later line, known earlier: b was 1 from 3 h on
        verdict("c", 1, None),  # never known in time
        verdict("d", 0, T0 + HOUR),
        verdict("d", 1, T0 + HOUR),  # the same time: the later line wins
        Label.model_validate({"alert_id": "al1", "label": 1, "known_at": to_rfc3339(T0)}),
    ]
    assert workflow.known_labels(verdicts, T0) == {}
    assert workflow.known_labels(verdicts, T0 + HOUR) == {"b": 0, "d": 1}
    assert workflow.known_labels(verdicts, T0 + 2 * HOUR) == {"a": 1, "b": 0, "d": 1}
    assert workflow.known_labels(verdicts, T0 + 4 * HOUR) == {"a": 1, "b": 1, "d": 1}
    assert workflow.known_labels(verdicts, T0 + 5 * HOUR) == {"a": 0, "b": 1, "d": 1}
    final = {v.event_id: v for v in verdicts if v.event_id}  # as read_labels gives them
    assert workflow.known_labels(final, T0 + 5 * HOUR) == {"a": 0, "b": 0, "d": 1}


def test_label_delay_days() -> None:
    rows = rows_of([T0 + k * HOUR for k in range(20)])
    verdicts = [verdict(f"e{k:05d}", 1, T0 + k * HOUR + (k + 1) * DAY // 10) for k in range(20)]
    verdicts += [
        verdict("e00000", 0, T0 + 90 * DAY),  # a label 0: not a label 1's delay
        verdict("elsewhere", 1, T0 + 90 * DAY),  # not on these rows
        verdict("e00001", 1, None),
    ]
    # Delays 0.1, 0.2, ... 2.0 days: their 95th percentile (linear) is 1.905.
    assert workflow.label_delay_days(rows, verdicts) == pytest.approx(1.905)
    assert workflow.label_delay_days(rows, verdicts, quantile=0.5) == pytest.approx(1.05)
    assert workflow.label_delay_days(rows, verdicts[20:]) is None


def test_split_for_retraining() -> None:
    # 31 hourly attempts: a span of 30 h; judged the last third (10 h), a gap of 6 h before.
    rows = rows_of([T0 + k * HOUR for k in range(31)])
    split = workflow.split_for_retraining(rows, gap_days=0.25)
    assert split.judged_from_us == T0 + 20 * HOUR and split.fit_until_us == T0 + 14 * HOUR
    assert split.judged.event_id == [f"e{k:05d}" for k in range(20, 31)]
    assert split.fit.event_id == [f"e{k:05d}" for k in range(14)]
    assert split.gap_days == 0.25 and split.held_back_days == pytest.approx(10 / 24)
    assert split.table().rows[0][1:] == (to_rfc3339(T0), to_rfc3339(T0 + 14 * HOUR), 14)
    assert split.table().rows[2][3] == 11
    # The same cut as models.train.held_back_split, which posmon train --labels uses.
    fit, judged = training.held_back_split(rows, held_back_days=1 / 3, gap_days=0.25)
    chosen = workflow.split_for_retraining(rows, gap_days=0.25, held_back_days=1 / 3)
    assert (chosen.fit.event_id, chosen.judged.event_id) == (fit.event_id, judged.event_id)
    with pytest.raises(ValueError, match="leave 0 attempts to fit on"):
        workflow.split_for_retraining(rows, gap_days=1.0)
    with pytest.raises(ValueError, match="at least 0 days"):
        workflow.split_for_retraining(rows, gap_days=-1.0)
    with pytest.raises(ValueError, match="no attempts"):
        workflow.split_for_retraining(rows_of([]), gap_days=0.0)


def test_retrain_with_labels_learns_only_what_was_known_by_the_end_of_the_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    n = 600
    rows = rows_of([T0 + k * 60_000_000 for k in range(n)], seed=5)
    end = T0 + 400 * 60_000_000  # the end of the fit period
    ones = [3, 50, 120, 200, 333, 399]
    verdicts = [verdict(f"e{k:05d}", 1, T0 + k * 60_000_000 + HOUR) for k in ones]
    verdicts += [
        verdict("e00010", 1, end + DAY),  # known only after the fit
        verdict("e00020", 1, None),  # never known in time
        verdict("e00050", 0, end - 1),  # corrected before the end: genuine
        verdict("e00060", 0, T0),
    ]
    seen: dict[str, Any] = {}

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return training.train(*args, **kwargs)

    monkeypatch.setattr(workflow, "train", spy)
    trained = workflow.retrain(rows, alert_rate=0.01, seed=0, labels=verdicts, known_by_us=end)
    y = seen["labels"]
    # Each label 1 is known an hour after its attempt: e00399's after the end (0), e00050's
    # corrected to 0 before it.
    expected = [k for k in ones if k != 50 and T0 + k * 60_000_000 + HOUR <= end]
    assert np.flatnonzero(y).tolist() == expected == [3, 120, 200, 333]
    stage = trained.model.card.supervised
    assert stage is not None and stage.calibrated
    assert stage.labels["rows_labelled_1_known"] == 4
    assert stage.labels["rows_labelled_1_not_known_by_then"] == 3  # e00010, e00020, e00399
    assert stage.labels["known_by"] == to_rfc3339(end)
    assert stage.labels["positives"] + stage.labels["calibration_positives"] == 4  # type: ignore[operator]
    assert trained.model.version.startswith("supervised-")
    card = {row[0]: row[1] for row in workflow.card_table(trained.model).rows}
    assert str(card["supervised stage"]).endswith("calibrated")
    # The final labels (read_labels) work as well; too few known labels 1 is refused.
    by_id = {v.event_id: v for v in verdicts if v.event_id}
    workflow.retrain(rows, alert_rate=0.01, seed=0, labels=by_id, known_by_us=end)
    assert np.flatnonzero(seen["labels"]).tolist() == [3, 120, 200, 333]
    # By 2 h, e00003 and e00050 were known as 1: too few to fit and calibrate the stage.
    with pytest.raises(training.TrainingError, match="2 of the 600 attempts are known as labe"):
        workflow.retrain(rows, alert_rate=0.01, seed=0, labels=verdicts, known_by_us=T0 + HOUR * 2)
    with pytest.raises(training.TrainingError, match=r"both labels.*; 0 of the 600"):
        workflow.retrain(rows, alert_rate=0.01, seed=0, labels=verdicts, known_by_us=T0)


def test_scoring_rows_of_other_features_is_refused() -> None:
    rows = rows_of([T0 + k for k in range(300)], seed=4)
    model = workflow.retrain(rows, alert_rate=0.01, seed=0).model
    fewer = rows_of([T0], names=FEATURES[:-1])
    with pytest.raises(ValueError, match="reads"):
        workflow.score(fewer, model)
    scored = workflow.score(rows, model)
    assert scored.model_version == model.version and scored.score is not None
    np.testing.assert_array_equal(scored.score, model.score(rows.features))
