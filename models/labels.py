"""The labels file: which auth_requests were anomalous (`label` 1) and which were not (0).

JSONL, one object per line: `{"event_id": ..., "label": 0|1, "kind"?: str, "known_at"?: RFC 3339,
"source"?: str}`; other keys are ignored. Lines without a `label` key are skipped: the simulator's
labels file holds its other records too (`{"type": "incident", ...}`). A labelled line that is
not a valid label is an error naming its line number, since a label quietly dropped would bend
every figure computed from the file. An event_id labelled twice takes its later line (a label
corrected later in the file wins).

Error messages quote the path and the validation error's location and message (never the
input), all through `printable`: the file may come from anywhere, and no card number or escape
sequence reaches a terminal or a log.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from monitor.core.events import RFC3339
from monitor.core.text import printable

_RFC3339 = re.compile(RFC3339)


class LabelsError(ValueError):
    """The labels file cannot be read, or a labelled line is not a label; one line of text."""


def _rfc3339(value: object) -> object:
    """`known_at` as RFC 3339 text with an offset, nothing else (no epoch numbers, no dates)."""
    if value is None:
        return None
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise ValueError("must be an RFC 3339 date-time with an offset")
    return value


class Label(BaseModel):
    """One labelled auth_request."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    event_id: Annotated[str, Field(strict=True, min_length=1)]
    label: Annotated[int, Field(strict=True, ge=0, le=1)]  # 1: anomalous; `true` is refused
    known_at: Annotated[AwareDatetime | None, BeforeValidator(_rfc3339)] = None
    kind: Annotated[str | None, Field(strict=True)] = None  # the anomaly's kind, for recall by kind
    source: Annotated[str | None, Field(strict=True)] = None


def read_labels(path: Path) -> dict[str, Label]:
    """The labels of `path` by event_id (the later line wins); raises `LabelsError`."""
    where = printable(str(path))
    labels: dict[str, Label] = {}
    try:
        with path.open("rb") as stream:
            for number, raw in enumerate(stream, 1):
                label = _label(raw, f"{where}:{number}")
                if label is not None:
                    labels[label.event_id] = label
    except FileNotFoundError as exc:
        raise LabelsError(f"{where}: no such file") from exc
    except OSError as exc:
        why = printable(exc.strerror or type(exc).__name__)
        raise LabelsError(f"{where}: cannot read ({why})") from exc
    return labels


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
    if "label" not in record:
        return None
    try:
        return Label.model_validate(record)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "line"
        why = printable(f"{field}: {first['msg']}")
        raise LabelsError(f"{where}: not a label ({why})") from exc
