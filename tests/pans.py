"""Card numbers in every form the PAN rule must catch, and a scanner that finds one left in clear.

The scanner reads output the way an auditor would: bytes as UTF-8, JSON escapes undone (also
twice escaped), Unicode NFKC with every decimal digit as ASCII, separators removed, then it looks
for the digits of each planted card number.
"""

from __future__ import annotations

import random
import re
import unicodedata
from typing import Final

from monitor.core.pans import luhn_ok


def _pan(rng: random.Random, prefix: str, length: int) -> str:
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    check = next(d for d in "0123456789" if luhn_ok(body + d))
    return body + check


_RNG = random.Random(20261201)
# Card numbers of three industries and lengths, distinctive enough never to occur by chance.
PANS: Final = (_pan(_RNG, "4", 16), _pan(_RNG, "51", 16), _pan(_RNG, "37", 15))


def _groups(pan: str) -> list[str]:
    return [pan[i : i + 4] for i in range(0, len(pan), 4)]


def forms(pan: str) -> dict[str, str]:
    """Each form as it appears *inside a JSON string* of a raw line (escapes written out)."""
    g = _groups(pan)
    return {
        "plain": pan,
        "embedded": f"card={pan};x",
        "token": f"tok_{pan}",
        "spaced": "pan " + " ".join(g) + " end",
        "dashed": "-".join(g),
        "dotted": ".".join(g),
        "slashed": "/".join(g),
        "tab_and_double_space": "\\t".join(g[:2]) + "  " + "-".join(g[2:]),
        "zero_padded_20": "0" * (20 - len(pan)) + pan,
        "fullwidth": "".join(chr(0xFF10 + int(c)) for c in pan),
        "u_escaped": "".join(f"\\u{ord(c):04x}" for c in pan),
        "fullwidth_u_escaped": "".join(f"\\u{0xFF10 + int(c):04x}" for c in pan),
    }


_ESCAPE: Final = re.compile(r"\\+(u[0-9a-fA-F]{4}|t|/)")
_SEPARATORS: Final = re.compile(r"[ \t\-./]")


def _unescape(match: re.Match[str]) -> str:
    code = match.group(1)
    return chr(int(code[1:], 16)) if code[0] == "u" else ("\t" if code == "t" else "/")


def readable(blob: bytes | str) -> str:
    """The text of `blob` as the scanner reads it (see the module's docstring)."""
    text = blob.decode("utf-8", "replace") if isinstance(blob, bytes) else blob
    for _ in range(4):
        text = _ESCAPE.sub(_unescape, text)
    text = unicodedata.normalize("NFKC", text)
    return "".join(
        str(unicodedata.decimal(c))
        if not c.isascii() and unicodedata.decimal(c, None) is not None
        else c
        for c in text
    )


def pans_in_clear(blob: bytes | str, pans: tuple[str, ...] = PANS) -> list[str]:
    """The planted card numbers whose digits `blob` shows in sequence, separators ignored."""
    digits = _SEPARATORS.sub("", readable(blob))
    return [pan for pan in pans if pan in digits]
