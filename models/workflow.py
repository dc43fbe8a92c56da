"""The retraining workflow the notebooks (models/notebooks/) run: each step one call here, so a
notebook cell holds no feature or figure logic and every step is tested as code.

From the feature log a running posmon writes (`model.feature_log`, or `posmon replay
--feature-log`) and a labels file: read the log back into rows (`read_feature_log`), look at the
traffic and the alerts (`traffic_summary`, `alerts_summary`), at the labels and the alert budget
(`labels_summary`, `budget_table`), retrain (`retrain`, on the earlier part of the log:
`split_by_time`), compare the challenger with the champion on the later part (`compare`, through
`models.evaluate`) and publish it where a running `posmon run` reloads it (`publish`).

Tables are `Table`s (columns and rows of plain values, shown as HTML in a notebook, as text
elsewhere, `dicts()` for code): pandas is not a dependency. Charts are `matplotlib.figure.Figure`s
on the Agg canvas (no pyplot, no display needed); `picture` draws one as a PNG a notebook shows.
Every text from the data (ids, kinds, versions) goes through `printable` before it is shown.
"""

from __future__ import annotations

import io
import os
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
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
from models.labels import Label
from models.train import Trained, train
from monitor.cli.anomaly import DEFAULT_MODEL
from monitor.core.alerts import Alert
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

Cell = str | int | float | None


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
    changed it within the log; the shadow's columns are read when every file has them. Raises
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
    for fragment, schema in zip(fragments, schemas, strict=True):
        _check_file(printable(str(fragment.path)), schema, wanted)
    columns = [*wanted, *_SHADOW] if shadow else wanted
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
    `posmon replay --alerts` writes: an alert's last line is its final version). Raises
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
            if lab.known_at is not None
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


def retrain(
    rows: ScoredRows, *, alert_rate: float, seed: int, source: str = "feature log"
) -> Trained:
    """A challenger fitted on `rows` by `models.train.train` (the shipped model's groups, trees
    and samples). The card's training data names `source` as its file and counts the attempts
    as its events: a feature log holds no other events. Raises `TrainingError`."""
    return train(rows, files=[source], events=len(rows), alert_rate=alert_rate, seed=seed)


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


def read_comparison(out: Path) -> Comparison:
    """The comparison `compare` wrote into `out` (its two `evaluation.json`)."""
    champion, challenger = (
        Evaluation.model_validate_json((out / role / "evaluation.json").read_bytes())
        for role in ("champion", "challenger")
    )
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


def publish(trained: Trained, directory: Path) -> Model:
    """Write the model into `directory` (`Trained.write`: the arrays, then the card, each
    renamed into place) and load it back as posmon will. Point `model.path` of `posmon run` at
    `directory`: it reloads a changed artifact within `reload_every`, or at once on SIGHUP."""
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
        *((f"library {k}", v) for k, v in sorted(card.libraries.items())),
    ]
    return Table(("field", "value"), figures, "model card")


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
