"""The terminal event on the wire (docs/contract.md, "Event") and its decoding.

`decode` turns the bytes of one message (or one JSONL line) into either an `Event`, the compact
immutable record the core works on, or a `Rejection` carrying a reason, a readable error and the
raw text with every card number masked. Decoding never raises on bad input.

Amounts and times are bounded to what every later step can represent (a metric's float, a
`datetime` a deadline past the event): a value outside is rejected here, not a crash later.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring_ascii
from typing import Annotated, Final, Literal, NamedTuple, NotRequired, get_type_hints

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, with_config
from pydantic_core import ErrorDetails
from typing_extensions import TypedDict

from monitor.core.pans import UUID_PATTERN, holds_pan, mask_pans

Kind = Literal[
    "auth_request",
    "auth_approved",
    "auth_declined",
    "network_error",
    "reversal",
    "debit_posted",
    "refund",
    "preauth_hold",
    "preauth_release",
    "preauth_completion",
]
KINDS: Final[tuple[str, ...]] = Kind.__args__  # type: ignore[attr-defined]

Id64 = Annotated[str, Field(min_length=1, max_length=64)]
# RFC 3339 date-time with a mandatory offset. Checked by the validator's regex, then turned into
# epoch microseconds by `datetime.fromisoformat`, which is cheaper than a validated datetime.
RFC3339: Final = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}"
    r"(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
# The bounds of an amount and of an event time (1970 to before 2100): far beyond any real
# event, and far enough from float precision and `datetime`'s year 9999. The time is checked in
# float seconds: cheaper than on the integer microseconds (valgrind: 225 instructions, not 380).
MAX_AMOUNT_MINOR: Final = 999_999_999_999
T_END_S: Final = 4_102_444_800.0  # 2100-01-01T00:00:00Z
_TIME_RANGE_ERROR: Final = (
    "event_time: must be from 1970-01-01T00:00:00Z to before 2100-01-01T00:00:00Z"
)


@with_config(ConfigDict(extra="ignore", strict=True))
class WireEvent(TypedDict):
    """The validated wire form of a terminal event; unknown fields are ignored.

    A TypedDict rather than a model: validating into a dict costs a third less than building
    a model instance, and the core copies the fields into `Event` anyway.
    """

    event_id: Id64
    event_time: Annotated[str, Field(pattern=RFC3339, json_schema_extra={"format": "date-time"})]
    kind: Kind
    terminal_id: Id64
    merchant_id: Id64
    card_id: Annotated[str, Field(min_length=8, max_length=128)]
    txn_ref: Id64
    amount_minor: Annotated[int, Field(ge=0, le=MAX_AMOUNT_MINOR)]
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    response_code: NotRequired[Annotated[str, Field(pattern=r"^[0-9A-Z]{2}$")] | None]
    mcc: NotRequired[Annotated[str, Field(pattern=r"^[0-9]{4}$")] | None]
    source: NotRequired[Literal["terminal", "acquirer", "issuer", "ledger"] | None]


class Event(NamedTuple):
    """One accepted event, as the core sees it. `t` is the event time in epoch microseconds."""

    event_id: str
    t: int
    kind: str
    terminal_id: str
    merchant_id: str
    card_id: str
    txn_ref: str
    amount_minor: int
    currency: str
    response_code: str | None = None
    mcc: str | None = None
    source: str | None = None


# `future` and `conflict`, `internal` come from the scorer, after decoding (docs/contract.md,
# "Dead letters").
RejectReason = Literal["not_json", "schema", "pan", "future", "conflict", "internal"]
REJECT_REASONS: Final[tuple[str, ...]] = RejectReason.__args__  # type: ignore[attr-defined]


class Rejection(NamedTuple):
    """A message that broke a rule. `raw` is the message text with card numbers masked.

    `partition` and `offset` say where it was read, when the source knows (a file: partition 0,
    the line number). `raw_length` and `raw_sha256` are set once `raw` was cut (`cut`): the
    length and hash of the whole masked text.
    """

    reason: RejectReason
    error: str
    raw: str
    partition: int | None = None
    offset: int | None = None
    raw_length: int | None = None
    raw_sha256: str | None = None

    def cut(self, max_bytes: int) -> Rejection:
        """This rejection with `raw` cut to take at most `max_bytes` as a JSON string (escapes
        counted), so that its dead letter fits a Kafka message; itself when it fits already."""
        raw = self.raw
        if len(raw) <= max_bytes // 12 or _json_bytes(raw) <= max_bytes:  # 12: the widest escape
            return self
        low, high = 0, min(len(raw), max_bytes)  # the longest prefix that fits, by bisection
        while low < high:
            middle = (low + high + 1) // 2
            if _json_bytes(raw[:middle]) <= max_bytes:
                low = middle
            else:
                high = middle - 1
        digest = hashlib.sha256(raw.encode()).hexdigest()
        return self._replace(raw=raw[:low], raw_length=len(raw), raw_sha256=digest)

    def as_dead_letter(self, source: Mapping[str, str | int] | None = None) -> dict[str, object]:
        """The dead-letter object; `source` is where the message was read, as the sink names it
        (`{"topic", "partition", "offset"}` or `{"file", "line"}`)."""
        letter: dict[str, object] = {"reason": self.reason, "error": self.error, "raw": self.raw}
        if source is not None:
            letter["source"] = dict(source)
        if self.raw_length is not None:
            letter["truncated"] = True
            letter["raw_length"] = self.raw_length
            letter["raw_sha256"] = self.raw_sha256
        return letter


def refusal(reason: RejectReason, error: str, raw: bytes) -> Rejection:
    """A rejection of a message that decoded into an event the scorer refused."""
    return Rejection(reason, mask_pans(error), mask_pans(_text(raw)))


def _json_bytes(text: str) -> int:
    """The bytes `text` takes as a JSON string (ASCII, as `json.dumps` writes), quotes left out."""
    return len(encode_basestring_ascii(text)) - 2


# The card-number guard's first look, inside validation: a value that is printable ASCII without
# a backslash and has no 13 digits or separators in a row (or is a canonical UUID) cannot hold
# a candidate (monitor.core.pans). pydantic-core checks this with its Rust regex engine for
# about 1,000 instructions an event, a quarter of the same test in Python. A value that fails it
# is not refused: `_second_look` judges it by the full rule.
_PLAIN_ID: Final = rf"^(?:{UUID_PATTERN}|[0-9 ./-]{{0,12}}(?:[!-,:-\[\]-~]+[0-9 ./-]{{0,12}})*)$"
_GUARDED_FIELDS: Final = ("card_id", "txn_ref", "event_id", "terminal_id", "merchant_id")
_WIRE: Final = TypeAdapter(WireEvent)
_validate_wire = _WIRE.validator.validate_json  # the compiled validator, without the wrapper call
_hints = get_type_hints(WireEvent, include_extras=True)
_GUARDED_WIRE: Final = TypeAdapter(
    with_config(ConfigDict(extra="ignore", strict=True))(
        TypedDict(  # type: ignore[operator]
            "GuardedWireEvent",
            {
                name: Annotated[hint, Field(pattern=_PLAIN_ID)] if name in _GUARDED_FIELDS else hint
                for name, hint in _hints.items()
            },
        )
    )
)
_validate_json = _GUARDED_WIRE.validator.validate_json
_fromisoformat = datetime.fromisoformat
_NOT_JSON_ERRORS: Final = frozenset({"json_invalid", "json_type", "dict_type", "model_type"})
_new_event = tuple.__new__  # skips NamedTuple's Python-level __new__ on the hot path


def decode(raw: bytes) -> Event | Rejection:
    """Validate one message. Returns an `Event`, or a `Rejection` (never raises on bad input)."""
    try:
        m: WireEvent = _validate_json(raw)
    except ValidationError as exc:
        return _second_look(raw, exc)
    return _event(raw, m)


def _event(raw: bytes, m: WireEvent) -> Event | Rejection:
    try:
        seconds = _fromisoformat(m["event_time"]).timestamp()
    except ValueError as exc:  # matched the pattern but is no date (month 13, hour 25, ...)
        return Rejection("schema", f"event_time: {mask_pans(str(exc))}", mask_pans(_text(raw)))
    if not 0.0 <= seconds < T_END_S:
        return Rejection("schema", _TIME_RANGE_ERROR, mask_pans(_text(raw)))
    return _new_event(
        Event,
        (
            m["event_id"],
            round(seconds * 1_000_000),
            m["kind"],
            m["terminal_id"],
            m["merchant_id"],
            m["card_id"],
            m["txn_ref"],
            m["amount_minor"],
            m["currency"],
            m.get("response_code"),
            m.get("mcc"),
            m.get("source"),
        ),
    )


def _second_look(raw: bytes, exc: ValidationError) -> Event | Rejection:
    """Judge a message that failed validation: when only the guard's first look failed, the
    flagged ids are checked by the full card-number rule; otherwise it is rejected."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    flagged = [
        str(e["loc"][0])
        for e in errors
        if e["type"] == "string_pattern_mismatch" and e["loc"][0] in _GUARDED_FIELDS
    ]
    if len(flagged) < len(errors):  # the first look's own messages would only confuse
        return _reject(raw, [e for e in errors if not (e["loc"] and e["loc"][0] in flagged)])
    m: WireEvent = _validate_wire(raw)  # cannot fail: only the first look did
    for name in flagged:
        if holds_pan(str(m[name])):  # type: ignore[literal-required]
            return Rejection("pan", f"{name} holds a card number (PAN)", mask_pans(_text(raw)))
    return _event(raw, m)


def _reject(raw: bytes, errors: list[ErrorDetails]) -> Rejection:
    if any(e["type"] in _NOT_JSON_ERRORS and not e["loc"] for e in errors):
        reason: RejectReason = "not_json"
    else:
        reason = "schema"
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(p) for p in e["loc"]) or "message"
        parts.append(f"{loc}: {e['msg']}")
    if len(errors) > 5:
        parts.append(f"and {len(errors) - 5} more")
    return Rejection(reason, mask_pans("; ".join(parts)), mask_pans(_text(raw)))


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="backslashreplace")


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def to_datetime(t_us: int) -> datetime:
    """The UTC datetime of an epoch-microsecond time (exact, no float rounding)."""
    return _EPOCH + timedelta(microseconds=t_us)


def format_time(t_us: int) -> str:
    """RFC 3339 (UTC, microseconds) for an epoch-microsecond time."""
    return to_datetime(t_us).isoformat(timespec="microseconds")


def parse_time(text: str) -> int:
    """Epoch microseconds of an RFC 3339 time with an offset."""
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        raise ValueError(f"time without an offset: {text!r}")
    return round(dt.timestamp() * 1_000_000)


def event_json_schema() -> dict[str, object]:
    return _WIRE.json_schema()
