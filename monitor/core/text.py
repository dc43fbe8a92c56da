"""How alerts write money, card tokens and durations for people (integer arithmetic only), and
how any text is made safe to show a person (`printable`)."""

from __future__ import annotations

from monitor.core.pans import mask_pans

# ISO 4217 currencies whose minor unit is not 1/100 of the major unit.
_EXPONENTS = {
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0, "PYG": 0,
    "RWF": 0, "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
    "CLF": 4, "UYW": 4,
}  # fmt: skip


def minor_exponent(currency: str) -> int:
    """The ISO 4217 exponent of `currency`'s minor unit (2 unless listed otherwise)."""
    return _EXPONENTS.get(currency, 2)


def money(amount_minor: int, currency: str) -> str:
    """`3500, "EUR"` -> `"35.00 EUR"`; integer arithmetic only, never floats."""
    exponent = minor_exponent(currency)
    if exponent == 0:
        return f"{amount_minor:,} {currency}"
    major, minor = divmod(amount_minor, 10**exponent)
    return f"{major:,}.{minor:0{exponent}d} {currency}"


def short_card(card_id: str) -> str:
    """A card token shortened for a sentence: `tok_9f31...c1` -> `tok_9f..c1`."""
    return card_id if len(card_id) <= 10 else f"{card_id[:6]}..{card_id[-2:]}"


def minutes(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def printable(text: str) -> str:
    """`text` as data for a person: card numbers masked, and every character Python's `repr`
    would escape (C0 and C1 controls, DEL, format characters such as bidi overrides and zero
    widths, line and paragraph separators, unusual spaces, surrogates) written as its escape
    (`\\x1b`, `\\u202e`, `\\n`).

    Ids come from terminals and upstream systems: written raw they can clear a screen, emit a
    terminal hyperlink (OSC 8), start a fake line or reverse what follows. Escaping rather than
    dropping shows the id as it came, and leaves what follows an ESC as inert text. Card numbers
    are masked first, on the text as it came: a no-break space or a zero width inside a card
    number, once escaped (`\\xa0`), would cut it into pieces the masking no longer reads as one.
    Markup of a renderer (rich, HTML, Slack) is the renderer's to escape: this is the part every
    output shares.
    """
    masked = mask_pans(text)
    if masked.isprintable():
        return masked
    return "".join(c if c.isprintable() else _escape_char(c) for c in masked)


def _escape_char(char: str) -> str:
    return char.encode("unicode_escape").decode("ascii")
