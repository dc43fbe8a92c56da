"""The one card-number (PAN) rule: which text holds a card number, and how it is masked.

A *candidate* is read from the text's normalised view (Unicode NFKC; any decimal digit as its
ASCII digit; Unicode dashes and spaces as `-` and ` `; invisible format characters dropped; JSON
`\\u` and `\\t`/`\\/` escapes undone). It is a run of digit groups joined by one or two separators
among space, tab, dash, dot and slash, taken whole groups at a time, that

- counts 13 to 19 digits once its leading zeros are left out,
- touches no letter or digit on either side (a separator inside the run is a border too),
- starts with 2 to 6 (the card industries of ISO/IEC 7812: airlines and travel, banking) and
- passes the Luhn check.

A canonical UUID is never scanned. `holds_pan` is the guard at the door (decode rejects a string
field holding a candidate); `mask_pans` is the masking every outgoing text passes through: each
candidate's digits become `*` but the last four (all of them when more digits follow in the same
run, so that masking twice changes nothing). docs/security.md explains the trade-off.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from collections.abc import Callable
from typing import Final

_SEPARATORS: Final = " \t-./"
# A run: digit groups joined by one or two separators. Every candidate lies in one.
_RUN: Final = re.compile(r"[0-9]+(?:[ \t\-./]{1,2}[0-9]+)*")
# Digits and separators as `d`, anything else as `x`: a candidate needs 13 `d` in a row, and a
# byte translation and a substring search rule that out in C for nearly every text.
_DIGIT_CLASS: Final = bytes(100 if chr(i) in "0123456789 \t-./" else 120 for i in range(256))
_THIRTEEN: Final = b"d" * 13
_GROUP: Final = re.compile(r"[0-9]+")
UUID_PATTERN: Final = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_UUID: Final = re.compile(rf"(?<![0-9A-Za-z]){UUID_PATTERN}(?![0-9A-Za-z])")
# What the view reads one by one: an escape (any number of backslashes, so that text escaped
# twice is read too) or a non-ASCII character.
_SPECIAL: Final = re.compile(r"\\+u[0-9a-fA-F]{4}|\\+[t/]|[^\x00-\x7f]")
_ESCAPED: Final = {"t": "\t", "/": "/"}
_LUHN_DOUBLE: Final = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check every card number passes."""
    total = 0
    double = False
    for ch in reversed(digits):
        d = ord(ch) - 48
        total += _LUHN_DOUBLE[d] if double else d
        double = not double
    return total % 10 == 0


def holds_pan(text: str) -> bool:
    """True when `text` holds a card number by the rule above (a canonical UUID never does)."""
    view, _ = _view(text)
    return _maybe(view) and bool(_candidates(view))


def mask_pans(text: str) -> str:
    """`text` with every candidate masked; idempotent, and the identity on text without one."""
    view, segments = _view(text)
    if not _maybe(view):
        return text
    spans = _candidates(view)
    if not spans:
        return text
    pieces = []
    for a, b, keep in spans:
        start, end = _origin(a, segments)[0], _origin(b - 1, segments)[1]
        pieces.append((start, end, _mask(view[a:b], keep)))
    return _replace(text, pieces)


def mask_tree(value: object) -> object:
    """A JSON-like value with `mask_pans` applied to every string in it, keys included."""
    if isinstance(value, str):
        return mask_pans(value)
    if isinstance(value, dict):
        return {mask_tree(k): mask_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_tree(v) for v in value]
    return value


def _maybe(view: str) -> bool:
    """False when `view` cannot hold a candidate: no 13 digits or separators in a row."""
    return _THIRTEEN in view.encode("ascii", "replace").translate(_DIGIT_CLASS)


def _mask(span: str, keep_last: bool) -> str:
    digits = [c for c in span if "0" <= c <= "9"]
    if not keep_last:
        return "*" * len(digits)
    return "*" * (len(digits) - 4) + "".join(digits[-4:])


def _replace(text: str, pieces: list[tuple[int, int, str]]) -> str:
    out = []
    at = 0
    for start, end, mask in pieces:
        out.append(text[at:start])
        out.append(mask)
        at = end
    out.append(text[at:])
    return "".join(out)


def _candidates(view: str) -> list[tuple[int, int, bool]]:
    """The spans `(start, end, keep_last_four)` of the view to mask, in order, not overlapping."""
    if "-" in view:  # canonical UUIDs are not scanned: blank them out, keeping positions
        view = _UUID.sub(lambda m: "x" * 36, view)
    found: list[tuple[int, int, bool]] = []
    for run in _RUN.finditer(view):
        start, end = run.span()
        if end - start < 13:
            continue
        open_left = start == 0 or not view[start - 1].isalnum()
        open_right = end == len(view) or not view[end].isalnum()
        groups = [(m.start() + start, m.end() + start) for m in _GROUP.finditer(run.group())]
        hit = [False] * len(groups)
        for i in range(len(groups)):
            if i == 0 and not open_left:
                continue
            digits = ""
            for j in range(i, len(groups)):
                digits += view[groups[j][0] : groups[j][1]]
                significant = digits.lstrip("0")
                if len(significant) > 19:
                    break
                if j == len(groups) - 1 and not open_right:
                    break
                if len(significant) >= 13 and "2" <= significant[0] <= "6" and luhn_ok(significant):
                    for k in range(i, j + 1):
                        hit[k] = True
        i = 0
        while i < len(groups):  # each stretch of hit groups is masked as one span
            if not hit[i]:
                i += 1
                continue
            j = i
            while j + 1 < len(groups) and hit[j + 1]:
                j += 1
            found.append((groups[i][0], groups[j][1], j == len(groups) - 1))
            i = j + 1
    return found


# A view segment: where it starts in the view, the span of the text it comes from, and whether
# it is one special unit (an escape or a non-ASCII character) or a stretch copied as it is.
_Segment = tuple[int, int, int, bool]


def _view(text: str) -> tuple[str, list[_Segment]]:
    """The normalised view of `text` and its segments (none when the view is the text itself,
    the common case). Only escapes and non-ASCII characters are looked at one by one."""
    if text.isascii() and "\\" not in text:
        return text, []
    chars: list[str] = []
    segments: list[_Segment] = []
    length = 0
    at = 0
    for unit in _SPECIAL.finditer(text):
        start, end = unit.span()
        if start > at:
            segments.append((length, at, start, False))
            chars.append(text[at:start])
            length += start - at
        normal = _normal(unit.group())
        segments.append((length, start, end, True))
        chars.append(normal)
        length += len(normal)
        at = end
    if at < len(text):
        segments.append((length, at, len(text), False))
        chars.append(text[at:])
    return "".join(chars), segments


def _origin(v: int, segments: list[_Segment]) -> tuple[int, int]:
    """The span of the text that view position `v` comes from."""
    if not segments:
        return v, v + 1
    # The segments are contiguous in the view, so the last one starting at or before `v` holds
    # it (one adding nothing to the view is never last there).
    k = bisect_right(segments, v, key=lambda s: s[0]) - 1
    view_start, start, end, special = segments[k]
    if special:
        return start, end
    return start + v - view_start, start + v - view_start + 1


def _normal(unit: str) -> str:
    if len(unit) > 1:  # an escape
        tail = unit.lstrip("\\")
        unit = chr(int(tail[1:], 16)) if tail[0] == "u" else _ESCAPED[tail]
    if unit.isascii():
        return unit
    out = []
    for ch in unicodedata.normalize("NFKC", unit):
        out.append(_FOLD(ch))
    return "".join(out)


def _fold(ch: str) -> str:
    """One character of the NFKC form, folded: digits to ASCII, dashes and spaces to `-`, ` `,
    invisible format characters dropped."""
    if ch.isascii():
        return ch
    digit = unicodedata.decimal(ch, None)
    if digit is not None:
        return chr(48 + digit)
    category = unicodedata.category(ch)
    if category == "Pd":
        return "-"
    if category == "Zs":
        return " "
    if category == "Cf":
        return ""
    return ch


_FOLD: Final[Callable[[str], str]] = _fold
