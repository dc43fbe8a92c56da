"""Why the model flagged an attempt, in plain words: the features the model reads that lie
furthest in the tails of the training distribution (the card's reference quantiles), most
extreme first.

Each feature that can be a reason has a direction (high or low values are unusual) and a
sentence; a feature counts when at most `_TAIL` of the training attempts were as extreme. The
hour of day is judged by the share of training attempts in that hour (`ModelCard.hour_shares`).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable
from typing import Final

import numpy as np
import numpy.typing as npt

from monitor.core.text import money
from monitor.scoring.features import FEATURES
from monitor.scoring.model import ModelCard

_TAIL: Final = 0.05
_RARE_HOUR: Final = 0.01  # an hour with at most this share of the training attempts

Say = Callable[[float, str], str]


def _count(what: str) -> Say:
    """`what` names plural things first ("attempts by the card in 1 h")."""
    one = what.replace("s ", " ", 1)
    return lambda v, _c: f"about {v:.0f} {one if round(v) == 1 else what}"


def _share(what: str) -> Say:
    return lambda v, _c: f"{v:.0%} {what}"


# feature -> (True: high values are unusual, False: low ones; the sentence)
_SAY: Final[dict[str, tuple[bool, Say]]] = {
    "amount_ratio_30d": (True, lambda v, _c: f"amount {v:.1f}x the card's 30-day average"),
    "amount_robust_z": (
        True,
        lambda v, _c: f"amount {v:.1f} deviations above the card's usual amounts",
    ),
    "amount_minor": (True, lambda v, c: f"amount {money(round(v), c)}, high for any card"),
    "card_attempts_1h": (True, _count("attempts by the card in 1 h")),
    "card_attempts_1d": (True, _count("attempts by the card in 24 h")),
    "seconds_since_previous": (False, lambda v, _c: f"{v:.0f} s after the card's previous attempt"),
    "card_terminals_1h": (True, lambda v, _c: f"{v:.0f} terminals in 1 h"),
    "card_terminals_24h": (True, lambda v, _c: f"{v:.0f} terminals in 24 h"),
    "card_merchants_1h": (True, lambda v, _c: f"{v:.0f} merchants in 1 h"),
    "card_merchants_24h": (True, lambda v, _c: f"{v:.0f} merchants in 24 h"),
    "first_at_terminal": (True, lambda _v, _c: "first time at this terminal"),
    "first_at_mcc": (True, lambda _v, _c: "first time in this merchant category"),
    "card_decline_ratio": (True, _share("of the card's recent attempts declined")),
    "card_error_ratio": (True, _share("of the card's recent attempts failed on the network")),
    "terminal_attempts_1h": (True, _count("attempts at the terminal in 1 h")),
    "terminal_error_ratio": (True, _share("network errors at the terminal in the last hour")),
    "terminal_cards_1h": (True, lambda v, _c: f"{v:.0f} cards at the terminal in 1 h"),
    "terminal_fraud_share_1d": (True, _share("of the terminal's purchases in 24 h known as fraud")),
    "terminal_fraud_share_7d": (
        True,
        _share("of the terminal's purchases in 7 days known as fraud"),
    ),
    "terminal_fraud_share_30d": (
        True,
        _share("of the terminal's purchases in 30 days known as fraud"),
    ),
    "merchant_fraud_share_1d": (True, _share("of the merchant's purchases in 24 h known as fraud")),
    "merchant_fraud_share_7d": (
        True,
        _share("of the merchant's purchases in 7 days known as fraud"),
    ),
    "merchant_fraud_share_30d": (
        True,
        _share("of the merchant's purchases in 30 days known as fraud"),
    ),
    "card_known_frauds": (True, _count("earlier purchases of the card known as fraud")),
}
_INDEX: Final = {name: i for i, name in enumerate(FEATURES)}
_SIN, _COS = _INDEX["hour_sin"], _INDEX["hour_cos"]


def tail(value: float, quantiles: list[float], *, high: bool) -> float:
    """The share of training values at least as extreme as `value` (in the direction given),
    read from 101 quantile points; 0 beyond the extreme."""
    steps = len(quantiles) - 1
    if high:
        return 1.0 - bisect_left(quantiles, value) / steps
    return bisect_right(quantiles, value) / steps


def reasons(row: npt.NDArray[np.float32], card: ModelCard, currency: str, k: int) -> list[str]:
    """Up to `k` sentences, most extreme first; at least one (the most extreme) when none is in
    the tails."""
    found: list[tuple[float, int, str]] = []
    read = {name for member in card.members for name in member.features}
    if card.supervised is not None:
        read.update(card.supervised.features)
    for name, (high, say) in _SAY.items():
        if name not in read:
            continue
        i = _INDEX[name]
        value = float(row[i])
        share = tail(value, card.quantiles[name], high=high)
        found.append((share, i, say(value, currency)))
    hour = _hour(row)
    if card.hour_shares and {"hour_sin", "hour_cos"} & read:
        share = card.hour_shares[hour]
        if share <= _RARE_HOUR:
            found.append((share, _SIN, f"at {hour:02d}:00-{hour:02d}:59 UTC, a rare hour"))
    found.sort()
    chosen = [text for share, _i, text in found if share <= _TAIL][:k]
    return chosen or [text for _share, _i, text in found[:1]]


def _hour(row: npt.NDArray[np.float32]) -> int:
    angle = float(np.arctan2(row[_SIN], row[_COS])) % (2 * np.pi)
    return int(angle / (2 * np.pi) * 24 + 1e-6) % 24
