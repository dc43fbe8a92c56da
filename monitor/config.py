"""The detection policy: every threshold of every detector, validated at the boundary.

It is the `policy:` section of the YAML configuration (`monitor.settings` reads the file).
Unknown keys are rejected (a typo must not silently fall back to a default), every default is
the contract's (CONTRACT section 2), durations are written as seconds or with a unit (`90s`,
`15m`, `24h`, `1d`).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

Severity = Literal["info", "warning", "critical"]

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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FailedThenDebited(_Strict):
    enabled: bool = True
    severity: Severity = "critical"
    reversal_grace: Seconds = 900.0
    unlinked_window: Seconds = 1800.0
    group_window: Seconds = 86400.0


class DuplicateDebit(_Strict):
    enabled: bool = True
    severity: Severity = "critical"
    reversal_grace: Seconds = 900.0


class MissingReversal(_Strict):
    enabled: bool = True
    severity: Severity = "warning"
    reversal_timeout: Seconds = 120.0


class SmallAmountBurst(_Strict):
    enabled: bool = True
    severity: Severity = "warning"
    max_amount_minor: Annotated[int, Field(ge=0)] = 500
    min_attempts: PositiveInt = 5
    window: Seconds = 600.0
    terminal_min_attempts: PositiveInt | None = None


class TerminalFailureSpike(_Strict):
    enabled: bool = True
    severity: Severity = "warning"
    min_attempts: PositiveInt = 10
    error_ratio: Annotated[float, Field(gt=0, le=1)] = 0.5
    window: Seconds = 300.0


class LargeAmount(_Strict):
    enabled: bool = True
    severity: Severity = "warning"
    large_amount_minor: Annotated[int, Field(gt=0)] = 1_000_000
    per_currency: dict[Annotated[str, Field(pattern=r"^[A-Z]{3}$")], PositiveInt] = {}

    def threshold(self, currency: str) -> int:
        return self.per_currency.get(currency, self.large_amount_minor)


class StalePreauth(_Strict):
    enabled: bool = True
    severity: Severity = "warning"
    timeout: Seconds = 86400.0


class Detectors(_Strict):
    failed_then_debited: FailedThenDebited = FailedThenDebited()
    duplicate_debit: DuplicateDebit = DuplicateDebit()
    missing_reversal: MissingReversal = MissingReversal()
    small_amount_burst: SmallAmountBurst = SmallAmountBurst()
    terminal_failure_spike: TerminalFailureSpike = TerminalFailureSpike()
    large_amount: LargeAmount = LargeAmount()
    stale_preauth: StalePreauth = StalePreauth()


class StateLimits(_Strict):
    """How long and how much the monitor remembers; every store has a horizon and a hard cap."""

    attempt_ttl: Seconds = 6 * 3600.0
    max_attempts: PositiveInt = 2_000_000
    dedup_horizon: Seconds = 3600.0
    max_dedup_ids: PositiveInt = 4_000_000
    max_keys: PositiveInt = 1_000_000
    max_evidence: PositiveInt = 1000


class Policy(_Strict):
    """Everything that decides what is an incident. Defaults are CONTRACT section 2's."""

    allowed_lateness: Seconds = 120.0
    state: StateLimits = StateLimits()
    detectors: Detectors = Detectors()

    @model_validator(mode="after")
    def _horizons_cover_decisions(self) -> Policy:
        d = self.detectors
        needed = (
            max(
                d.failed_then_debited.reversal_grace + d.failed_then_debited.unlinked_window,
                d.duplicate_debit.reversal_grace,
                d.missing_reversal.reversal_timeout,
            )
            + self.allowed_lateness
        )
        if self.state.attempt_ttl < needed:
            raise ValueError(
                f"state.attempt_ttl ({self.state.attempt_ttl:g}s) must cover the longest decision"
                f" plus allowed_lateness ({needed:g}s)"
            )
        return self
