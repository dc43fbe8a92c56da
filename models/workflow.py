"""The retraining workflow the notebooks (models/notebooks/) run: each step one call here, so a
notebook cell holds no feature or figure logic and every step is tested as code.

From the feature log a running posmon writes (`model.feature_log`, or `posmon replay
--feature-log`) and a labels file: read the log back into rows (`read_feature_log`), look at the
traffic and the alerts (`traffic_summary`, `alerts_summary`), at the labels and the alert budget
(`labels_summary`, `budget_table`), split the log in time (`split_for_retraining`: a fit period,
a gap as long as the labels' delay, `label_delay_days`, and a judged period), retrain on the fit
period (`retrain`: with labels, the supervised stage too, on the labels known by the end of the
fit period), compare the challenger with the champion on the judged period (`compare`, through
`models.evaluate`) and publish it where a running `posmon run` reloads it (`publish`: only a
challenger the comparison found at least as good as the champion, unless forced).

Tables are `Table`s (columns and rows of plain values, shown as HTML in a notebook, as text
elsewhere, `dicts()` for code): pandas is not a dependency. Charts are `matplotlib.figure.Figure`s
on the Agg canvas (no pyplot, no display needed); `picture` draws one as a PNG a notebook shows.
Every text from the data (ids, kinds, versions) goes through `printable` before it is shown.
"""

from __future__ import annotations

import io
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pydantic import ValidationError

from models.evaluate import Evaluation, evaluate
from models.labels import Label, known_by
from models.train import Judgement, Trained, TrainingError, held_back_split, train
from monitor.cli.anomaly import DEFAULT_MODEL
from monitor.core.alerts import Alert, is_newer
from monitor.core.events import to_datetime
from monitor.core.scored import ScoredRows
from monitor.core.text import printable
from monitor.scoring.features import FEATURE_VERSION, FEATURES
from monitor.scoring.model import ARRAYS, CARD, Model, ModelCard, load_model, model_from
from monitor.streaming.featurelog import FEATURE_VERSION_KEY

PROJECT: Final = Path(__file__).resolve().parent.parent  # the folder holding models/
SHIPPED_MODEL: Final = DEFAULT_MODEL  # the champion unless told otherwise
BUDGET_RATES: Final = (0.0005, 0.001, 0.002, 0.005)
SCORE_QUANTILES: Final = (0.5, 0.9, 0.99, 0.999, 1.0)
_DAY_US: Final = 86_400_000_000
_HOUR_US: Final = 3_600_000_000
_IDS: Final = ("event_id", "card_id", "terminal_id", "merchant_id")
_SHADOW: Final = ("shadow_score", "shadow_version")
_UNSUPERVISED: Final = "unsupervised_score"
LABEL_DELAY_QUANTILE: Final = 0.95  # the labels' delay: by when this share of them is known

Cell = str | int | float | None
# Verdicts: in file order (`read_verdicts`), or by event_id as finally known (`read_labels`).
Labels = Iterable[Label] | Mapping[str, Label]


class FeatureLogError(ValueError):
    """The feature log cannot be read as rows of this posmon's features; one line of text."""


# -- settings and tables ---------------------------------------------------------------------


def path_setting(name: str, default: str | Path) -> Path:
    """The path in environment variable `name` (as given: relative to the working directory), or
    `default` relative to the project folder. The notebooks' inputs and outputs: `MODELS_...`
    names, never `POSMON_...` (posmon reads those as its own settings)."""
    value = os.environ.get(name)
    return Path(value) if value else PROJECT / default


@dataclass(frozen=True, slots=True, repr=False)
class Table:
    """Named columns and rows of plain values: HTML in a notebook, aligned text in a terminal."""

    columns: tuple[str, ...]
    rows: list[tuple[Cell, ...]]
    title: str = ""

    def dicts(self) -> list[dict[str, Cell]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]

    def column(self, name: str) -> list[Cell]:
        i = self.columns.index(name)
        return [row[i] for row in self.rows]

    def __str__(self) -> str:
        cells = [list(self.columns), *([_cell(v) for v in row] for row in self.rows)]
        widths = [max(len(line[i]) for line in cells) for i in range(len(self.columns))]
        left = [
            all(isinstance(row[i], str) or row[i] is None for row in self.rows)
            for i in range(len(self.columns))
        ]
        lines = [
            "  ".join(
                c.ljust(w) if ll else c.rjust(w)
                for c, w, ll in zip(line, widths, left, strict=True)
            ).rstrip()
            for line in cells
        ]
        return "\n".join([self.title, *lines] if self.title else lines)

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{escape(c)}</th>" for c in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{escape(_cell(v))}</td>" for v in row) + "</tr>"
            for row in self.rows
        )
        caption = f"<caption>{escape(self.title)}</caption>" if self.title else ""
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Cell) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return printable(value)


# -- the feature log -------------------------------------------------------------------------


def read_feature_log(directory: Path) -> ScoredRows:
    """Every row of the feature log under `directory`, in (event time, event_id) order, one row
    per event_id (an attempt scored again after a restart is logged again; one copy is kept),
    features in the order of `FEATURES`.

    `score` is None when no row has one (logged without a model), NaN for the rows without one
    otherwise; `model_version` names the versions seen, in order, joined by ", " when a reload
    changed it within the log; the shadow's columns are read when every file has them, and so is
    `unsupervised_score` (the forests' score; files written before it have none). Raises
    `FeatureLogError` for a missing or empty directory, a file of another feature version (the
    schema's `posmon.feature_version`) or a file without a feature column.
    """
    where = printable(str(directory))
    if not directory.is_dir():
        raise FeatureLogError(f"{where}: no such directory")
    dataset = ds.dataset(directory, format="parquet", partitioning="hive")
    fragments = sorted(dataset.get_fragments(), key=lambda f: str(f.path))
    if not fragments:
        raise FeatureLogError(f"{where}: no feature log files (*.parquet) in it")
    wanted = [*_IDS, "event_time", "score", "model_version", *FEATURES]
    schemas = [fragment.physical_schema for fragment in fragments]
    shadow = all(set(_SHADOW) <= set(schema.names) for schema in schemas)
    unsupervised = all(_UNSUPERVISED in schema.names for schema in schemas)
    for fragment, schema in zip(fragments, schemas, strict=True):
        _check_file(printable(str(fragment.path)), schema, wanted)
    columns = [*wanted, *(_SHADOW if shadow else ()), *([_UNSUPERVISED] if unsupervised else [])]
    table = pa.concat_tables(fragment.to_table(columns=columns) for fragment in fragments)
    table = table.sort_by([("event_time", "ascending"), ("event_id", "ascending")])
    ids = np.asarray(table.column("event_id").to_pylist(), dtype=object)
    first = np.ones(len(ids), dtype=bool)
    first[1:] = ids[1:] != ids[:-1]  # repeats of an event_id are adjacent: one event time
    if not first.all():
        table = table.filter(pa.array(first))
    return _rows(table, shadow)


def _check_file(where: str, schema: pa.Schema, wanted: Sequence[str]) -> None:
    raw = (schema.metadata or {}).get(FEATURE_VERSION_KEY)
    version = None if raw is None else raw.decode("utf-8", "replace")
    if version != FEATURE_VERSION:
        found = "no feature version" if version is None else f"features {printable(version)!r}"
        raise FeatureLogError(
            f"{where}: written with {found}; this posmon computes {FEATURE_VERSION!r}. Read it"
            " with the posmon that wrote it, or replay the events with this one"
            " (posmon replay --feature-log)"
        )
    missing = [name for name in wanted if name not in schema.names]
    if missing:
        raise FeatureLogError(f"{where}: no column {', '.join(missing)}")


def _rows(table: pa.Table, shadow: bool) -> ScoredRows:
    def strings(name: str) -> list[str]:
        return [str(v) for v in table.column(name).to_pylist()]

    def scores(name: str) -> npt.NDArray[np.float64] | None:
        column = table.column(name)
        if column.null_count == len(column) and len(column) > 0:
            return None
        return np.asarray(pc.fill_null(column, np.nan).to_numpy(), dtype=np.float64)

    def versions(name: str) -> str | None:
        seen = [v for v in pc.unique(table.column(name)).to_pylist() if v is not None]
        return ", ".join(dict.fromkeys(seen)) if seen else None

    n = table.num_rows
    features = np.empty((n, len(FEATURES)), dtype=np.float32)
    for i, name in enumerate(FEATURES):
        features[:, i] = table.column(name).to_numpy()
    return ScoredRows(
        event_id=strings("event_id"),
        event_time_us=np.asarray(
            table.column("event_time").cast(pa.int64()).to_numpy(), dtype=np.int64
        ),
        card_id=strings("card_id"),
        terminal_id=strings("terminal_id"),
        merchant_id=strings("merchant_id"),
        features=features,
        feature_names=FEATURES,
        feature_version=FEATURE_VERSION,
        score=scores("score"),
        model_version=versions("model_version"),
        shadow_score=scores("shadow_score") if shadow else None,
        shadow_version=versions("shadow_version") if shadow else None,
        unsupervised_score=scores(_UNSUPERVISED) if _UNSUPERVISED in table.column_names else None,
    )


def take(rows: ScoredRows, index: npt.NDArray[np.intp] | npt.NDArray[np.bool_]) -> ScoredRows:
    """The rows at `index` (positions or a mask), in its order."""
    at = np.arange(len(rows))[index]
    pick = at.tolist()
    return replace(
        rows,
        event_id=[rows.event_id[i] for i in pick],
        event_time_us=rows.event_time_us[at],
        card_id=[rows.card_id[i] for i in pick],
        terminal_id=[rows.terminal_id[i] for i in pick],
        merchant_id=[rows.merchant_id[i] for i in pick],
        features=rows.features[at],
        score=None if rows.score is None else rows.score[at],
        shadow_score=None if rows.shadow_score is None else rows.shadow_score[at],
        unsupervised_score=None if rows.unsupervised_score is None else rows.unsupervised_score[at],
    )


def split_by_time(rows: ScoredRows, earlier: float = 2 / 3) -> tuple[ScoredRows, ScoredRows]:
    """The rows before and from the event time `earlier` of the way through the log: train on
    the first, judge on the second (a model is never judged on the attempts it was fitted on)."""
    if not 0 < earlier < 1:
        raise ValueError("earlier must be between 0 and 1")
    if len(rows) == 0:
        return rows, rows
    t = rows.event_time_us
    cut = int(t.min()) + int((int(t.max()) - int(t.min())) * earlier)
    return take(rows, t < cut), take(rows, t >= cut)


def label_delay_days(
    rows: ScoredRows, labels: Labels, quantile: float = LABEL_DELAY_QUANTILE
) -> float | None:
    """How long after an attempt its label 1 is known: the `quantile` of the delays (`known_at`
    minus the attempt's event time, in days) of the labels 1 on these rows; None when no such
    label has a `known_at`. The gap to leave between fitting and judging a model."""
    time_of = dict(zip(rows.event_id, rows.event_time_us.tolist(), strict=True))
    delays = [
        (known - time_of[label.event_id]) / _DAY_US
        for label in _verdicts(labels)
        if label.label == 1
        and label.event_id in time_of
        and (known := label.known_at_us) is not None
    ]
    return float(np.quantile(delays, quantile)) if delays else None


@dataclass(frozen=True, slots=True)
class RetrainSplit:
    """The log cut in time for retraining: the fit period, a gap as long as the labels' delay,
    the judged period (the last `held_back_days`), as `models.train.held_back_split` (and
    `posmon train --labels`) cuts it."""

    fit: ScoredRows  # the attempts before `fit_until_us`
    judged: ScoredRows  # the attempts from `judged_from_us`
    fit_until_us: int  # the end of the fit period
    judged_from_us: int
    gap_days: float
    held_back_days: float

    def table(self) -> Table:
        """The three periods: from, to, attempts."""
        gap = self.judged_from_us - self.fit_until_us
        first = _first(self.fit) if len(self.fit) else self.fit_until_us
        return Table(
            ("period", "from", "to", "attempts"),
            [
                ("fit", _rfc3339(first), _rfc3339(self.fit_until_us), len(self.fit)),
                ("gap", _rfc3339(self.fit_until_us), _rfc3339(self.fit_until_us + gap), None),
                (
                    "judged",
                    _rfc3339(self.judged_from_us),
                    _rfc3339(int(self.judged.event_time_us.max())) if len(self.judged) else None,
                    len(self.judged),
                ),
            ],
            f"fit, a gap of {self.gap_days:.3g} days, judged {self.held_back_days:.3g} days",
        )


def split_for_retraining(
    rows: ScoredRows, *, gap_days: float, held_back_days: float | None = None
) -> RetrainSplit:
    """The time-respecting split of `rows` (`models.train.held_back_split`): the last
    `held_back_days` of event time are judged (default: the last third of the log's span), the
    `gap_days` before them left out, the rest fitted on. Raises ValueError when a length is
    negative or nothing is left to fit on or to judge."""
    if len(rows) == 0:
        raise ValueError("no attempts to split")
    if not gap_days >= 0 or (held_back_days is not None and not held_back_days > 0):
        raise ValueError("the gap must be at least 0 days and the judged period positive")
    end = int(rows.event_time_us.max())
    span_days = (end - _first(rows)) / _DAY_US
    held_back = span_days / 3 if held_back_days is None else held_back_days
    fit, judged = held_back_split(rows, held_back_days=held_back, gap_days=gap_days)
    judged_from = end - round(held_back * _DAY_US)  # as held_back_split computes them
    fit_until = judged_from - round(gap_days * _DAY_US)
    if len(fit) == 0 or len(judged) == 0:
        raise ValueError(
            f"the log spans {span_days:.3g} days: a gap of {gap_days:.3g} days and a judged period"
            f" of {held_back:.3g} days leave {len(fit):,} attempts to fit on and {len(judged):,}"
            " to judge on"
        )
    return RetrainSplit(fit, judged, fit_until, judged_from, gap_days, held_back)


def _first(rows: ScoredRows) -> int:
    return int(rows.event_time_us.min())


# -- the traffic and the alerts --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Traffic:
    """What the log holds: attempts per UTC day and per UTC hour of day, score quantiles."""

    rows: int
    first_event: str | None  # RFC 3339, UTC
    last_event: str | None
    model_version: str | None
    per_day: Table  # day, attempts, cards, terminals, merchants
    per_hour: Table  # hour (UTC), attempts, share
    score_quantiles: Table  # quantile, score (empty without scores)


def traffic_summary(rows: ScoredRows) -> Traffic:
    n = len(rows)
    day = rows.event_time_us // _DAY_US
    days, day_index = np.unique(day, return_inverse=True)
    attempts = np.bincount(day_index, minlength=len(days))
    distinct = [
        _distinct_per_day(day_index, len(days), ids)
        for ids in (rows.card_id, rows.terminal_id, rows.merchant_id)
    ]
    per_day: list[tuple[Cell, ...]] = [
        (to_datetime(int(d) * _DAY_US).date().isoformat(), int(a), *(int(c[i]) for c in distinct))
        for i, (d, a) in enumerate(zip(days.tolist(), attempts.tolist(), strict=True))
    ]
    hours = np.bincount((rows.event_time_us // _HOUR_US) % 24, minlength=24)
    per_hour: list[tuple[Cell, ...]] = [
        (h, int(c), float(c) / n if n else None) for h, c in enumerate(hours.tolist())
    ]
    quantiles: list[tuple[Cell, ...]] = []
    scores = _scored(rows)
    if len(scores):
        values = np.quantile(scores, SCORE_QUANTILES)
        quantiles = [(q, float(v)) for q, v in zip(SCORE_QUANTILES, values, strict=True)]
    times = rows.event_time_us
    return Traffic(
        rows=n,
        first_event=_rfc3339(int(times.min())) if n else None,
        last_event=_rfc3339(int(times.max())) if n else None,
        model_version=rows.model_version,
        per_day=Table(("day", "attempts", "cards", "terminals", "merchants"), per_day, "per day"),
        per_hour=Table(("hour", "attempts", "share"), per_hour, "per hour of day (UTC)"),
        score_quantiles=Table(("quantile", "score"), quantiles, "model scores"),
    )


def _distinct_per_day(
    day_index: npt.NDArray[np.intp], days: int, ids: list[str]
) -> npt.NDArray[np.int64]:
    """How many distinct ids each day has."""
    if not ids:
        return np.zeros(days, dtype=np.int64)
    codes = np.unique(np.asarray(ids, dtype=object).astype(str), return_inverse=True)[1]
    pairs = np.unique(day_index.astype(np.int64) * (int(codes.max()) + 1) + codes)
    return np.bincount(pairs // (int(codes.max()) + 1), minlength=days).astype(np.int64)


def traffic_chart(traffic: Traffic, threshold: float | None = None) -> Figure:
    """Attempts per hour of day, and the quantiles of the scores (the threshold as a line)."""
    fig = _figure(10.0)
    hours, scores = fig.subplots(1, 2)
    counts = [int(v or 0) for v in traffic.per_hour.column("attempts")]
    hours.bar(range(24), counts, color="#4c78a8")
    hours.set_xlabel("hour of day (UTC)")
    hours.set_ylabel("attempts")
    hours.set_title("Attempts per hour of day")
    qs = [float(v or 0) for v in traffic.score_quantiles.column("quantile")]
    values = [float(v or 0) for v in traffic.score_quantiles.column("score")]
    scores.plot(range(len(qs)), values, "o-", color="#4c78a8")
    scores.set_xticks(range(len(qs)), [f"{q:g}" for q in qs])
    if threshold is not None:
        scores.axhline(threshold, color="#222", linestyle="--", linewidth=1, label="threshold")
        scores.legend(fontsize="small")
    scores.set_xlabel("quantile")
    scores.set_ylabel("score")
    scores.set_title("Model scores")
    return fig


def alerts_summary(path: Path) -> Table:
    """Alerts per UTC day (of their first event) and detector, from an alerts file (JSONL, as
    `posmon replay --alerts` writes: an alert's version with the highest revision is its final
    state). Raises
    ValueError naming the line that is not an alert."""
    where = printable(str(path))
    final: dict[str, Alert] = {}
    try:
        with path.open("rb") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    alert = Alert.model_validate_json(line)
                except ValidationError as exc:
                    raise ValueError(f"{where}:{number}: not an alert") from exc
                if is_newer(alert, final.get(alert.alert_id)):
                    final[alert.alert_id] = alert
    except FileNotFoundError as exc:
        raise ValueError(f"{where}: no such file") from exc
    counts: Counter[tuple[str, str]] = Counter(
        (alert.first_seen.astimezone(UTC).date().isoformat(), alert.detector)
        for alert in final.values()
    )
    detectors = sorted({detector for _, detector in counts})
    days = sorted({day for day, _ in counts})
    rows: list[tuple[Cell, ...]] = [
        (day, *(counts[day, d] for d in detectors), sum(counts[day, d] for d in detectors))
        for day in days
    ]
    return Table(("day", *detectors, "total"), rows, "alerts per day (first event, UTC)")


# -- labels and the alert budget -------------------------------------------------------------


def labels_summary(rows: ScoredRows, labels: Mapping[str, Label]) -> Table:
    """Per anomaly kind: the attempts labelled 1, how many are among the rows, how long after
    the attempt the label was known (median days, from `known_at`)."""
    time_of = dict(zip(rows.event_id, rows.event_time_us.tolist(), strict=True))
    by_kind: dict[str, list[Label]] = defaultdict(list)
    for label in labels.values():
        if label.label == 1:
            by_kind[printable(label.kind or "(no kind)")].append(label)
    table: list[tuple[Cell, ...]] = []
    for kind, group in sorted(by_kind.items()):
        matched = [lab for lab in group if lab.event_id in time_of]
        delays = [
            (lab.known_at.timestamp() * 1e6 - time_of[lab.event_id]) / _DAY_US
            for lab in matched
            if lab.known_at is not None and lab.event_id is not None
        ]
        median = float(np.median(delays)) if delays else None
        table.append((kind, len(group), len(matched), median))
    negatives = sum(1 for label in labels.values() if label.label == 0)
    title = f"labels 1 by kind ({negatives:,} lines labelled 0; unlabelled attempts count as 0)"
    return Table(("kind", "labelled_1", "among_rows", "median_days_to_known"), table, title)


def budget_table(
    rows: ScoredRows, labels: Mapping[str, Label], rates: Sequence[float] = BUDGET_RATES
) -> Table:
    """For each alert rate, the threshold that spends it on these rows (the score above which
    that share of the scored attempts lies, as `posmon train` sets it), the alerts and alerts
    per UTC day it gives, and their precision and recall against `labels` (an unlabelled attempt
    counts as 0). Rows without a score are left out. Raises ValueError when no row has a score
    or a rate is not in (0, 1)."""
    if any(not 0 < rate < 1 for rate in rates):
        raise ValueError("every alert rate must be between 0 and 1")
    scored = np.isfinite(rows.score) if rows.score is not None else np.zeros(len(rows), bool)
    if not scored.any():
        raise ValueError("no row carries a score: score the rows with a model first (score)")
    assert rows.score is not None
    scores = rows.score[scored]
    positive = np.array([_positive(labels.get(e)) for e in rows.event_id], dtype=bool)[scored]
    days = len(np.unique(rows.event_time_us[scored] // _DAY_US))
    positives = int(positive.sum())
    table: list[tuple[Cell, ...]] = []
    for rate in rates:
        threshold = float(np.quantile(scores, 1.0 - rate, method="higher"))
        flagged = scores > threshold
        alerts, true_alerts = int(flagged.sum()), int((flagged & positive).sum())
        table.append(
            (
                rate,
                threshold,
                alerts,
                alerts / days,
                true_alerts,
                true_alerts / alerts if alerts else None,
                true_alerts / positives if positives else None,
            )
        )
    columns = (
        "alert_rate",
        "threshold",
        "alerts",
        "alerts_per_day",
        "true_alerts",
        "precision",
        "recall",
    )
    title = f"alert budget on {len(scores):,} scored attempts, {positives:,} labelled 1"
    return Table(columns, table, title)


def budget_chart(budget: Table) -> Figure:
    """Precision and recall against the alert rate (a budget table's rows)."""
    fig = _figure(6.0)
    ax = fig.add_subplot()
    rates = [float(v or 0) for v in budget.column("alert_rate")]
    for name, colour in (("precision", "#4c78a8"), ("recall", "#e45756")):
        values = [np.nan if v is None else float(v) for v in budget.column(name)]
        ax.plot(rates, values, "o-", color=colour, label=name)
    ax.set_xscale("log")
    ax.set_xticks(rates, [f"{r:g}" for r in rates])
    ax.minorticks_off()
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("alert rate (share of attempts)")
    ax.set_title("Precision and recall at each alert budget")
    ax.legend(fontsize="small")
    return fig


def _positive(label: Label | None) -> bool:
    return label is not None and label.label == 1


# -- retrain, compare, publish ---------------------------------------------------------------


def known_labels(verdicts: Labels, known_by_us: int) -> dict[str, int]:
    """The verdict (0 or 1) on each purchase as it was known at `known_by_us` (epoch
    microseconds): `models.labels.known_by`."""
    return {e: v.label for e, v in known_by(_verdicts(verdicts), known_by_us).items()}


def retrain(
    rows: ScoredRows,
    *,
    alert_rate: float,
    seed: int,
    source: str = "feature log",
    labels: Labels | None = None,
    known_by_us: int | None = None,
) -> Trained:
    """A challenger fitted on `rows` by `models.train.train` (the shipped model's groups, trees
    and samples). The card's training data names `source` as its file and counts the attempts
    as its events: a feature log holds no other events.

    With `labels` (the verdicts in file order, `read_verdicts`, or the labels of `read_labels`),
    the supervised stage too: a row is 1 when its verdict known at `known_by_us` (default: the
    last attempt's time; pass the start of the judged period) is 1 (`known_labels`), 0 otherwise,
    unlabelled or labelled later. Raises `TrainingError` (too few attempts, or too few known
    labels 1 for the supervised stage and its calibration)."""
    if labels is None:
        return train(rows, files=[source], events=len(rows), alert_rate=alert_rate, seed=seed)
    if len(rows) == 0:
        raise TrainingError("no attempts to train on")
    cutoff = int(rows.event_time_us.max()) if known_by_us is None else known_by_us
    verdicts = _verdicts(labels)
    known = known_by(verdicts, cutoff)
    fraud = [known[e] if e in known and known[e].label == 1 else None for e in rows.event_id]
    y = np.fromiter((label is not None for label in fraud), bool, count=len(rows))
    kinds = [None if label is None else label.kind for label in fraud]
    final = {v.event_id: v.label for v in verdicts if v.event_id is not None}
    unknown = sum(
        1
        for e, label in zip(rows.event_id, fraud, strict=True)
        if final.get(e) == 1 and label is None
    )
    ones = int(y.sum())
    notes: dict[str, int | float | str | None] = {
        "source": "labels",
        "known_by": _rfc3339(cutoff),
        "rows_labelled_1_known": ones,
        "rows_labelled_1_not_known_by_then": unknown,
    }
    try:
        return train(
            rows,
            files=[source],
            events=len(rows),
            alert_rate=alert_rate,
            seed=seed,
            labels=y.astype(np.int64),
            kinds=kinds,
            label_notes=notes,
        )
    except TrainingError as exc:
        raise TrainingError(
            f"{exc}; {ones:,} of the {len(rows):,} attempts are known as labelled 1 by"
            f" {_rfc3339(cutoff)} ({unknown:,} more are labelled 1 but were not known by"
            " then). Fit on a longer period, or without labels (labels=None)"
        ) from exc


def _verdicts(labels: Labels) -> list[Label]:
    """The verdicts of `labels`: an iterable of them, or a mapping (by event_id) of them."""
    if isinstance(labels, Mapping):
        return list(labels.values())
    return list(labels)


def score(rows: ScoredRows, model: Model) -> ScoredRows:
    """The rows with `model`'s scores of their features (`Model.score`)."""
    if tuple(rows.feature_names) != tuple(model.card.features):
        raise ValueError(
            f"the rows hold features {printable(rows.feature_version)!r} and model"
            f" {printable(model.version)} reads {printable(model.card.feature_version)!r}"
        )
    return replace(rows, score=model.score(rows.features), model_version=model.version)


@dataclass(frozen=True, slots=True)
class Comparison:
    """The champion's and the challenger's evaluations on the same rows and labels."""

    champion: Evaluation
    challenger: Evaluation

    @property
    def judgement(self) -> Judgement:
        """The two models' average precision on the judged rows (`worse`: the challenger is
        worse than the champion, or could not be judged)."""
        return Judgement(
            self.challenger.model.average_precision, self.champion.model.average_precision
        )

    def card_figures(self) -> dict[str, float | int | None]:
        """The judgement as `posmon train --labels` writes it into the challenger's card."""
        return {
            "held_back_rows": self.challenger.rows,
            "held_back_average_precision": self.challenger.model.average_precision,
            "champion_average_precision": self.champion.model.average_precision,
        }

    def table(self) -> Table:
        """The figures side by side."""
        a, b = self.champion, self.challenger
        figures: list[tuple[str, Cell, Cell]] = [
            ("model", a.model_version, b.model_version),
            ("threshold", a.threshold, b.threshold),
            ("rows", a.rows, b.rows),
            ("positives", a.positives, b.positives),
        ]
        for name in (
            "alerts",
            "true_alerts",
            "precision",
            "recall",
            "roc_auc",
            "average_precision",
            "precision_top_k",
        ):
            figures.append((name, getattr(a.model, name), getattr(b.model, name)))
        for kind in sorted(set(a.model.recall_by_kind) | set(b.model.recall_by_kind)):
            figures.append(
                (
                    f"recall of {kind}",
                    a.model.recall_by_kind.get(kind),
                    b.model.recall_by_kind.get(kind),
                )
            )
        by_kind = (a.model.average_precision_by_kind, b.model.average_precision_by_kind)
        for kind in sorted(set(by_kind[0]) | set(by_kind[1])):
            figures.append(
                (f"average precision of {kind}", by_kind[0].get(kind), by_kind[1].get(kind))
            )
        return Table(("figure", "champion", "challenger"), list(figures), "champion, challenger")


def compare(
    champion: Model,
    challenger: Model,
    rows: ScoredRows,
    labels: Mapping[str, Label],
    out: Path,
    *,
    top_k: int = 10,
) -> Comparison:
    """Each model's scores of the rows, evaluated against `labels` at its own threshold
    (`models.evaluate.evaluate`); the pages and `evaluation.json` land in `out/champion` and
    `out/challenger`."""
    evaluations = [
        evaluate(
            score(rows, model),
            labels,
            threshold=model.threshold,
            model_version=model.version,
            out=out / role,
            top_k=top_k,
        )
        for role, model in (("champion", champion), ("challenger", challenger))
    ]
    return Comparison(*evaluations)


def read_comparison(out: Path) -> Comparison | None:
    """The comparison `compare` wrote into `out` (its two `evaluation.json`); None when there is
    none (no comparison was made there). Raises ValueError for files that are not evaluations."""
    paths = [out / role / "evaluation.json" for role in ("champion", "challenger")]
    if not all(path.is_file() for path in paths):
        return None
    try:
        champion, challenger = (Evaluation.model_validate_json(path.read_bytes()) for path in paths)
    except ValidationError as exc:
        raise ValueError(f"{printable(str(out))}: not a comparison written by compare") from exc
    return Comparison(champion, challenger)


def load_trained(directory: Path) -> Trained:
    """A model written by `Trained.write` (or `posmon train`), checked as a load checks it, to
    publish elsewhere. Raises `ModelError`."""
    model = load_model(directory)
    card_json, arrays = (directory / CARD).read_bytes(), (directory / ARRAYS).read_bytes()
    checked = model_from(ModelCard.model_validate_json(card_json), arrays)
    if checked.version != model.version:  # changed between the two reads
        raise ValueError(f"{printable(str(directory))} changed while it was read")
    return Trained(checked, card_json, arrays)


class PublishError(ValueError):
    """The gate: the challenger is worse than the champion, or was never judged; one line."""


@dataclass(frozen=True, slots=True, repr=False)
class Decision:
    """Whether a challenger may be published, from the comparison that judged it."""

    publish: bool
    reason: str
    challenger: str  # the version
    champion: str | None  # None: never judged
    challenger_average_precision: float | None
    champion_average_precision: float | None
    judged_rows: int | None

    def table(self) -> Table:
        figures: list[tuple[Cell, ...]] = [
            ("decision", "publish" if self.publish else "refuse"),
            ("why", self.reason),
            ("challenger", self.challenger),
            ("champion", self.champion),
            ("judged attempts", self.judged_rows),
            ("challenger average precision", self.challenger_average_precision),
            ("champion average precision", self.champion_average_precision),
        ]
        return Table(("field", "value"), figures, "the publish gate")

    def __str__(self) -> str:
        return str(self.table())

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()


def publish_decision(challenger: Model, comparison: Comparison | None) -> Decision:
    """The gate: a challenger may be published when `comparison` (`compare`'s, or
    `read_comparison`'s) judged this very model (its version) and found its average precision
    on the judged attempts at least the champion's. It may not when it was never judged (no
    comparison, a comparison of another model, no judged attempt labelled 1) or is worse."""
    version = challenger.version
    if comparison is None:
        reason = "never judged: no comparison of it"
        return Decision(False, reason, version, None, None, None, None)
    judged = comparison.challenger
    mine, theirs = judged.model.average_precision, comparison.champion.model.average_precision
    champion = comparison.champion.model_version

    def decision(publish: bool, reason: str) -> Decision:
        return Decision(publish, reason, version, champion, mine, theirs, judged.rows)

    if judged.model_version != printable(version):
        return decision(
            False,
            f"never judged: the comparison judged {printable(judged.model_version)}, not this"
            " challenger",
        )
    judgement = comparison.judgement
    if judgement.challenger is None or judgement.champion is None:
        return decision(False, "never judged: no judged attempt is labelled 1")
    if judgement.worse:
        return decision(
            False,
            f"worse than the champion {printable(champion)}: average precision"
            f" {judgement.challenger:.4f} against {judgement.champion:.4f} on"
            f" {judged.rows:,} judged attempts",
        )
    return decision(
        True,
        f"at least as good as the champion {printable(champion)}: average precision"
        f" {judgement.challenger:.4f} against {judgement.champion:.4f} on {judged.rows:,} judged"
        " attempts",
    )


def publish(
    trained: Trained, directory: Path, *, comparison: Comparison | None, force: bool = False
) -> Model:
    """Write the model into `directory` (`Trained.write`: the arrays, then the card, each
    renamed into place) and load it back as posmon will. Point `model.path` of `posmon run` at
    `directory`: it reloads a changed artifact within `reload_every`, or at once on SIGHUP.

    The gate (`publish_decision`): raises `PublishError`, writing nothing, when `comparison`
    found the challenger worse than the champion or never judged it, unless `force`."""
    decision = publish_decision(trained.model, comparison)
    if not decision.publish and not force:
        raise PublishError(
            f"challenger {printable(decision.challenger)} not published: {decision.reason}"
            " (force=True publishes it anyway)"
        )
    trained.write(directory)
    return load_model(directory)


def card_table(model: Model) -> Table:
    """What a model card says of the model, for a person deciding to publish it."""
    card = model.card
    figures: list[tuple[Cell, ...]] = [
        ("version", card.version),
        ("features", card.feature_version),
        ("forests", ", ".join(f"{m.name} ({m.trees} trees)" for m in card.members)),
        ("threshold", card.threshold),
        ("threshold rule", card.threshold_rule),
        ("training rows", card.training.rows),
        ("training from", card.training.first_event),
        ("training to", card.training.last_event),
        ("seed", card.training.seed),
    ]
    stage = card.supervised
    if stage is not None:
        calibrated = ", calibrated" if stage.calibrated else ""
        figures.append(
            ("supervised stage", f"{stage.kind} over {len(stage.features)} inputs{calibrated}")
        )
        figures.extend((f"labels: {k}", v) for k, v in stage.labels.items())
    figures.extend((k, v) for k, v in card.evaluation.items() if k in _JUDGEMENT)
    figures.extend((f"library {k}", v) for k, v in sorted(card.libraries.items()))
    return Table(("field", "value"), figures, "model card")


# The judgement `posmon train --labels` (and `Comparison.card_figures`) writes into a card.
_JUDGEMENT: Final = frozenset(
    ("held_back_rows", "held_back_average_precision", "champion_average_precision")
)


# -- charts and times ------------------------------------------------------------------------


def _figure(width: float) -> Figure:
    fig = Figure(figsize=(width, 3.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # Agg: PNG without a display
    return fig


@dataclass(frozen=True, slots=True)
class Picture:
    """A chart drawn as PNG; a notebook shows it (`_repr_png_`) without pyplot."""

    png: bytes

    def _repr_png_(self) -> bytes:
        return self.png


def picture(fig: Figure) -> Picture:
    """The figure drawn as PNG (Agg), for a notebook to show or a file to hold (`.png`)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return Picture(buffer.getvalue())


def _scored(rows: ScoredRows) -> npt.NDArray[np.float64]:
    if rows.score is None:
        return np.empty(0)
    return rows.score[np.isfinite(rows.score)]


def _rfc3339(t_us: int) -> str:
    return datetime.fromtimestamp(t_us / 1e6, tz=UTC).isoformat().replace("+00:00", "Z")
