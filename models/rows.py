"""Events replayed through the serving scorer into feature rows (and scores): the one way the
offline code gets features, so training rows are the rows the stream scores."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monitor.core.alerts import Alert
from monitor.core.labels import Label
from monitor.core.scored import ScoredRows
from monitor.scoring.features import FEATURE_VERSION, FEATURES
from monitor.scoring.model import Model, ModelSlot
from monitor.scoring.pipeline import MemorySink, MemorySource, Stats, run
from monitor.scoring.policy import Policy
from monitor.scoring.scorer import Scorer
from monitor.streaming.files import read_messages


@dataclass(frozen=True, slots=True)
class Replayed:
    rows: ScoredRows
    events: int  # lines read
    alerts: dict[str, Alert]  # every alert's final version


def replay_rows(
    paths: Sequence[Path],
    policy: Policy,
    model: Model | None = None,
    *,
    shadow: Model | None = None,
    labels: Sequence[Label] = (),
    batch_size: int = 1000,
) -> Replayed:
    """Replay the files (one stream, in the order given) and return every scored request;
    the label features use `labels`, each from its `known_at` (as `posmon replay --labels`)."""
    slot = ModelSlot(live=model, shadow=shadow, keep_rows=True)
    scorer, sink, stats = Scorer(policy, slot), MemorySink(), Stats()
    scorer.learn(labels)
    rows: list[ScoredRows] = []

    def keep(_batch: object, _elapsed: float) -> None:
        rows.extend(slot.take_rows())

    run(MemorySource(_lines(paths), batch_size), sink, scorer, stats, on_batch=keep)
    rows.extend(slot.take_rows())
    return Replayed(concat(rows), stats.messages, sink.final_alerts())


def _lines(paths: Sequence[Path]) -> Iterator[bytes]:
    return itertools.chain.from_iterable(read_messages(str(p)) for p in paths)


def concat(parts: Sequence[ScoredRows]) -> ScoredRows:
    """One `ScoredRows` of several, in order (the first's model versions)."""
    if not parts:
        return ScoredRows(
            event_id=[],
            event_time_us=np.empty(0, dtype=np.int64),
            card_id=[],
            terminal_id=[],
            merchant_id=[],
            features=np.empty((0, len(FEATURES)), dtype=np.float32),
            feature_names=FEATURES,
            feature_version=FEATURE_VERSION,
        )
    first = parts[0]

    def scores(name: str) -> np.ndarray | None:
        got = [getattr(p, name) for p in parts]
        return None if any(g is None for g in got) else np.concatenate(got)

    return ScoredRows(
        event_id=[e for p in parts for e in p.event_id],
        event_time_us=np.concatenate([p.event_time_us for p in parts]),
        card_id=[e for p in parts for e in p.card_id],
        terminal_id=[e for p in parts for e in p.terminal_id],
        merchant_id=[e for p in parts for e in p.merchant_id],
        features=np.concatenate([p.features for p in parts]),
        feature_names=first.feature_names,
        feature_version=first.feature_version,
        score=scores("score"),
        model_version=first.model_version,
        shadow_score=scores("shadow_score"),
        shadow_version=first.shadow_version,
        unsupervised_score=scores("unsupervised_score"),
    )


def take(rows: ScoredRows, keep: np.ndarray) -> ScoredRows:
    """The rows where `keep` (a boolean mask) is true, in order."""
    index = np.flatnonzero(keep)
    return ScoredRows(
        event_id=[rows.event_id[i] for i in index],
        event_time_us=rows.event_time_us[index],
        card_id=[rows.card_id[i] for i in index],
        terminal_id=[rows.terminal_id[i] for i in index],
        merchant_id=[rows.merchant_id[i] for i in index],
        features=rows.features[index],
        feature_names=rows.feature_names,
        feature_version=rows.feature_version,
        score=None if rows.score is None else rows.score[index],
        model_version=rows.model_version,
        shadow_score=None if rows.shadow_score is None else rows.shadow_score[index],
        shadow_version=rows.shadow_version,
        unsupervised_score=None
        if rows.unsupervised_score is None
        else rows.unsupervised_score[index],
    )
