"""Durations in configuration files, and the core's unit of time.

A duration is written as seconds (`90`, `1.5`) or with a unit (`90s`, `15m`, `24h`, `1d`); the core
keeps every time as integer microseconds since the epoch.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, Field

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*$")


def _parse_duration(value: object) -> object:
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"not a duration: {value!r} (use seconds or e.g. '90s', '15m', '24h')")
        return float(match.group(1)) * _UNITS[match.group(2) or "s"]
    return value


Seconds = Annotated[float, BeforeValidator(_parse_duration), Field(ge=0)]
PositiveInt = Annotated[int, Field(gt=0)]


def us(seconds: float) -> int:
    """Seconds as integer microseconds, the core's unit of time."""
    return round(seconds * 1_000_000)
