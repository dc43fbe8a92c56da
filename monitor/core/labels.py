"""Labels: the risk team's verdicts on purchases, known some time after the purchase.

A label is one JSON object (a line of a labels file, or a record of the `posmon.labels` topic):

    {"event_id": "...", "label": 0|1, "known_at": "2026-03-02T10:00:00Z",
     "kind"?: str, "source"?: str}

`event_id` names an `auth_request`; `label` 1 is fraud (or an anomaly), 0 is genuine. Instead of
`event_id`, an `alert_id` gives a verdict on an alert, applied to the attempts in its evidence.
`known_at` is when the verdict became known: the scorer uses a label from that event time
onwards, never before (a label without `known_at` is never used for features, only for
evaluation). A later label for the same purchase replaces the earlier one from its own
`known_at` (a verdict corrected).

Other keys are ignored, so the simulator's labels file (which also holds its incident records)
and the analysts' tools can add their own. Errors name the field and the rule, never the input.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Final, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from monitor.core.events import RFC3339
from monitor.core.text import printable

_RFC3339: Final = re.compile(RFC3339)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US: Final = timedelta(microseconds=1)


class LabelError(ValueError):
    """A record that is not a label; one line of printable text without the input."""


def _rfc3339(value: object) -> object:
    """`known_at` as RFC 3339 text with an offset, nothing else (no epoch numbers, no dates)."""
    if value is None:
        return None
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise ValueError("must be an RFC 3339 date-time with an offset")
    return value


Id = Annotated[str, Field(strict=True, min_length=1, max_length=256)]


class Label(BaseModel):
    """One verdict: on a purchase (`event_id`) or on an alert (`alert_id`), exactly one."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    event_id: Id | None = None
    alert_id: Id | None = None
    label: Annotated[int, Field(strict=True, ge=0, le=1)]  # 1: fraud; `true` is refused
    known_at: Annotated[AwareDatetime | None, BeforeValidator(_rfc3339)] = None
    kind: Annotated[str | None, Field(strict=True, max_length=256)] = None
    source: Annotated[str | None, Field(strict=True, max_length=256)] = None

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        if (self.event_id is None) == (self.alert_id is None):
            raise ValueError("give exactly one of event_id and alert_id")
        return self

    @property
    def known_at_us(self) -> int | None:
        """`known_at` in epoch microseconds (None without one)."""
        if self.known_at is None:
            return None
        return (self.known_at - _EPOCH) // _ONE_US

    def to_json(self) -> bytes:
        """The label as one compact JSON object (what `parse_label` reads back)."""
        return self.model_dump_json(exclude_none=True).encode()


def is_label(record: object) -> bool:
    """Whether a decoded JSON record is meant as a label (it has a `label` key)."""
    return isinstance(record, dict) and "label" in record


def parse_label(raw: bytes | str) -> Label:
    """The label in one JSON text; raises `LabelError`."""
    try:
        record = json.loads(raw)
    except UnicodeDecodeError as exc:
        raise LabelError("not UTF-8") from exc
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, an integer too long, nesting
        raise LabelError("not JSON") from exc
    return label_of(record)


def label_of(record: object) -> Label:
    """The label a decoded JSON record makes; raises `LabelError`."""
    if not isinstance(record, dict):
        raise LabelError("not a JSON object")
    try:
        return Label.model_validate(record)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "label"
        raise LabelError(printable(f"not a label ({field}: {first['msg']})")) from None
