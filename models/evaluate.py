"""`posmon evaluate`'s figures and page: how well the model's scores find the labelled anomalies,
beside a baseline any rule could reach (the card's amount z-score).

`evaluate` joins the scored rows (`ScoredRows`, from `models.rows`) with the labels by event_id
(a row without a label is label 0; a label without a row is counted, `labels_unmatched`), and
computes for the model and for the baseline:

- precision and recall at the threshold (a row is an alert when its score is above the
  threshold, as the `model_outlier` detector decides);
- ROC-AUC and average precision (scikit-learn), which judge the whole ranking;
- the precision of the top-k cards per UTC day (each day's k cards with the highest score that
  day; the share of them with a label-1 attempt that day; the mean over days): what an analyst
  reading k cards a day would find;
- recall at the threshold per labelled anomaly kind, and average precision per kind: for kind K
  the rows labelled 1 of kind K are the positives and the rows labelled 0 or unlabelled the
  negatives, the other kinds' positives left out (so a kind is judged on how its attempts rank
  against the genuine traffic, not against the other anomalies).

The baseline scores each row by its `amount_robust_z` feature (how far the amount lies from the
card's recent amounts) and flags as many rows as the model does, so that the two precisions and
recalls compare at one alert budget. Undefined figures (no positives, no alerts, no rows) are
null, with a note saying why. Everything lands in `out/`: `evaluation.json` (the `Evaluation`),
`index.html` and its PNG charts, drawn as `monitor.report` draws (Agg, text drawn as written);
every text from the data is `printable` and HTML-escaped.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np
import numpy.typing as npt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter, StrMethodFormatter
from pydantic import BaseModel, ConfigDict, Field
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from models.labels import Label
from monitor.core.events import to_datetime
from monitor.core.scored import ScoredRows
from monitor.core.text import printable
from monitor.report.charts import MAX_BARS, plain_text
from monitor.report.page import PAGE_CSS

BASELINE_FEATURE = "amount_robust_z"
NO_KIND = "(no kind)"  # the kind of a label-1 row whose label names none
_BARS_UP_TO = 62  # days drawn as bars side by side; more as steps
CURVE_POINTS = 2000  # points drawn of a precision-recall curve (it has one per distinct score)
_DAY_US = 86_400_000_000
_MODEL_COLOUR, _BASELINE_COLOUR, _CHALLENGER_COLOUR = "#4c78a8", "#f58518", "#54a24b"
_BASELINE_NAME = f"baseline ({BASELINE_FEATURE})"

Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]
Ints = npt.NDArray[np.int64]


class Figures(BaseModel):
    """One scorer's figures (the model's or the baseline's); None where undefined."""

    model_config = ConfigDict(frozen=True)

    # Model: alert when score > threshold. Baseline: the model's number of alerts' largest
    # values, so its threshold is the lowest of them, alert when z >= it. None: no row flagged.
    threshold: float | None
    alerts: int  # rows flagged
    true_alerts: int  # of which label 1
    precision: float | None  # true_alerts / alerts
    recall: float | None  # true_alerts / positives
    roc_auc: float | None
    average_precision: float | None
    precision_top_k: float | None  # mean over UTC days of the top-k cards' share with a label 1
    recall_by_kind: dict[str, float]  # label-1 rows of each kind flagged / label-1 rows of it
    # Average precision of each kind's label-1 rows against the rows labelled 0 or unlabelled
    # (the other kinds' label-1 rows left out). Empty in an evaluation.json written before it.
    average_precision_by_kind: dict[str, float] = Field(default_factory=dict)


class Evaluation(BaseModel):
    """`posmon evaluate`'s result, written as `evaluation.json`."""

    model_config = ConfigDict(frozen=True)

    model_version: str  # as given, `printable` (card numbers masked, controls escaped)
    feature_version: str  # likewise
    alert_rule: str = "score > threshold"
    threshold: float
    top_k: int
    rows: int
    positives: int  # rows labelled 1
    days: int  # UTC days with at least one row
    labels_matched: int
    labels_unmatched: int  # labels whose event_id is not among the rows
    positives_by_kind: dict[str, int]
    baseline_feature: str = BASELINE_FEATURE
    model: Figures
    baseline: Figures | None  # None when the rows lack the baseline's feature
    # A second model on the same rows (the rows' shadow scores): the challenger, `model` being
    # the champion. None when only one model was evaluated.
    challenger_version: str | None = None
    challenger: Figures | None = None
    notes: list[str]


def evaluate(
    rows: ScoredRows,
    labels: Mapping[str, Label],
    *,
    threshold: float,
    model_version: str,
    out: Path,
    top_k: int = 10,
    challenger: tuple[str, float] | None = None,
) -> Evaluation:
    """The figures of `rows` against `labels`; writes `out/evaluation.json`, `out/index.html`
    and its charts. With `challenger` (its version and threshold), the rows' shadow scores are
    a second model's, judged beside the first on the same page. Raises ValueError when the rows
    carry no score (or no shadow score for a challenger), a threshold is not finite or `top_k`
    is below 1."""
    if rows.score is None:
        raise ValueError("the rows carry no model score: evaluate needs a model")
    if not math.isfinite(threshold):
        raise ValueError("the threshold must be a finite number")
    if top_k < 1:
        raise ValueError("top_k must be at least 1")
    n = len(rows)
    matched = sum(1 for event_id in set(rows.event_id) if event_id in labels)
    label_of = [labels.get(event_id) for event_id in rows.event_id]
    y = np.fromiter((lab is not None and lab.label == 1 for lab in label_of), bool, count=n)
    kinds = [_kind(lab) for lab, positive in zip(label_of, y.tolist(), strict=True) if positive]
    day = np.floor_divide(np.asarray(rows.event_time_us, dtype=np.int64), _DAY_US)
    card = np.unique(np.asarray(rows.card_id, dtype=str), return_inverse=True)[1].astype(np.int64)
    ctx = _Context(y, kinds, day, card, top_k)

    model_scores = _finite(np.asarray(rows.score, dtype=np.float64))
    model = ctx.figures(model_scores, threshold, model_scores > threshold)
    first = "champion" if challenger is not None else "model"
    series = [_Series(first, _MODEL_COLOUR, model_scores, model, model_scores > threshold)]
    notes = _notes(n, ctx.positives, model, len(labels) - matched)
    second: Figures | None = None
    if challenger is not None:
        bar = challenger[1]
        if rows.shadow_score is None:
            raise ValueError("the rows carry no challenger (shadow) score")
        if not math.isfinite(bar):
            raise ValueError("the challenger's threshold must be a finite number")
        scores = _finite(np.asarray(rows.shadow_score, dtype=np.float64))
        second = ctx.figures(scores, bar, scores > bar)
        series.append(_Series("challenger", _CHALLENGER_COLOUR, scores, second, scores > bar))
    baseline: Figures | None = None
    if BASELINE_FEATURE in rows.feature_names:
        column = rows.features[:, rows.feature_names.index(BASELINE_FEATURE)]
        baseline_scores = _finite(np.asarray(column, dtype=np.float64))
        budget = _same_budget(baseline_scores, model.alerts)
        flagged = _none(n) if budget is None else baseline_scores >= budget
        baseline = ctx.figures(baseline_scores, budget, flagged)
        series.append(_Series(_BASELINE_NAME, _BASELINE_COLOUR, baseline_scores, baseline, flagged))
        if baseline.alerts != model.alerts:
            notes.append(
                f"The baseline flags {baseline.alerts:,} rows, not {model.alerts:,}: rows tie "
                "at its threshold."
            )
    else:
        notes.append(f"The rows have no {BASELINE_FEATURE} feature: no baseline.")
    evaluation = Evaluation(
        model_version=printable(model_version),
        feature_version=printable(rows.feature_version),
        threshold=threshold,
        top_k=top_k,
        rows=n,
        positives=ctx.positives,
        days=len(np.unique(day)),
        labels_matched=matched,
        labels_unmatched=len(labels) - matched,
        positives_by_kind=dict(sorted(Counter(kinds).items())),
        model=model,
        baseline=baseline,
        challenger_version=None if challenger is None else printable(challenger[0]),
        challenger=second,
        notes=notes,
    )
    _write(out, evaluation, y, day, series)
    return evaluation


def _kind(label: Label | None) -> str:
    """A label's kind as data for people and the JSON: `printable` (card numbers masked)."""
    return printable(label.kind) if label is not None and label.kind else NO_KIND


def _finite(scores: Floats) -> Floats:
    """Scores scikit-learn accepts, in the same order: NaN as the lowest, infinities as the
    largest finite values (a z-score of a card whose amounts never varied may be infinite)."""
    if np.isfinite(scores).all():
        return scores
    top = np.finfo(np.float64).max
    return np.nan_to_num(scores, nan=-top, posinf=top, neginf=-top)


def _none(n: int) -> Bools:
    return np.zeros(n, dtype=bool)


def _same_budget(scores: Floats, alerts: int) -> float | None:
    """The lowest of the `alerts` largest `scores`: the rows at or above it are that many
    (more when rows tie at it); None when no row is to be flagged."""
    if alerts == 0 or len(scores) == 0:
        return None
    return float(np.partition(scores, len(scores) - alerts)[len(scores) - alerts])


class _Context:
    """What both scorers are judged against: labels, kinds, days and cards of the rows."""

    def __init__(self, y: Bools, kinds: list[str], day: Ints, card: Ints, top_k: int) -> None:
        self.y = y
        self.positives = int(y.sum())
        self.kinds = np.asarray(kinds, dtype=object)
        self.day = day
        self.card = card
        self.top_k = top_k

    def figures(self, scores: Floats, threshold: float | None, flagged: Bools) -> Figures:
        y, positives = self.y, self.positives
        alerts = int(flagged.sum())
        true_alerts = int((flagged & y).sum())
        both = 0 < positives < len(y)
        return Figures(
            threshold=threshold,
            alerts=alerts,
            true_alerts=true_alerts,
            precision=true_alerts / alerts if alerts else None,
            recall=true_alerts / positives if positives else None,
            roc_auc=float(roc_auc_score(y, scores)) if both else None,
            average_precision=float(average_precision_score(y, scores)) if positives else None,
            precision_top_k=self._top_k(scores),
            recall_by_kind=self._recall_by_kind(flagged[y]),
            average_precision_by_kind=self._average_precision_by_kind(scores),
        )

    def _recall_by_kind(self, flagged_positives: Bools) -> dict[str, float]:
        recall: dict[str, float] = {}
        for kind in sorted(set(self.kinds.tolist())):
            of_kind = self.kinds == kind
            recall[kind] = float(flagged_positives[of_kind].mean())
        return recall

    def _average_precision_by_kind(self, scores: Floats) -> dict[str, float]:
        """Per kind K: average precision of the label-1 rows of kind K (positives) against
        the rows not labelled 1 (negatives); the label-1 rows of other kinds are left out."""
        negatives = scores[~self.y]
        positive_scores = scores[self.y]
        figures: dict[str, float] = {}
        for kind in sorted(set(self.kinds.tolist())):
            ours = positive_scores[self.kinds == kind]
            truth = np.concatenate((np.ones(len(ours), bool), np.zeros(len(negatives), bool)))
            ranked = np.concatenate((ours, negatives))
            figures[kind] = float(average_precision_score(truth, ranked))
        return figures

    def _top_k(self, scores: Floats) -> float | None:
        """Each UTC day's top-k cards by their highest score that day (ties: the card id first
        in sort order), the share with a label-1 attempt that day, averaged over the days."""
        if len(scores) == 0:
            return None
        cards = int(self.card.max()) + 1
        groups, inverse = np.unique(self.day * cards + self.card, return_inverse=True)
        best = np.full(len(groups), -np.inf)
        np.maximum.at(best, inverse, scores)
        hit = np.zeros(len(groups), bool)
        np.logical_or.at(hit, inverse, self.y)
        group_day, group_card = np.divmod(groups, cards)
        order = np.lexsort((group_card, -best, group_day))
        days = group_day[order]
        rank = np.arange(len(order)) - np.searchsorted(days, days, side="left")
        top = rank < self.top_k
        _, day_index = np.unique(days, return_inverse=True)
        taken = np.bincount(day_index, weights=top)
        hits = np.bincount(day_index, weights=top & hit[order])
        return float((hits / taken).mean())


def _notes(rows: int, positives: int, model: Figures, unmatched: int) -> list[str]:
    notes: list[str] = []
    if rows == 0:
        notes.append("No rows: every figure is undefined (null).")
    elif positives == 0:
        notes.append(
            "No row is labelled 1: recall, ROC-AUC and average precision are undefined (null)."
        )
    elif positives == rows:
        notes.append("Every row is labelled 1: ROC-AUC is undefined (null).")
    if rows and model.alerts == 0:
        notes.append("No row reaches the threshold: precision is undefined (null).")
    if unmatched:
        notes.append(
            f"{unmatched:,} labels name event_ids that are not among the scored rows "
            "(labels_unmatched); they count nowhere else."
        )
    return notes


# The page and its charts.

CHARTS = ("precision_recall.png", "score_histogram.png", "alerts_per_day.png")


@dataclass(frozen=True, slots=True)
class _Series:
    """One scorer as the charts draw it: the model, then the baseline when there is one."""

    name: str
    colour: str
    scores: Floats
    figures: Figures
    flagged: Bools


_MEANINGS = (
    ("alerts", "rows whose score is above the threshold (the model_outlier detector's rule)"),
    ("precision", "of the alerts, the share labelled 1"),
    ("recall", "of the rows labelled 1, the share that are alerts"),
    ("ROC-AUC", "the chance a random label-1 row scores above a random label-0 row"),
    ("average precision", "precision averaged over every recall level of the ranking"),
    (
        "precision of the top k cards per day",
        "of each UTC day's k highest-scoring cards, the share with a label-1 attempt that day "
        "(mean over days)",
    ),
    ("recall by kind", "recall at the threshold over the label-1 rows of one anomaly kind"),
    (
        "average precision by kind",
        "average precision of one anomaly kind's label-1 rows ranked among the rows labelled 0 "
        "or unlabelled; the other kinds' label-1 rows are left out",
    ),
    (
        "baseline",
        f"the card's amount z-score ({BASELINE_FEATURE}) as the score; it flags as many rows as "
        "the model, those of the largest z (its threshold: the lowest of them)",
    ),
)


def _write(out: Path, evaluation: Evaluation, y: Bools, day: Ints, series: list[_Series]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    written: set[str] = set()
    with plain_text():
        charts = (
            _chart_precision_recall(y, series, evaluation),
            _chart_histogram(y, series[0]),
            _chart_per_day(y, day, series),
        )
        for name, figure in zip(CHARTS, charts, strict=True):
            target = out / name
            if figure is None:
                target.unlink(missing_ok=True)  # a chart of an earlier evaluation must not linger
                continue
            FigureCanvasAgg(figure)  # attaches itself: PNG drawn by Agg, no display
            figure.savefig(target, format="png", metadata={"Software": None})
            written.add(name)
    (out / "evaluation.json").write_text(evaluation.model_dump_json(indent=2) + "\n", "utf-8")
    (out / "index.html").write_text(render_html(evaluation, written), encoding="utf-8")


def _figure(height: float = 3.8) -> Figure:
    return Figure(figsize=(8.0, height), dpi=100, layout="constrained")


def _thin(x: Floats, y: Floats) -> tuple[Floats, Floats]:
    """At most CURVE_POINTS points of a curve, its ends kept."""
    if len(x) <= CURVE_POINTS:
        return x, y
    keep = np.unique(np.linspace(0, len(x) - 1, CURVE_POINTS).round().astype(np.int64))
    return x[keep], y[keep]


def _chart_precision_recall(
    y: Bools, series: Sequence[_Series], evaluation: Evaluation
) -> Figure | None:
    if evaluation.positives == 0:
        return None
    fig = _figure(4.2)
    ax = fig.add_subplot()
    for one in series:
        precision, recall, _ = precision_recall_curve(y, one.scores)
        recall, precision = _thin(np.asarray(recall, float), np.asarray(precision, float))
        ax.step(recall, precision, where="post", color=one.colour, label=one.name)
        if one.figures.precision is not None and one.figures.recall is not None:
            ax.plot(one.figures.recall, one.figures.precision, "o", color=one.colour)
    share = evaluation.positives / evaluation.rows
    ax.axhline(share, color="#999", linestyle="--", linewidth=1, label="share labelled 1")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Precision against recall (dots: at the threshold)")
    ax.legend(fontsize="small", loc="upper right")
    return fig


def _chart_histogram(y: Bools, model: _Series) -> Figure | None:
    scores, threshold = model.scores, model.figures.threshold
    if len(scores) == 0:
        return None
    low, high = float(scores.min()), float(scores.max())
    if low == high:
        low, high = low - 0.5, high + 0.5
    bins = [float(b) for b in np.linspace(low, high, 51)]
    fig = _figure()
    ax = fig.add_subplot()
    for name, mask, colour in (("label 0", ~y, _MODEL_COLOUR), ("label 1", y, "#e45756")):
        if mask.any():
            ax.hist(scores[mask], bins=bins, alpha=0.6, color=colour, label=name)
    if threshold is not None:
        ax.axvline(threshold, color="#222", linestyle="--", linewidth=1, label="threshold")
    ax.set_yscale("log")  # its default labels are mathtext, which `plain_text` draws as written
    ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("model score")
    ax.set_ylabel("rows (log scale)")
    ax.set_title("Model scores by label")
    ax.legend(fontsize="small")
    return fig


def _chart_per_day(y: Bools, day: Ints, series: Sequence[_Series]) -> Figure | None:
    """Alerts per UTC day (wider bins when the rows span more than MAX_BARS days), and the rows
    labelled 1 in each."""
    if len(day) == 0:
        return None
    first = int(day.min())
    width = math.ceil((int(day.max()) - first + 1) / MAX_BARS)
    index = (day - first) // width
    bins = int(index.max()) + 1
    fig = _figure()
    ax = fig.add_subplot()
    bar = 0.8 / len(series)
    edges = np.arange(bins + 1) - 0.5
    for i, one in enumerate(series):
        counts = np.bincount(index[one.flagged], minlength=bins)
        if bins <= _BARS_UP_TO:
            positions = np.arange(bins) - 0.4 + bar * (i + 0.5)
            ax.bar(positions, counts, width=bar, color=one.colour, label=one.name)
        else:  # hundreds of bars side by side are unreadable (and slow to draw): steps
            ax.stairs(counts, edges, color=one.colour, label=one.name, linewidth=1.2)
    positives = np.bincount(index[y], minlength=bins)
    ax.stairs(positives, edges, color="#222", linestyle=":", zorder=3, label="rows labelled 1")
    every = max(1, bins // 12)
    ticks = list(range(0, bins, every))
    names = [to_datetime((first + t * width) * _DAY_US).date().isoformat() for t in ticks]
    ax.set_xticks(ticks, names, rotation=30, ha="right")
    span = "day" if width == 1 else f"{width} days"
    ax.set_title(f"Alerts per {span} at the threshold (event time, UTC)")
    ax.set_ylabel("alerts")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.legend(loc="outside lower center", ncols=3, fontsize="small")
    return fig


def render_html(evaluation: Evaluation, charts: set[str]) -> str:
    """The page: figures model against baseline, recall and average precision by kind, the
    charts, what each means."""
    title = f"posmon evaluation: model {printable(evaluation.model_version)}"
    if evaluation.challenger_version is not None:
        title += f" against challenger {printable(evaluation.challenger_version)}"

    def chart(name: str, alt: str, missing: str) -> str:
        if name in charts:
            return f'<img src="{escape(name)}" alt="{escape(alt)}">'
        return f'<p class="note">{escape(missing)}</p>'

    parts = [
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}'
        f"</title><style>{PAGE_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        _overview(evaluation),
        _notes_html(evaluation.notes),
        "<h2>Figures</h2>",
        _figures_table(evaluation),
        "<h2>Recall by anomaly kind</h2>",
        _kinds_table(evaluation, "recall_by_kind", "recall"),
        "<h2>Average precision by anomaly kind</h2>",
        '<p class="note">Each kind\'s rows labelled 1 against the rows labelled 0 or unlabelled;'
        " the other kinds' rows labelled 1 are left out.</p>",
        _kinds_table(evaluation, "average_precision_by_kind", "average precision"),
        "<h2>Precision and recall</h2>",
        chart("precision_recall.png", "precision-recall curves", "No row is labelled 1."),
        "<h2>Scores</h2>",
        chart("score_histogram.png", "model score histogram by label", "No rows."),
        "<h2>Alerts per day</h2>",
        chart("alerts_per_day.png", "alerts per day at the threshold", "No rows."),
        "<h2>What the figures mean</h2>",
        "<dl>"
        + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in _MEANINGS)
        + "</dl>",
        "</body></html>\n",
    ]
    return "\n".join(parts)


def _overview(evaluation: Evaluation) -> str:
    items = [
        f"{'Champion' if evaluation.challenger else 'Model'}:"
        f" {printable(evaluation.model_version)}, features {printable(evaluation.feature_version)}",
        f"Threshold: {_threshold(evaluation.threshold)} (alert when the score is above it)",
        *(
            [
                f"Challenger: {printable(evaluation.challenger_version or '')}, threshold"
                f" {_threshold(evaluation.challenger.threshold)}"
            ]
            if evaluation.challenger is not None and evaluation.challenger.threshold is not None
            else []
        ),
        f"Scored rows (auth_requests): {evaluation.rows:,} over {evaluation.days:,} UTC days",
        f"Rows labelled 1: {evaluation.positives:,}",
        f"Labels matched to rows: {evaluation.labels_matched:,}; "
        f"not among the rows: {evaluation.labels_unmatched:,}",
    ]
    return "<ul>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>"


def _notes_html(notes: Sequence[str]) -> str:
    return "".join(f'<p class="note">{escape(printable(n))}</p>' for n in notes)


def _number(value: float | int | None, kind: str = "ratio") -> str:
    if value is None:
        return "n/a"
    if kind == "count":
        return f"{value:,}"
    if kind == "threshold":
        return _threshold(value)
    return f"{value:.3f}"


def _figures_table(evaluation: Evaluation) -> str:
    k = evaluation.top_k
    lines: list[tuple[str, str, str]] = [
        ("threshold", "threshold", "threshold"),
        ("alerts", "alerts", "count"),
        ("true_alerts", "alerts labelled 1", "count"),
        ("precision", "precision at the threshold", "ratio"),
        ("recall", "recall at the threshold", "ratio"),
        ("roc_auc", "ROC-AUC", "ratio"),
        ("average_precision", "average precision", "ratio"),
        ("precision_top_k", f"precision of the top {k} cards per day", "ratio"),
    ]
    columns = _columns(evaluation)
    body = "".join(
        f"<tr><td>{escape(name)}</td>"
        + "".join(
            f'<td class="n">{escape(_number(getattr(figures, field, None), kind))}</td>'
            for _, figures in columns
        )
        + "</tr>"
        for field, name, kind in lines
    )
    head = "<tr><th>figure</th>" + "".join(f"<th>{escape(c)}</th>" for c, _ in columns) + "</tr>"
    return f"<table><thead>{head}</thead><tbody>{body}</tbody></table>"


def _columns(evaluation: Evaluation) -> list[tuple[str, Figures | None]]:
    """The scorers side by side: the model (the champion, when there is a challenger), the
    challenger, the baseline."""
    if evaluation.challenger is None:
        return [("model", evaluation.model), ("baseline", evaluation.baseline)]
    return [
        ("champion", evaluation.model),
        ("challenger", evaluation.challenger),
        ("baseline", evaluation.baseline),
    ]


def _kinds_table(evaluation: Evaluation, field: str, name: str) -> str:
    """One figure per anomaly kind (`field` of `Figures`, a mapping by kind), the scorers side
    by side."""
    if not evaluation.positives_by_kind:
        return '<p class="note">No row is labelled 1.</p>'
    columns = _columns(evaluation)

    def value(figures: Figures | None, kind: str) -> float | None:
        by_kind: dict[str, float] = getattr(figures, field) if figures is not None else {}
        return by_kind.get(kind)

    body = "".join(
        f'<tr><td>{escape(printable(kind))}</td><td class="n">{count:,}</td>'
        + "".join(
            f'<td class="n">{escape(_number(value(figures, kind)))}</td>' for _, figures in columns
        )
        + "</tr>"
        for kind, count in evaluation.positives_by_kind.items()
    )
    head = (
        "<tr><th>kind</th><th>rows labelled 1</th>"
        + "".join(f"<th>{escape(c)} {escape(name)}</th>" for c, _ in columns)
        + "</tr>"
    )
    return f"<table><thead>{head}</thead><tbody>{body}</tbody></table>"


def _threshold(value: float) -> str:
    """A threshold with the digits it needs: a calibrated probability's can sit a hair below 1
    (0.9999999998), which four digits would show as 1, a score no attempt can exceed."""
    short = f"{value:.4g}"
    return short if float(short) != 1.0 or value == 1.0 else f"{value:.10g}"
