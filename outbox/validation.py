"""Validation of fax intents: every problem found, each naming its field (invariant 8).

The same checks run in `enqueue_fax` (before anything is written) and in the submitting worker
(for rows inserted with plain SQL, which the database can only partly judge), so that no fax
that mintfax would refuse for its number or file ever costs an API call.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import phonenumbers

from outbox.errors import FieldError, ValidationFailed
from outbox.filetypes import FileType, name_matches, sniff, type_for_name
from outbox.keys import idempotency_key_problem
from outbox.settings import Environment

MAX_DOCUMENT_BYTES = 10 * 1024 * 1024
MAX_REFERENCE_CHARS = 255
MAX_FILENAME_CHARS = 255
MIN_RETRIES, MAX_RETRIES = 0, 10

# mintfax's own pattern for `to` (also a CHECK constraint on fax_outbox.to_number).
E164_PATTERN = re.compile(r"^\+[1-9][0-9]{1,14}$")
# Sandbox magic numbers: +1 (500) 555-XXXX. They never reach a real fax machine.
MAGIC_NUMBER = re.compile(r"^\+1500555[0-9]{4}$")
# North American fictional numbers: NXX-555-01XX, and the whole 555 area code.
FICTIONAL_NUMBER = re.compile(r"^\+1(?:[2-9][0-9]{2}55501[0-9]{2}|555[0-9]{7})$")
# What a typed number may hold besides its digits. Letters are refused rather than read as a
# keypad ("5OOO" with the letter O would silently become 5666), and so are extensions, which
# E.164 cannot carry and a fax machine cannot dial.
_NUMBER_CHARS = re.compile(r"\+[0-9 ()./-]+")


@dataclass(frozen=True, slots=True)
class ValidIntent:
    """A fax intent that passed validation; `to_number` is canonical E.164, as given."""

    to_number: str
    document: bytes
    filename: str
    reference: str
    retries: int
    file_type: FileType


def check_number(to: str, environment: Environment) -> tuple[str | None, list[FieldError]]:
    """Judge `to`, which must be a number in canonical E.164 form; returns (number or None, errors).

    The number is never rewritten: it is stored, hashed into the idempotency key and sent
    exactly as written, which is what the database's insert trigger does with a plain-SQL row.
    A number that means a valid one but is spelled otherwise (spaces, a national trunk prefix
    such as +44 0...) is refused, naming the canonical form.
    """
    if not isinstance(to, str) or not to.strip():
        return None, [FieldError("to", "is required (an E.164 number such as +12125550123)")]
    number, errors = _judge_number(to.strip(), environment)
    if number is not None and number != to:
        shown = to if to.isprintable() and to == to.strip() else repr(to)
        return None, [
            FieldError("to", f"{shown} is not in canonical E.164 form; did you mean {number}?")
        ]
    return number, list(errors)


# Parsing with phonenumbers is most of what validating an intent costs, and senders fax the
# same recipients again and again; the judgement is a pure function of its arguments.
@functools.lru_cache(maxsize=4096)
def _judge_number(raw: str, environment: Environment) -> tuple[str | None, tuple[FieldError, ...]]:
    number, errors = _judge_number_uncached(raw, environment)
    return number, tuple(errors)


def _parse_plain_e164(raw: str) -> phonenumbers.PhoneNumber | None:
    """The number of an already-plain E.164 string, without phonenumbers' general parser.

    Most callers store numbers in E.164 already, and `parse` (normalising punctuation,
    extensions, national prefixes) is half of what validating them costs. Country codes are
    prefix-free, so the first known 1-3 digit prefix is the country code. A national number
    starting with 0 (Italy's leading zero) goes through the full parser.
    """
    if not E164_PATTERN.fullmatch(raw):
        return None
    digits = raw[1:]
    for length in (1, 2, 3):
        country_code = int(digits[:length])
        if country_code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            national = digits[length:]
            if not national or national.startswith("0"):
                return None
            return phonenumbers.PhoneNumber(
                country_code=country_code, national_number=int(national)
            )
    return None


def _judge_number_uncached(
    raw: str, environment: Environment
) -> tuple[str | None, list[FieldError]]:
    if not raw.startswith("+"):
        return None, [FieldError("to", "must be in international E.164 form, starting with +")]
    if not _NUMBER_CHARS.fullmatch(raw):
        return None, [
            FieldError("to", "may hold only digits, spaces and ()-./ after the + (no letters)")
        ]
    parsed = _parse_plain_e164(raw)
    if parsed is None:
        try:
            parsed = phonenumbers.parse(raw, None)
        except phonenumbers.NumberParseException:
            return None, [FieldError("to", "is not a phone number")]
    number = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    if not E164_PATTERN.fullmatch(number):
        return None, [FieldError("to", "is not a valid E.164 number")]
    if MAGIC_NUMBER.fullmatch(number):
        if environment == "production":
            return None, [FieldError("to", "is a sandbox test number; refused in production")]
        return number, []
    if FICTIONAL_NUMBER.fullmatch(number):
        if environment == "production":
            return None, [FieldError("to", "is a fictional 555 number; refused in production")]
        return number, []
    # One type lookup answers both questions: UNKNOWN is exactly what is_valid_number refuses.
    number_type = phonenumbers.number_type(parsed)
    if number_type == phonenumbers.PhoneNumberType.UNKNOWN:
        return None, [FieldError("to", "is not a valid number for its country")]
    if number_type == phonenumbers.PhoneNumberType.MOBILE:
        return None, [FieldError("to", "is a mobile number, which cannot receive a fax")]
    return number, []


def check_document(document: bytes, filename: str) -> tuple[FileType | None, list[FieldError]]:
    """Judge a document by its bytes and its name; returns (type or None, errors)."""
    errors: list[FieldError] = []
    errors.extend(check_filename(filename))
    if not isinstance(document, bytes | bytearray | memoryview):
        return None, [*errors, FieldError("document", "must be bytes or a path")]
    size = len(document)
    if size == 0:
        return None, [*errors, FieldError("document", "is empty")]
    if size > MAX_DOCUMENT_BYTES:
        return None, [
            *errors,
            FieldError("document", f"is {size} bytes; the limit is {MAX_DOCUMENT_BYTES} (10 MB)"),
        ]
    file_type = sniff(bytes(document))
    if file_type is None:
        errors.append(
            FieldError(
                "document",
                "is not a supported type (PDF, DOCX, XLSX, JPG, PNG, TIFF, HTML, TXT)",
            )
        )
        return None, errors
    if not errors and not name_matches(file_type, filename):
        claimed = type_for_name(filename)
        what = f"a {claimed.value.upper()} name" if claimed else "an unsupported extension"
        errors.append(
            FieldError("filename", f"has {what} but the content is {file_type.value.upper()}")
        )
    return file_type, errors


def check_filename(filename: str) -> list[FieldError]:
    """A file name is a plain name: no path, no control characters, bounded length."""
    if not isinstance(filename, str) or not filename.strip():
        return [FieldError("filename", "is required")]
    if len(filename) > MAX_FILENAME_CHARS:
        return [FieldError("filename", f"is longer than {MAX_FILENAME_CHARS} characters")]
    if "/" in filename or "\\" in filename or any(ord(c) < 32 for c in filename):
        return [FieldError("filename", "must be a plain file name (no path, no control chars)")]
    if not _is_unicode_text(filename):
        return [FieldError("filename", "must be valid Unicode text")]
    return []


def check_reference(reference: str) -> list[FieldError]:
    """The caller's own reference: 1 to 255 characters."""
    if not isinstance(reference, str) or not reference:
        return [FieldError("reference", "is required (your own id for this fax)")]
    if len(reference) > MAX_REFERENCE_CHARS:
        return [FieldError("reference", f"is longer than {MAX_REFERENCE_CHARS} characters")]
    if "\x00" in reference:
        return [FieldError("reference", "must not contain NUL characters")]
    if not _is_unicode_text(reference):
        return [FieldError("reference", "must be valid Unicode text")]
    return []


def _is_unicode_text(value: str) -> bool:
    # Lone surrogates survive in Python strings but cannot be stored, hashed or sent as UTF-8.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_retries(retries: int) -> list[FieldError]:
    """mintfax's per-fax carrier retries: an integer 0-10."""
    if isinstance(retries, bool) or not isinstance(retries, int):
        return [FieldError("retries", "must be an integer from 0 to 10")]
    if not MIN_RETRIES <= retries <= MAX_RETRIES:
        return [FieldError("retries", f"is {retries}; it must be from 0 to 10")]
    return []


def check_idempotency_key(key: str | None) -> list[FieldError]:
    """A caller-chosen key: what `outbox.keys.idempotency_key_problem` (and the client) accept."""
    if key is None:
        return []
    if not isinstance(key, str) or not key:
        return [FieldError("idempotency_key", "must be a non-empty string")]
    problem = idempotency_key_problem(key)
    return [FieldError("idempotency_key", problem)] if problem else []


def validate_intent(
    *,
    to: str,
    document: bytes,
    filename: str,
    reference: str,
    retries: int,
    environment: Environment,
    idempotency_key: str | None = None,
) -> ValidIntent:
    """Check every field of one intent; raise `ValidationFailed` listing all problems."""
    number, errors = check_number(to, environment)
    file_type, doc_errors = check_document(document, filename)
    errors += doc_errors
    errors += check_reference(reference)
    errors += check_retries(retries)
    errors += check_idempotency_key(idempotency_key)
    if errors:
        raise ValidationFailed(errors)
    assert number is not None
    assert file_type is not None
    return ValidIntent(
        to_number=number,
        document=bytes(document),
        filename=filename,
        reference=reference,
        retries=retries,
        file_type=file_type,
    )
