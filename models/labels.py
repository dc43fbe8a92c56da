"""The labels file: the risk team's verdicts, one JSON object per line (`monitor.core.labels`).

The file is read by `monitor.streaming.labelsfile` (`posmon replay --labels` reads it too).
`read_verdicts` gives every verdict in file order (what the scorer learns from, each at its
`known_at`); `read_labels` the verdict on each purchase as finally known (the later line wins: a
label corrected later in the file), for judging a model; `with_alerts` adds the verdicts given
on alerts, applied to the attempts in their evidence.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from monitor.core.alerts import Alert
from monitor.core.labels import Label
from monitor.streaming.labelsfile import LabelsError, read_verdicts

__all__ = [
    "Label",
    "LabelsError",
    "known_by",
    "on_purchases",
    "read_labels",
    "read_verdicts",
    "with_alerts",
]


def read_labels(path: Path) -> dict[str, Label]:
    """The verdict on each purchase of `path`, by event_id (the later line wins; verdicts on
    alerts are left out: see `with_alerts`); raises `LabelsError`."""
    return {v.event_id: v for v in read_verdicts(path) if v.event_id is not None}


def on_purchases(verdicts: Iterable[Label], alerts: Mapping[str, Alert]) -> list[Label]:
    """`verdicts` in order, each verdict on one of `alerts` replaced by the same verdict on each
    purchase of its evidence (a verdict on an unknown alert is left out)."""
    out: list[Label] = []
    for verdict in verdicts:
        if verdict.alert_id is None:
            out.append(verdict)
            continue
        alert = alerts.get(verdict.alert_id)
        for event_id in () if alert is None else alert.event_ids:
            out.append(verdict.model_copy(update={"event_id": event_id, "alert_id": None}))
    return out


def with_alerts(
    labels: Mapping[str, Label], verdicts: Iterable[Label], alerts: Mapping[str, Alert]
) -> dict[str, Label]:
    """`labels` plus the verdicts on `alerts`, each applied to the attempts in the alert's
    evidence (a verdict on a purchase itself wins over one on its alert)."""
    merged = dict(labels)
    on_alerts = (v for v in verdicts if v.alert_id is not None)
    for verdict in on_purchases(on_alerts, alerts):
        if verdict.event_id is not None and verdict.event_id not in labels:
            merged[verdict.event_id] = verdict
    return merged


def known_by(verdicts: Iterable[Label], t_us: int) -> dict[str, Label]:
    """The verdict on each purchase as it was known at `t_us` (epoch microseconds): of its
    verdicts with a `known_at` at or before then, the one known last (the later one in
    `verdicts` on a tie), as the scorer applies them. Verdicts without `known_at` (never known
    in time) and verdicts on alerts do not count."""
    known = sorted(
        (
            (at, order, verdict)
            for order, verdict in enumerate(verdicts)
            if verdict.event_id is not None
            and (at := verdict.known_at_us) is not None
            and at <= t_us
        ),
        key=lambda item: item[:2],
    )
    return {verdict.event_id: verdict for _, _, verdict in known if verdict.event_id}
