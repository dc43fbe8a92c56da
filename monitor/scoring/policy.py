"""The detection policy: every threshold of every detector, validated at the boundary.

It is the `policy:` section of the YAML configuration (`monitor.cli.settings` reads the file).
Unknown keys are rejected (a typo must not silently fall back to a default), every default is
the contract's (docs/detectors.md), durations are written as seconds or with a unit (`90s`,
`15m`, `24h`, `1d`), finite and at most 31 days (`monitor.core.durations`).

`Detectors` is also the registry of detectors: one field per detector, each typed with the
settings class of the detector's module, which builds it. Their order is the scorer's: it
breaks ties between decisions due at the same moment.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, model_validator

from monitor.core.durations import PositiveInt, PositiveSeconds, Seconds
from monitor.scoring.detectors.base import DetectorSettings
from monitor.scoring.detectors.duplicate_debit import Settings as DuplicateDebit
from monitor.scoring.detectors.failed_then_debited import Settings as FailedThenDebited
from monitor.scoring.detectors.large_amount import Settings as LargeAmount
from monitor.scoring.detectors.missing_reversal import Settings as MissingReversal
from monitor.scoring.detectors.model_outlier import Settings as ModelOutlier
from monitor.scoring.detectors.small_amount_burst import Settings as SmallAmountBurst
from monitor.scoring.detectors.stale_preauth import Settings as StalePreauth
from monitor.scoring.detectors.terminal_failure_spike import Settings as TerminalFailureSpike


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Detectors(_Strict):
    """Every detector, in the scorer's order (the registry)."""

    failed_then_debited: FailedThenDebited = FailedThenDebited()
    duplicate_debit: DuplicateDebit = DuplicateDebit()
    missing_reversal: MissingReversal = MissingReversal()
    small_amount_burst: SmallAmountBurst = SmallAmountBurst()
    terminal_failure_spike: TerminalFailureSpike = TerminalFailureSpike()
    large_amount: LargeAmount = LargeAmount()
    stale_preauth: StalePreauth = StalePreauth()
    model_outlier: ModelOutlier = ModelOutlier()

    def all(self) -> list[DetectorSettings]:
        """Every detector's settings, in registry order (enabled or not)."""
        return [getattr(self, name) for name in type(self).model_fields]


class StateLimits(_Strict):
    """How long and how much the monitor remembers; every store has a horizon and a hard cap."""

    attempt_ttl: Seconds = 6 * 3600.0
    max_attempts: PositiveInt = 2_000_000
    dedup_horizon: Seconds = 3600.0
    max_dedup_ids: PositiveInt = 4_000_000
    max_keys: PositiveInt = 1_000_000
    max_evidence: PositiveInt = 1000


class Policy(_Strict):
    """Everything that decides what is an incident. The defaults are the contract's."""

    allowed_lateness: Seconds = 120.0
    # An event further ahead of its partition's newest time holds back (docs/detectors.md, "Time").
    max_future_skew: PositiveSeconds = 600.0
    state: StateLimits = StateLimits()
    detectors: Detectors = Detectors()

    @model_validator(mode="after")
    def _horizons_cover_decisions(self) -> Policy:
        needed = max(s.attempt_horizon() for s in self.detectors.all()) + self.allowed_lateness
        if self.state.attempt_ttl < needed:
            raise ValueError(
                f"state.attempt_ttl ({self.state.attempt_ttl:g}s) must cover the longest decision"
                f" plus allowed_lateness ({needed:g}s)"
            )
        return self
