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

__all__ = ["Label", "LabelsError", "read_labels", "read_verdicts", "with_alerts"]


def read_labels(path: Path) -> dict[str, Label]:
    """The verdict on each purchase of `path`, by event_id (the later line wins; verdicts on
    alerts are left out: see `with_alerts`); raises `LabelsError`."""
    return {v.event_id: v for v in read_verdicts(path) if v.event_id is not None}


def with_alerts(
    labels: Mapping[str, Label], verdicts: Iterable[Label], alerts: Mapping[str, Alert]
) -> dict[str, Label]:
    """`labels` plus the verdicts on `alerts`, each applied to the attempts in the alert's
    evidence (a verdict on a purchase itself wins over one on its alert)."""
    merged = dict(labels)
    for verdict in verdicts:
        alert = None if verdict.alert_id is None else alerts.get(verdict.alert_id)
        if alert is None:
            continue
        for event_id in alert.event_ids:
            if event_id not in labels:
                merged[event_id] = verdict.model_copy(
                    update={"event_id": event_id, "alert_id": None}
                )
    return merged
