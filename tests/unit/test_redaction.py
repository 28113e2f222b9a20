from __future__ import annotations

from typing import Any

import pytest

from outbox.redaction import mask_number, mask_secret


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("+12125551223", "+1212*****23"),  # NANP: country code 1
        ("+442071838750", "+44207*****50"),  # UK: 2-digit country code
        ("+353212345678", "+353212****78"),  # Ireland: 3-digit country code
        ("+15005550006", "+1500*****06"),  # mintfax magic number
        ("+1 (212) 555-1223", "+1212*****23"),  # formatting is ignored
        ("2125551223", "212*****23"),  # no country code: digits only
    ],
)
def test_mask_number_keeps_country_code_head_and_tail(number: str, masked: str) -> None:
    assert mask_number(number) == masked


@pytest.mark.parametrize("number", ["+4930123", "+1555", "12345"])
def test_mask_number_hides_every_digit_of_short_numbers(number: str) -> None:
    masked = mask_number(number)
    # Only the country code (if any) may stay visible; the subscriber part is all stars.
    assert masked.rstrip("*") in ("+49", "+1", "")
    assert len(masked) == len(number)


@pytest.mark.parametrize(
    "garbage",
    ["", "   ", "+", "hello", "alice@example.com", "+1212555abcd", "\x00\xff", "🙂+1"],
)
def test_mask_number_never_echoes_garbage(garbage: str) -> None:
    assert mask_number(garbage) == "***"


@pytest.mark.parametrize("not_a_string", [None, 12125551223, b"+12125551223", object()])
def test_mask_number_never_raises_on_wrong_types(not_a_string: Any) -> None:
    assert mask_number(not_a_string) == "***"


def test_masked_number_shows_only_country_head_and_tail_digits() -> None:
    masked = mask_number("+12125559876")
    assert "".join(ch for ch in masked if ch.isdigit()) == "1" + "212" + "76"


@pytest.mark.parametrize(
    ("secret", "masked"),
    [
        ("fx_test_4eC39HqLyjWDarjtT1zdp7dc", "fx_test_****"),
        ("fx_live_4eC39HqLyjWDarjtT1zdp7dc", "fx_live_****"),
        ("mfx_acct_abcdef123456", "mfx_acct_****"),
        ("whsec_test_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_test_****"),
        ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_****"),
        ("fx_test_", "fx_test_****"),
        ("plainsecretwithoutprefix", "****"),
        ("abcdefghijklmnop_secret", "****"),  # a long lowercase run is secret, not a prefix
        ("", "****"),
    ],
)
def test_mask_secret_keeps_only_the_kind_prefix(secret: str, masked: str) -> None:
    assert mask_secret(secret) == masked


@pytest.mark.parametrize("not_a_string", [None, 42, b"fx_test_abc"])
def test_mask_secret_never_raises_on_wrong_types(not_a_string: Any) -> None:
    assert mask_secret(not_a_string) == "****"
