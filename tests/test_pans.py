"""The one card-number rule (monitor.core.pans): what it catches, what it leaves alone, and the
masking every outgoing text passes through (idempotent, never leaves a candidate in clear)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.core.pans import holds_pan, luhn_ok, mask_pans, mask_tree
from tests.pans import PANS, forms, pans_in_clear

REPO = Path(__file__).resolve().parent.parent
FORMS = [(pan, name, text) for pan in PANS for name, text in forms(pan).items()]


def _value(form: str) -> str:
    """The string a JSON parser makes of a form written inside a JSON string."""
    return str(json.loads(f'"{form}"'))


@pytest.mark.parametrize(("pan", "name", "form"), FORMS)
def test_every_form_is_a_card_number_decoded_or_escaped(pan: str, name: str, form: str) -> None:
    assert holds_pan(_value(form)), name
    assert holds_pan(form), name  # the same text with its JSON escapes still written out
    for text in (_value(form), form, json.dumps(_value(form)), json.dumps(json.dumps(form))):
        masked = mask_pans(text)
        assert pans_in_clear(masked) == [], (name, masked)
        assert mask_pans(masked) == masked


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-02T08:00:00.419941+00:00",  # times
        '"amount_minor": 999999999999',  # the largest amount
        "tok_18f7b75a6bd3f4ad3457",  # hex card tokens
        "x4111111111111111",  # touches a letter
        "4111111111111111y",
        "41111111111111111234",  # 20 significant digits: too long for a card
        "1111111111111117",  # Luhn-valid, but no card industry starts with 1
        "7000000000000007",  # nor with 7
        "4111111111111112",  # fails Luhn
        "411111111111",  # 12 digits
        "4111  1111   1111 1111",  # three separators in a row split the run
        "74987505249000000000128",  # a 23-digit acquirer reference number
        "4111_1111_1111_1111",  # underscores are not separators (ids like T_0001_0002)
    ],
)
def test_what_is_not_a_card_number(text: str) -> None:
    assert not holds_pan(text)
    assert mask_pans(text) == text


@given(st.uuids())
def test_canonical_uuids_are_never_scanned(value: uuid.UUID) -> None:
    for text in (str(value), str(value).upper(), f"event {value} done"):
        assert not holds_pan(text)
        assert mask_pans(text) == text


def test_a_uuid_made_of_digits_only_is_still_a_uuid() -> None:
    text = "42111111-1111-1111-1111-111111111111"
    assert not holds_pan(text)


def test_masking_keeps_the_last_four_unless_digits_follow_in_the_same_run() -> None:
    assert mask_pans("pan 5500-0055-5555-5559 end") == "pan ************5559 end"
    assert mask_pans(f"{PANS[0]} 12/27") == "*" * 16 + " 12/27"
    assert mask_pans(f"[{PANS[0]}]") == f"[{'*' * 12}{PANS[0][-4:]}]"


def test_a_mask_keeps_the_text_around_escapes_and_wide_characters() -> None:
    escaped = forms(PANS[0])["u_escaped"]
    assert mask_pans(f'{{"card_id": "{escaped}", "x": 1}}') == (
        f'{{"card_id": "{"*" * 12}{PANS[0][-4:]}", "x": 1}}'
    )
    wide = forms(PANS[0])["fullwidth"]
    assert mask_pans(f"カード {wide} です") == f"カード {'*' * 12}{PANS[0][-4:]} です"


def test_invisible_characters_and_unicode_dashes_do_not_hide_a_number() -> None:
    g = [PANS[0][i : i + 4] for i in range(0, 16, 4)]
    for text in ("\u200b".join(g), "\u2013".join(g), "\u00a0".join(g), "\u2007".join(g)):
        assert holds_pan(text)
        assert pans_in_clear(mask_pans(text)) == []


def test_mask_tree_masks_keys_values_and_nested_lists() -> None:
    tree = {PANS[0]: [PANS[1], {"x": f"tok_{PANS[2]}", "n": 4111111111111111}]}
    masked = mask_tree(tree)
    assert pans_in_clear(json.dumps(masked)) == []
    assert json.dumps(masked).count("4111111111111111") == 1  # numbers are not text


def test_luhn() -> None:
    assert luhn_ok("79927398713")
    assert not luhn_ok("79927398710")
    assert all(luhn_ok(pan) for pan in PANS)


_FORM_NAMES = sorted(forms(PANS[0]))
_BORDER = st.text(alphabet=" ;,:=\"'()[]{}<>|!?#_@\n", min_size=1, max_size=3)


@given(
    st.tuples(st.text(max_size=40), _BORDER),
    st.sampled_from(PANS),
    st.sampled_from(_FORM_NAMES),
    st.booleans(),
    st.tuples(_BORDER, st.text(max_size=40)),
)
def test_a_card_number_anywhere_in_any_text_is_masked(
    before: tuple[str, str], pan: str, name: str, decoded: bool, after: tuple[str, str]
) -> None:
    form = forms(pan)[name]
    text = "".join(before) + (_value(form) if decoded else form) + "".join(after)
    assert holds_pan(text)
    masked = mask_pans(text)
    assert pan not in pans_in_clear(masked)
    assert mask_pans(masked) == masked


@given(st.text())
def test_masking_is_idempotent_and_leaves_no_candidate(text: str) -> None:
    masked = mask_pans(text)
    assert mask_pans(masked) == masked
    assert not holds_pan(masked)
    if not holds_pan(text):
        assert masked == text


@given(st.text(alphabet="0123456789 -./\t\\u0fF", max_size=80))
def test_masking_digit_heavy_text_is_idempotent(text: str) -> None:
    masked = mask_pans(text)
    assert mask_pans(masked) == masked
    assert not holds_pan(masked)


# -- fuzzing (atheris, coverage-guided): briefly here, for minutes in `make soak` -----------------


@pytest.mark.parametrize("target", ["decode", "mask"])
def test_fuzz_briefly(target: str, tmp_path: Path) -> None:
    seconds = os.environ.get("FUZZ_SECONDS", "10")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz",
            target,
            f"-max_total_time={seconds}",
            "-rss_limit_mb=4096",
            f"-artifact_prefix={tmp_path}/",
        ],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=int(seconds) + 120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done" in result.stderr, result.stderr[-3000:]
