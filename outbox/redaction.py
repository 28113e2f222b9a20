"""Masking for the values that may appear in log lines but must not appear whole (invariant 7).

Phone numbers are personal data: a log line keeps enough of one to tell two faxes apart and to
see the destination country (`+1212*****23`), never the full number. Secrets keep only their
public kind prefix (`fx_test_****`), so an operator can still see which key or environment a
line is about.

Both functions are used while logging, often while handling another error, so they never raise:
anything they cannot make sense of comes back fully masked.
"""

from __future__ import annotations

import re

import phonenumbers

_STARS = "****"
_UNPARSEABLE = "***"

# A national number keeps its first 3 and last 2 digits; shorter than this and what is left
# visible would identify the line, so every digit is masked.
_KEEP_HEAD = 3
_KEEP_TAIL = 2
_MIN_DIGITS_TO_KEEP_ANY = 8

# ITU calling codes are 1-3 digits and prefix-free, so the first match is the only one.
_COUNTRY_CODES = frozenset(str(code) for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE)

# "fx_test_", "fx_live_", "mfx_acct_", "whsec_test_", "whsec_": a short lowercase word, optionally
# followed by the environment word. Bounded so that a secret made of letters is never kept.
_SECRET_PREFIX = re.compile(r"^[a-z]{2,6}_(?:(?:test|live|acct|sandbox)_)?")


def mask_number(number: str) -> str:
    """Mask a phone number for logs, keeping the country code, the first 3 and last 2 digits.

    `"+12125551223"` -> `"+1212*****23"`. Formatting characters are ignored, so a number as a
    user typed it (`"+1 (212) 555-1223"`) is masked the same way. Input that is not a phone
    number at all comes back as `"***"` rather than raising or being echoed.
    """
    if not isinstance(number, str):
        return _UNPARSEABLE
    text = number.strip()
    digits = "".join(ch for ch in text if ch.isdigit() and ch.isascii())
    if not digits or not _looks_like_a_number(text):
        return _UNPARSEABLE
    if text.startswith("+"):
        country = _country_code(digits)
        return "+" + country + _mask_national(digits[len(country) :])
    return _mask_national(digits)


def mask_secret(value: str) -> str:
    """Mask a secret for logs, keeping only its kind prefix: `"fx_test_abc…"` -> `"fx_test_****"`.

    A value without a recognisable prefix (or not a string at all) becomes `"****"`.
    """
    if not isinstance(value, str):
        return _STARS
    match = _SECRET_PREFIX.match(value)
    prefix = match.group(0) if match else ""
    return prefix + _STARS


# In free text (a log message, an exception's text): a `+` and 7 to 15 digits, possibly spaced
# or dashed; and the secrets whose kind prefix we know (API keys, webhook signing secrets),
# a bearer token, a URL's password.
_NUMBER_IN_TEXT = re.compile(r"\+[1-9][0-9 ().-]{6,20}[0-9]")
_SECRET_IN_TEXT = re.compile(
    r"\b(?:fx|mfx)_(?:test|live|acct)_[A-Za-z0-9_-]+|\bwhsec_[A-Za-z0-9_+/=-]+"
)
_BEARER_IN_TEXT = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+")
_URL_PASSWORD_IN_TEXT = re.compile(r"(://[^/\s:@]*):[^/\s@]+@")


def mask_text(text: str) -> str:
    """`text` with every phone number and every recognisable secret in it masked.

    The last line of defence of the log formatter (`outbox.logs`): call sites mask what they
    log already, this catches what slipped through (an exception's text, a URL).
    """
    if not isinstance(text, str):
        return _UNPARSEABLE
    text = _NUMBER_IN_TEXT.sub(lambda m: mask_number(m.group(0)), text)
    text = _BEARER_IN_TEXT.sub(lambda m: f"{m.group(1)} {_STARS}", text)
    text = _SECRET_IN_TEXT.sub(lambda m: mask_secret(m.group(0)), text)
    return _URL_PASSWORD_IN_TEXT.sub(lambda m: f"{m.group(1)}:***@", text)


def _looks_like_a_number(text: str) -> bool:
    # Digits plus the punctuation people write numbers with; anything else (words, e-mail
    # addresses) is not a number and is hidden entirely.
    return all(ch.isdigit() or ch in "+-.() /" for ch in text)


def _country_code(digits: str) -> str:
    for length in (1, 2, 3):
        if digits[:length] in _COUNTRY_CODES:
            return digits[:length]
    return ""


def _mask_national(digits: str) -> str:
    if len(digits) < _MIN_DIGITS_TO_KEEP_ANY:
        return "*" * len(digits)
    hidden = len(digits) - _KEEP_HEAD - _KEEP_TAIL
    return digits[:_KEEP_HEAD] + "*" * hidden + digits[-_KEEP_TAIL:]
