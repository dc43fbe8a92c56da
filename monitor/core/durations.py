"""Durations in configuration files, and the core's unit of time.

A duration is written as seconds (`90`, `1.5`) or with a unit (`90s`, `15m`, `24h`, `1d`); the core
keeps every time as integer microseconds since the epoch.

Every duration is finite and lies between 0 and `MAX_SECONDS` (31 days); a setting may narrow
that with `within` (docs/contract.md, "Commands", lists the bounds under Durations). Why: an
infinite or huge duration is not a long wait but a broken one: `.inf` overflowed when turned
into microseconds (a traceback), and a route whose `group_wait` is a century never sends. A
boolean is not a duration either (YAML's `true` would otherwise read as one second).
"""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*$")
_SHOWN = 40  # characters of a bad value quoted in an error: the message stays one short line

MAX_SECONDS = 31 * 86400.0  # a month: longer than any hold, window or timeout posmon needs


def _show(value: object) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}... ({len(str(value))} characters)"


def _parse_duration(value: object) -> object:
    """Seconds as a float from a number or a string with a unit; refuses what is not finite."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value} (use seconds or e.g. '90s', '15m', '24h')")
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(
                f"not a duration: {_show(value)} (use seconds or e.g. '90s', '15m', '24h')"
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    elif isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an integer beyond any float
            seconds = math.inf
    else:
        return value  # pydantic refuses it as not a number
    if not math.isfinite(seconds):
        raise ValueError(f"not a finite duration: {_show(value)}")
    return seconds


def _format(seconds: float) -> str:
    """A bound as the configuration would write it (`31d`, `1h`, `60s`)."""
    for unit in ("d", "h", "m"):
        if seconds >= _UNITS[unit] and seconds % _UNITS[unit] == 0:
            return f"{seconds / _UNITS[unit]:g}{unit}"
    return f"{seconds:g}s"


def within(most: float = MAX_SECONDS, *, positive: bool = False) -> AfterValidator:
    """A duration's bounds: at most `most` seconds, and above zero when `positive`.

    Used as `Annotated[Seconds, within(3600, positive=True)]`; the message names the bound in
    the configuration's own units.
    """

    def check(seconds: float) -> float:
        if positive and seconds <= 0:
            raise ValueError("must be more than 0")
        if seconds > most:
            raise ValueError(f"must be at most {_format(most)}, not {_format(seconds)}")
        return seconds

    return AfterValidator(check)


Seconds = Annotated[float, BeforeValidator(_parse_duration), Field(ge=0), within()]
PositiveSeconds = Annotated[Seconds, within(positive=True)]
PositiveInt = Annotated[int, Field(gt=0)]


def us(seconds: float) -> int:
    """Seconds as integer microseconds, the core's unit of time."""
    return round(seconds * 1_000_000)
