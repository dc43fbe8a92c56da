"""`posmon train` and `posmon evaluate`: the offline commands, plugged into `posmon` through the
`posmon.commands` entry point (monitor never imports this package).

Every `posmon` command loads this module to build its parser, so it imports only what the
parser needs; scikit-learn, the replay and matplotlib are imported by the handlers that use them.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monitor.cli.anomaly import DEFAULT_MODEL
from monitor.cli.commands import UsageError
from monitor.cli.settings import load_settings
from monitor.core.text import printable
from monitor.scoring.model import ModelError, load_model

_KIND_LOSS = 0.1  # average precision lost on one kind that is worth a warning

if TYPE_CHECKING:
    from collections.abc import Mapping

    from models.rows import Replayed
    from models.train import Trained
    from monitor.core.labels import Label
    from monitor.core.scored import ScoredRows
    from monitor.scoring.model import Model


def register(sub: Any) -> None:
    """Add the commands to `posmon`'s subparsers."""
    train_ = sub.add_parser(
        "train",
        help="fit the anomaly model on replayed events and write its artifact",
        description="Replay events through the serving features (as `posmon replay` scores"
        " them), fit one IsolationForest per feature group, set the threshold from the alert"
        " budget and write the artifact (forest.npz + card.json) into --out.",
    )
    train_.add_argument("events", nargs="+", type=Path, help="events files (JSONL), in order")
    train_.add_argument("--out", type=Path, required=True, help="the artifact's directory")
    train_.add_argument(
        "--alert-rate",
        type=float,
        default=0.001,
        help="share of attempts above the threshold (default 0.001: 1 in 1,000)",
    )
    train_.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    train_.add_argument("--config", type=Path, help="YAML configuration (the policy's state)")
    train_.add_argument(
        "--labels",
        type=Path,
        help="labels (JSONL): hold the last --held-back-days out, fit before the gap, and write"
        " the model only if it is not worse than the champion there (average precision)",
    )
    train_.add_argument(
        "--champion", type=Path, metavar="DIR", help="the model to beat (default: the shipped one)"
    )
    train_.add_argument(
        "--held-back-days", type=float, default=7.0, help="days judged, at the end (default 7)"
    )
    train_.add_argument(
        "--gap-days",
        type=float,
        default=7.0,
        help="days left out before them, as long as the labels' delay (default 7)",
    )
    train_.add_argument(
        "--force", action="store_true", help="write the model even if the champion is better"
    )
    train_.add_argument(
        "--no-supervised",
        action="store_true",
        help="with --labels: fit the forests only (no supervised stage), judged the same way",
    )
    train_.set_defaults(handler=train_command)

    evaluate_ = sub.add_parser(
        "evaluate",
        help="score labelled events with a model; figures as JSON and an HTML page",
        description="Replay labelled events through a model and write precision, recall,"
        " ROC-AUC, average precision, top-k card precision per day and recall per anomaly"
        " kind, beside the card's amount z-score as a baseline (evaluation.json, index.html).",
    )
    evaluate_.add_argument("events", nargs="+", type=Path, help="events files (JSONL), in order")
    evaluate_.add_argument("--labels", type=Path, required=True, help="labels file (JSONL)")
    evaluate_.add_argument(
        "--model", type=Path, help="the model artifact (default: the shipped one)"
    )
    evaluate_.add_argument(
        "--challenger",
        type=Path,
        metavar="DIR",
        help="a second model judged beside --model on the same events (champion and challenger)",
    )
    evaluate_.add_argument("--out", type=Path, required=True, help="folder for the page")
    evaluate_.add_argument("--top-k", type=int, default=10, help="cards per day (default 10)")
    evaluate_.add_argument("--config", type=Path, help="YAML configuration (the policy's state)")
    evaluate_.set_defaults(handler=evaluate_command)


def _inputs(paths: list[Path]) -> None:
    for path in paths:
        if not path.is_file():
            raise UsageError(f"no such events file: {path}")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def train_command(args: argparse.Namespace) -> int:
    from models.rows import replay_rows  # noqa: PLC0415 - see the module's docstring
    from models.train import TrainingError, train  # noqa: PLC0415

    _inputs(args.events)
    if not 0 < args.alert_rate < 1:
        raise UsageError("--alert-rate must be between 0 and 1 (for example 0.001)")
    settings = load_settings(args.config)
    started = time.perf_counter()
    verdicts = [] if args.labels is None else _verdicts(args.labels)
    _say(f"replaying {len(args.events)} file(s) through the serving features ...")
    replayed = replay_rows(args.events, settings.policy, labels=verdicts)
    _say(
        f"{replayed.events:,} events, {len(replayed.rows):,} attempts in"
        f" {time.perf_counter() - started:.1f} s; fitting the forests ..."
    )
    try:
        if args.labels is None:
            trained = train(
                replayed.rows,
                files=[p.name for p in args.events],
                events=replayed.events,
                alert_rate=args.alert_rate,
                seed=args.seed,
            )
        else:
            trained = _challenge(args, replayed, verdicts)
        trained.write(args.out)
    except TrainingError as exc:
        raise UsageError(str(exc)) from exc
    except OSError as exc:
        raise UsageError(f"cannot write {exc.filename}: {exc.strerror}") from exc
    card = trained.model.card
    print(
        f"model {card.version}: {card.training.rows:,} attempts, threshold"
        f" {card.threshold:.10g} ({card.alert_rate:g} of attempts), written to {args.out}"
        f" in {time.perf_counter() - started:.1f} s"
    )
    return 0


def _verdicts(path: Path) -> list[Label]:
    from models.labels import LabelsError, read_verdicts  # noqa: PLC0415

    try:
        return read_verdicts(path)
    except LabelsError as exc:
        raise UsageError(str(exc)) from exc


def _challenge(args: argparse.Namespace, replayed: Replayed, verdicts: list[Label]) -> Trained:
    """Fit before the held-back period (the supervised stage on the labels known by its start),
    judge challenger and champion on it; refuse a worse challenger unless `--force`."""
    import numpy as np  # noqa: PLC0415

    from models.labels import known_by, on_purchases, read_labels, with_alerts  # noqa: PLC0415
    from models.train import TrainingError, held_back_split, judge, train  # noqa: PLC0415

    if args.held_back_days <= 0 or args.gap_days < 0:
        raise UsageError("--held-back-days must be positive and --gap-days at least 0")
    try:
        champion = load_model(args.champion or DEFAULT_MODEL)
    except ModelError as exc:
        raise UsageError(str(exc)) from exc
    rows = replayed.rows
    fit, judged = held_back_split(rows, held_back_days=args.held_back_days, gap_days=args.gap_days)
    labels = with_alerts(read_labels(args.labels), verdicts, replayed.alerts)
    cutoff = int(judged.event_time_us.min()) if len(judged) else int(rows.event_time_us.max())
    y = None
    kinds: list[str | None] | None = None
    notes: dict[str, int | float | str | None] = {}
    if not args.no_supervised:
        # The verdicts as known when the held-back days start (alerts' on their purchases).
        known = known_by(on_purchases(verdicts, replayed.alerts), cutoff)
        fraud = [known[e] if e in known and known[e].label == 1 else None for e in fit.event_id]
        y = np.array([label is not None for label in fraud], np.int8)
        kinds = [None if label is None else label.kind for label in fraud]
        notes = {
            "labels_file": args.labels.name,
            "known_by": _rfc3339(cutoff),
            "gap_days": args.gap_days,
            "held_back_days": args.held_back_days,
        }
        _say(f"supervised stage: {int(y.sum()):,} of {len(y):,} attempts known as fraud")
        if not y.any():
            raise TrainingError(
                f"no attempt before the gap is known as fraud by {_rfc3339(cutoff)}: the"
                " supervised stage cannot be fitted (--no-supervised fits the forests only)"
            )
    trained = train(
        fit,
        files=[p.name for p in args.events],
        events=replayed.events,
        alert_rate=args.alert_rate,
        seed=args.seed,
        labels=y,
        kinds=kinds,
        label_notes=notes,
    )
    positive = {event_id for event_id, label in labels.items() if label.label == 1}
    try:
        verdict = judge(trained.model, champion, judged, positive)
    except TrainingError:
        if not args.force:
            raise
        verdict = None
    ours = None if verdict is None else verdict.challenger
    theirs = None if verdict is None else verdict.champion
    _say(
        f"held-back period: {len(judged):,} attempts; average precision: challenger"
        f" {_fmt(ours)}, champion {champion.version} {_fmt(theirs)}"
    )
    if verdict is not None:
        _by_kind(trained.model, champion, judged, labels)
    if verdict is not None and verdict.worse and not args.force:
        if ours is None or theirs is None:
            raise TrainingError(
                "no attempt of the held-back period is labelled 1: the challenger cannot be"
                " judged (not written; --force writes it)"
            )
        raise TrainingError(
            f"the challenger is worse than the champion {champion.version} on the held-back"
            f" period (average precision {ours:.3f} against {theirs:.3f}): not written"
            " (--force writes it)"
        )
    return trained.judged(
        {
            "held_back_rows": len(judged),
            "held_back_average_precision": ours,
            "champion_average_precision": theirs,
        }
    )


def _by_kind(
    challenger: Model, champion: Model, judged: ScoredRows, labels: Mapping[str, Label]
) -> None:
    """Print each anomaly kind's average precision on the held-back period for both models;
    warn when the challenger loses one the champion found (the gate judges all kinds together:
    a frequent kind can hide the loss of a rare one)."""
    from models.train import average_precision_by_kind  # noqa: PLC0415

    kinds = {e: label.kind or "(no kind)" for e, label in labels.items() if label.label == 1}
    ours = average_precision_by_kind(challenger, judged, kinds)
    theirs = average_precision_by_kind(champion, judged, kinds)
    for kind, value in ours.items():
        shown = printable(kind)
        _say(f"  {shown}: challenger {value:.3f}, champion {theirs[kind]:.3f}")
        if theirs[kind] - value > _KIND_LOSS:
            _say(
                f"warning: the challenger ranks {shown} far worse than the champion"
                f" ({value:.3f} against {theirs[kind]:.3f})"
            )


def _rfc3339(t_us: int) -> str:
    return datetime.fromtimestamp(t_us / 1e6, tz=UTC).isoformat().replace("+00:00", "Z")


def evaluate_command(args: argparse.Namespace) -> int:
    try:  # matplotlib is the `report` extra, as for `posmon report`
        from models.evaluate import evaluate  # noqa: PLC0415 - see the module's docstring
    except ImportError as exc:
        raise UsageError(
            f"posmon evaluate needs matplotlib: pip install 'posmon[report]' ({exc})"
        ) from exc
    from models.labels import LabelsError, read_verdicts, with_alerts  # noqa: PLC0415
    from models.rows import replay_rows  # noqa: PLC0415

    _inputs(args.events)
    if args.top_k < 1:
        raise UsageError("--top-k must be at least 1")
    settings = load_settings(args.config)
    try:
        verdicts = read_verdicts(args.labels)
        model = load_model(args.model or DEFAULT_MODEL)
        challenger = None if args.challenger is None else load_model(args.challenger)
    except (LabelsError, ModelError) as exc:
        raise UsageError(str(exc)) from exc
    except OSError as exc:
        raise UsageError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    against = "" if challenger is None else f" against {challenger.version}"
    _say(f"replaying {len(args.events)} file(s) with model {model.version}{against} ...")
    # One replay scores both: the challenger as the shadow, on the same batches. The label
    # features use the verdicts, each from its known_at, as the stream would.
    replayed = replay_rows(args.events, settings.policy, model, shadow=challenger, labels=verdicts)
    on_events = {v.event_id: v for v in verdicts if v.event_id is not None}
    labels = with_alerts(on_events, verdicts, replayed.alerts)
    try:
        result = evaluate(
            replayed.rows,
            labels,
            threshold=model.threshold,
            model_version=model.version,
            out=args.out,
            top_k=args.top_k,
            challenger=None if challenger is None else (challenger.version, challenger.threshold),
        )
    except OSError as exc:
        raise UsageError(f"cannot write {exc.filename}: {exc.strerror}") from exc
    for version, figures in (
        (model.version, result.model),
        *([] if challenger is None else [(challenger.version, result.challenger)]),
    ):
        assert figures is not None
        print(
            f"model {version}: average precision {_fmt(figures.average_precision)}, recall"
            f" {_fmt(figures.recall)} at the threshold"
        )
    print(f"page: {args.out / 'index.html'}")
    return 0


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
