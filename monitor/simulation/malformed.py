"""Lines the monitor must reject, one variant at a time.

Reasons follow the labels file: `not_json` (not UTF-8, not JSON, or JSON that is not an
object), `schema` (a JSON object that breaks a field rule of docs/contract.md, "Event") and
`pan` (an otherwise valid event whose `card_id` is a Luhn-valid card number, plain or with
separators).

Every variant is built from a harmless template: an `auth_request` of an ordinary amount with a
fresh card, reference and event id, timed at the newest `event_time` seen so far. So a monitor
that wrongly accepted one would neither move its watermark nor make any alert.
"""

from __future__ import annotations

import json
import random

from monitor.simulation.lines import Ids, TimeFormat
from monitor.simulation.world import Terminal, new_token

NOT_JSON = "not_json"
SCHEMA = "schema"
PAN = "pan"

#: (variant, reason); the delivery emits each at least once per run.
VARIANTS = (
    ("garbage_bytes", NOT_JSON),
    ("truncated", NOT_JSON),
    ("json_array", NOT_JSON),
    ("json_string", NOT_JSON),
    ("invalid_utf8", NOT_JSON),
    ("missing_field", SCHEMA),
    ("negative_amount", SCHEMA),
    ("float_amount", SCHEMA),
    ("integral_float_amount", SCHEMA),
    ("string_amount", SCHEMA),
    ("bad_currency", SCHEMA),
    ("unknown_kind", SCHEMA),
    ("bad_event_time", SCHEMA),
    ("null_card_id", SCHEMA),
    ("pan_plain", PAN),
    ("pan_spaced", PAN),
    ("pan_dashed", PAN),
    ("pan_amex", PAN),
)

REQUIRED = (
    "event_id", "event_time", "kind", "terminal_id", "merchant_id", "card_id", "txn_ref",
    "amount_minor", "currency",
)  # fmt: skip
_BAD_TIMES = (
    "not-a-time",
    "2026-11-02T08:15:04",  # no offset
    "2026-02-30T10:00:00+00:00",  # no such day
    "2026-11-02 08:15:04 UTC",
    "",
)
# High bytes that are never a line break in any decoding (0x85 is NEL in Latin-1).
_JUNK = bytes([*range(0x80, 0x85), *range(0x86, 0x100), *b"abcdefxyz{}[]:,0123456789"])
_MALFORMED_SEQ_BASE = 1 << 46  # event ids of templates never collide with real events
_MALFORMED_REF_BASE = 1 << 46


def luhn_check_digit(body: str) -> str:
    """The digit that makes `body` + digit pass the Luhn check."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:  # doubled: it will sit at an odd position from the right
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str(-total % 10)


def luhn_valid(digits: str) -> bool:
    """Whether a string of digits passes the Luhn check."""
    return luhn_check_digit(digits[:-1]) == digits[-1]


def random_pan(rng: random.Random, prefix: str, length: int) -> str:
    """A random Luhn-valid card number of `length` digits starting with `prefix`."""
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - 1 - len(prefix)))
    return body + luhn_check_digit(body)


class MalformedLines:
    """Builds malformed lines from harmless templates."""

    def __init__(self, seed: int, rng: random.Random, terminals: list[Terminal]) -> None:
        self._rng = rng
        self._ids = Ids(seed, first_ref=_MALFORMED_REF_BASE)
        self._terminals = terminals
        self._fmt = TimeFormat()
        self._n = 0

    def _template(self, time_us: int) -> dict[str, object]:
        rng = self._rng
        term = rng.choice(self._terminals)
        self._n += 1
        return {
            "event_id": self._ids.event_id(_MALFORMED_SEQ_BASE + self._n),
            "event_time": self._fmt(time_us),
            "kind": "auth_request",
            "terminal_id": term.terminal_id,
            "merchant_id": term.merchant.merchant_id,
            "card_id": new_token(rng),
            "txn_ref": self._ids.ref(),
            "amount_minor": rng.randint(600, 90_000),
            "currency": term.merchant.currency.code,
            "mcc": term.merchant.profile.mcc,
            "source": "terminal",
        }

    def make(self, variant: str, time_us: int) -> bytes:
        """The line of `variant` (a name from `VARIANTS`), timed at `time_us`."""
        rng = self._rng
        event = self._template(time_us)
        if variant == "garbage_bytes":
            # 0xFF never occurs in UTF-8, so the line can never decode, whatever follows.
            return b"\xff" + bytes(rng.choice(_JUNK) for _ in range(rng.randint(8, 60)))
        if variant == "truncated":
            text = _dump(event)
            return text[: rng.randint(10, len(text) - 2)].encode()
        if variant == "json_array":
            return _dump([event]).encode()
        if variant == "json_string":
            return b'"auth_request"'
        if variant == "invalid_utf8":
            return (
                _dump(event)
                .replace('"card_id":"tok_', '"card_id":"\udcfftok_')
                .encode("utf-8", "surrogateescape")
            )
        if variant == "missing_field":
            del event[rng.choice(REQUIRED)]
        elif variant in _FIELD_BREAKS:
            key, value = _FIELD_BREAKS[variant]
            event[key] = value
        elif variant == "negative_amount":
            event["amount_minor"] = -rng.randint(1, 90_000)
        elif variant == "bad_event_time":
            event["event_time"] = rng.choice(_BAD_TIMES)
        elif variant.startswith("pan_"):
            event["card_id"] = self._pan(variant)
        else:
            raise ValueError(f"unknown malformed variant {variant!r}")
        return _dump(event).encode()

    def _pan(self, variant: str) -> str:
        rng = self._rng
        if variant == "pan_amex":
            pan = random_pan(rng, rng.choice(("34", "37")), 15)
            return f"{pan[:4]} {pan[4:10]} {pan[10:]}"
        pan = random_pan(rng, rng.choice(("4", "51", "52", "53", "54", "55")), 16)
        if variant == "pan_plain":
            return pan
        sep = " " if variant == "pan_spaced" else "-"
        return sep.join(pan[i : i + 4] for i in range(0, 16, 4))


_FIELD_BREAKS: dict[str, tuple[str, object]] = {
    "float_amount": ("amount_minor", 12.5),
    "integral_float_amount": ("amount_minor", 1250.0),
    "string_amount": ("amount_minor", "1250"),
    "bad_currency": ("currency", "eur"),
    "unknown_kind": ("kind", "auth_pending"),
    "null_card_id": ("card_id", None),
}


def _dump(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))
