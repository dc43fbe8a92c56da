"""The labels file (JSONL): the risk team's verdicts, one per line (`monitor.core.labels`), for
`posmon replay --labels`, `posmon train --labels` and `posmon evaluate --labels`.

Lines without a `label` key are skipped: the simulator's labels file holds its other records too
(`{"type": "incident", ...}`). A labelled line that is not a valid label is an error naming its
line number, since a label quietly dropped would bend every figure computed from the file.
Error messages quote the path and the rule broken (never the input), through `printable`: the
file may come from anywhere, and no card number or escape sequence reaches a terminal or a log.
"""

from __future__ import annotations

import json
from pathlib import Path

from monitor.core.labels import Label, LabelError, is_label, label_of
from monitor.core.text import printable


class LabelsError(ValueError):
    """The labels file cannot be read, or a labelled line is not a label; one line of text."""


def read_verdicts(path: Path) -> list[Label]:
    """Every label of `path`, in file order; raises `LabelsError`."""
    where = printable(str(path))
    verdicts: list[Label] = []
    try:
        with path.open("rb") as stream:
            for number, raw in enumerate(stream, 1):
                label = _label(raw, f"{where}:{number}")
                if label is not None:
                    verdicts.append(label)
    except FileNotFoundError as exc:
        raise LabelsError(f"{where}: no such file") from exc
    except OSError as exc:
        why = printable(exc.strerror or type(exc).__name__)
        raise LabelsError(f"{where}: cannot read ({why})") from exc
    return verdicts


def _label(raw: bytes, where: str) -> Label | None:
    """The label on one line, None for a blank line or a record without a `label` key."""
    if not raw.strip():
        return None
    try:
        record = json.loads(raw)
    except UnicodeDecodeError as exc:
        raise LabelsError(f"{where}: not UTF-8") from exc
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, an integer too long, nesting
        raise LabelsError(f"{where}: not JSON") from exc
    if not isinstance(record, dict):
        raise LabelsError(f"{where}: not a JSON object")
    if not is_label(record):
        return None
    try:
        return label_of(record)
    except LabelError as exc:
        raise LabelsError(f"{where}: {exc}") from exc
