"""`posmon train` and `posmon evaluate`: the offline commands, plugged into `posmon` through the
`posmon.commands` entry point (monitor never imports this package).

Every `posmon` command loads this module to build its parser, so it imports only what the
parser needs; scikit-learn, the replay and matplotlib are imported by the handlers that use them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from monitor.cli.anomaly import DEFAULT_MODEL
from monitor.cli.commands import UsageError
from monitor.cli.settings import load_settings
from monitor.scoring.model import ModelError, load_model


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
    _say(f"replaying {len(args.events)} file(s) through the serving features ...")
    replayed = replay_rows(args.events, settings.policy)
    _say(
        f"{replayed.events:,} events, {len(replayed.rows):,} attempts in"
        f" {time.perf_counter() - started:.1f} s; fitting the forests ..."
    )
    try:
        trained = train(
            replayed.rows,
            files=[p.name for p in args.events],
            events=replayed.events,
            alert_rate=args.alert_rate,
            seed=args.seed,
        )
        trained.write(args.out)
    except TrainingError as exc:
        raise UsageError(str(exc)) from exc
    except OSError as exc:
        raise UsageError(f"cannot write {exc.filename}: {exc.strerror}") from exc
    card = trained.model.card
    print(
        f"model {card.version}: {card.training.rows:,} attempts, threshold"
        f" {card.threshold:.4f} ({card.alert_rate:g} of attempts), written to {args.out}"
        f" in {time.perf_counter() - started:.1f} s"
    )
    return 0


def evaluate_command(args: argparse.Namespace) -> int:
    try:  # matplotlib is the `report` extra, as for `posmon report`
        from models.evaluate import evaluate  # noqa: PLC0415 - see the module's docstring
    except ImportError as exc:
        raise UsageError(
            f"posmon evaluate needs matplotlib: pip install 'posmon[report]' ({exc})"
        ) from exc
    from models.labels import LabelsError, read_labels  # noqa: PLC0415
    from models.rows import replay_rows  # noqa: PLC0415

    _inputs(args.events)
    if args.top_k < 1:
        raise UsageError("--top-k must be at least 1")
    settings = load_settings(args.config)
    try:
        labels = read_labels(args.labels)
        model = load_model(args.model or DEFAULT_MODEL)
    except (LabelsError, ModelError) as exc:
        raise UsageError(str(exc)) from exc
    except OSError as exc:
        raise UsageError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    _say(f"replaying {len(args.events)} file(s) with model {model.version} ...")
    replayed = replay_rows(args.events, settings.policy, model)
    try:
        result = evaluate(
            replayed.rows,
            labels,
            threshold=model.threshold,
            model_version=model.version,
            out=args.out,
            top_k=args.top_k,
        )
    except OSError as exc:
        raise UsageError(f"cannot write {exc.filename}: {exc.strerror}") from exc
    m = result.model
    print(
        f"model {model.version}: average precision {_fmt(m.average_precision)}, recall"
        f" {_fmt(m.recall)} at the threshold; page: {args.out / 'index.html'}"
    )
    return 0


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
