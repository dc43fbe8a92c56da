"""Decoding: the contract's event is accepted, everything else is rejected with a reason."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.core.events import Event, Rejection, decode
from monitor.core.pans import holds_pan, luhn_ok, mask_pans
from tests.builders import event

GOOD = event("auth_approved", 0, response_code="00", mcc="5411", source="terminal")


def _with(**changes: object) -> bytes:
    body = dict(GOOD)
    for key, value in changes.items():
        if value is _DROP:
            body.pop(key)
        else:
            body[key] = value
    return json.dumps(body).encode()


_DROP = object()


def test_contract_example_is_accepted() -> None:
    ev = decode(_with(extra_field={"nested": True}))
    assert isinstance(ev, Event)
    assert ev.kind == "auth_approved"
    assert ev.amount_minor == 3500
    assert ev.t == 1_793_620_800_000_000  # 2026-11-02T12:00:00Z in epoch microseconds


def test_utc_designator_and_fractions() -> None:
    ev = decode(_with(event_time="2026-11-02T12:00:00.000123Z"))
    assert isinstance(ev, Event)
    assert ev.t == 1_793_620_800_000_123


def test_offsets_are_honoured() -> None:
    ev = decode(_with(event_time="2026-11-02T13:00:00+01:00"))
    assert isinstance(ev, Event)
    assert ev.t == 1_793_620_800_000_000


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"", "not_json"),
        (b"{", "not_json"),
        (b"[1, 2]", "not_json"),
        (b'"a string"', "not_json"),
        (b"\xff\xfe\x00", "not_json"),
        (_with(event_id=_DROP), "schema"),
        (_with(amount_minor=-1), "schema"),
        (_with(amount_minor=12.5), "schema"),
        (_with(amount_minor="3500"), "schema"),
        (_with(amount_minor=True), "schema"),
        (_with(currency="eur"), "schema"),
        (_with(currency="EURO"), "schema"),
        (_with(kind="auth_maybe"), "schema"),
        (_with(event_time="2026-11-02T12:00:00"), "schema"),
        (_with(event_time=1793620800), "schema"),
        (_with(event_time="yesterday"), "schema"),
        (_with(event_time="2026-13-02T12:00:00+00:00"), "schema"),
        (_with(event_time="2026-11-02T25:00:00+00:00"), "schema"),
        (_with(event_time="2026-11-02"), "schema"),
        (_with(card_id="short"), "schema"),
        (_with(event_id=""), "schema"),
        (_with(event_id="x" * 65), "schema"),
        (_with(response_code="000"), "schema"),
        (_with(mcc="54a1"), "schema"),
        (_with(source="pos"), "schema"),
        (_with(card_id="4111111111111111"), "pan"),
        (_with(card_id="4111 1111 1111 1111"), "pan"),
        (_with(card_id="4111-1111-1111-1111"), "pan"),
        (_with(txn_ref="5500005555555559"), "pan"),
        # Every guarded field, and a value that starts with a separator.
        (_with(event_id=" 4111 1111 1111 1111"), "pan"),
        (_with(terminal_id="-4111-1111-1111-1111"), "pan"),
        (_with(merchant_id="378282246310005"), "pan"),
        # Out of range: what the alerts, the metrics and the clocks could not represent.
        (_with(amount_minor=1_000_000_000_000), "schema"),
        (_with(amount_minor=int("9" * 400)), "schema"),
        (_with(event_time="9999-12-31T23:59:59.999999+00:00"), "schema"),
        (_with(event_time="2100-01-01T00:00:00Z"), "schema"),
        (_with(event_time="2099-12-31T23:30:00-01:00"), "schema"),  # 2100-01-01T00:30Z
        (_with(event_time="1969-12-31T23:59:59.999999Z"), "schema"),
        (_with(event_time="1970-01-01T00:30:00+01:00"), "schema"),  # 1969-12-31T23:30Z
        (_with(event_time="0001-01-01T00:00:00+00:00"), "schema"),
    ],
)
def test_rejections_have_reasons(message: bytes, reason: str) -> None:
    result = decode(message)
    assert isinstance(result, Rejection)
    assert result.reason == reason
    assert result.error


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"amount_minor": 10**12}, "amount_minor: Input should be less than or equal to"),
        ({"event_time": "9999-12-31T23:59:59.999999+00:00"}, "event_time: must be from 1970"),
    ],
)
def test_an_out_of_range_value_names_its_field(changes: dict[str, object], error: str) -> None:
    result = decode(_with(**changes))
    assert isinstance(result, Rejection) and result.error.startswith(error)


@pytest.mark.parametrize(
    ("changes", "t", "amount"),
    [
        ({"event_time": "1970-01-01T00:00:00Z", "amount_minor": 0}, 0, 0),
        (
            {"event_time": "2099-12-31T23:59:59.999999Z", "amount_minor": 999_999_999_999},
            4_102_444_799_999_999,
            999_999_999_999,
        ),
    ],
)
def test_the_edges_of_the_ranges_are_accepted(
    changes: dict[str, object], t: int, amount: int
) -> None:
    ev = decode(_with(**changes))
    assert isinstance(ev, Event)
    assert (ev.t, ev.amount_minor) == (t, amount)


def test_a_pan_never_reaches_the_dead_letter() -> None:
    result = decode(_with(card_id="4111 1111 1111 1111"))
    assert isinstance(result, Rejection)
    letter = json.dumps(result.as_dead_letter())
    assert "4111 1111 1111 1111" not in letter
    assert "4111111111111111" not in letter
    assert "************1111" in letter


def test_pan_in_a_malformed_message_is_masked_too() -> None:
    result = decode(b'{"card_id": "4111111111111111", "oops": ')
    assert isinstance(result, Rejection)
    assert result.reason == "not_json"
    assert "4111111111111111" not in result.raw
    assert result.raw.endswith('"************1111", "oops": ')


def test_card_tokens_are_not_pans() -> None:
    assert not holds_pan("tok_a111111111111111")
    assert not holds_pan("4111111111111112")  # fails Luhn
    assert not holds_pan("411111111111")  # 12 digits
    assert not holds_pan("1111111111111117")  # Luhn-valid, but no card industry starts with 1
    assert holds_pan("4111111111111111")
    assert holds_pan("378282246310005")  # 15-digit Amex test number
    assert luhn_ok("79927398713")


def test_masking_keeps_timestamps_and_amounts() -> None:
    text = '{"event_time": "2026-11-02T12:00:00+00:00", "amount_minor": 123456789012}'
    assert mask_pans(text) == text
    assert mask_pans("pan 5500-0055-5555-5559 end") == "pan ************5559 end"


@given(st.binary(max_size=400))
def test_decoding_arbitrary_bytes_never_raises(raw: bytes) -> None:
    result = decode(raw)
    assert isinstance(result, Event | Rejection)


@given(
    st.dictionaries(
        st.sampled_from([*GOOD, "other"]),
        st.one_of(
            st.none(),
            st.integers(),
            st.floats(allow_nan=False),
            st.text(max_size=30),
            st.booleans(),
        ),
    )
)
def test_decoding_arbitrary_objects_never_raises(body: dict[str, object]) -> None:
    result = decode(json.dumps({**GOOD, **body}).encode())
    assert isinstance(result, Event | Rejection)
    if isinstance(result, Rejection):
        assert result.reason in {"schema", "pan"}


@given(st.from_regex(r"[0-9]{16}", fullmatch=True))
def test_any_luhn_valid_card_id_is_rejected_and_masked(digits: str) -> None:
    result = decode(_with(card_id=digits))
    significant = digits.lstrip("0")
    if len(significant) >= 13 and "2" <= significant[0] <= "6" and luhn_ok(digits):
        assert isinstance(result, Rejection) and result.reason == "pan"
        assert digits not in json.dumps(result.as_dead_letter())
    else:
        assert isinstance(result, Event)
