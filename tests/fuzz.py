"""Coverage-guided fuzz targets (atheris) for the doors of hostile input.

    python -m tests.fuzz decode|mask [libFuzzer options, e.g. -max_total_time=60]

`decode`: any bytes give an `Event` or a `Rejection`, never an exception, and no card number in
clear in a rejection's text or an event's ids. `mask`: masking any text leaves no candidate and is
idempotent. A failed property raises, and libFuzzer stops with the input saved.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from monitor.core.events import Event, Rejection, decode
    from monitor.core.pans import holds_pan, mask_pans


def fuzz_decode(data: bytes) -> None:
    result = decode(data)
    if isinstance(result, Rejection):
        for text in (result.raw, result.error):
            if holds_pan(text):
                raise AssertionError(f"card number in clear in a rejection: {text!r}")
    elif isinstance(result, Event):
        for value in (
            result.event_id,
            result.terminal_id,
            result.merchant_id,
            result.card_id,
            result.txn_ref,
        ):
            if holds_pan(value):
                raise AssertionError(f"card number accepted in an id: {value!r}")
    else:
        raise AssertionError(f"decode returned {result!r}")


def fuzz_mask(data: bytes) -> None:
    text = atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(len(data))
    masked = mask_pans(text)
    if holds_pan(masked):
        raise AssertionError(f"a candidate survived masking: {text!r} -> {masked!r}")
    if mask_pans(masked) != masked:
        raise AssertionError(f"masking is not idempotent: {text!r} -> {masked!r}")


TARGETS = {"decode": fuzz_decode, "mask": fuzz_mask}


def main(argv: list[str]) -> None:
    target = TARGETS[argv[1]]
    atheris.Setup([argv[0], *argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
