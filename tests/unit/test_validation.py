"""The validation table: every field, its edges, and the production-only rules."""

from __future__ import annotations

from typing import Any

import pytest

from outbox.errors import FieldError, ValidationFailed
from outbox.filetypes import FileType
from outbox.settings import Environment
from outbox.validation import (
    MAX_DOCUMENT_BYTES,
    check_document,
    check_idempotency_key,
    check_number,
    check_reference,
    check_retries,
    validate_intent,
)
from tests import fixtures_files as files

TEN_MB = 10 * 1024 * 1024
GOOD = {
    "to": "+12127365000",
    "document": files.pdf(),
    "filename": "letter.pdf",
    "reference": "order-42",
    "retries": 3,
}


def _intent(environment: Environment = "sandbox", **changes: Any) -> Any:
    return validate_intent(**{**GOOD, **changes}, environment=environment)


def _errors(**changes: Any) -> list[FieldError]:
    with pytest.raises(ValidationFailed) as caught:
        _intent(**changes)
    return caught.value.errors


# --- numbers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "e164",
    ["+12127365000", "+442079460958", "+4930901820", "+33142685300", "+61293744000"],
)
@pytest.mark.parametrize("environment", ["sandbox", "production"])
def test_canonical_numbers_pass_unchanged(e164: str, environment: Environment) -> None:
    assert check_number(e164, environment) == (e164, [])


@pytest.mark.parametrize(
    ("raw", "shown", "e164"),
    [
        ("+4402071234567", "+4402071234567", "+442071234567"),  # the UK trunk prefix 0
        ("+1 212 736 5000", "+1 212 736 5000", "+12127365000"),
        ("+1 (212) 736-5000", "+1 (212) 736-5000", "+12127365000"),
        ("  +1.212.736.5000  ", "'  +1.212.736.5000  '", "+12127365000"),
        ("+12127365000\n", "'+12127365000\\n'", "+12127365000"),
        ("+44 20 7946 0958", "+44 20 7946 0958", "+442079460958"),
        ("+49 30 901820", "+49 30 901820", "+4930901820"),
    ],
)
@pytest.mark.parametrize("environment", ["sandbox", "production"])
def test_a_number_not_in_canonical_form_is_refused_naming_the_canonical_one(
    raw: str, shown: str, e164: str, environment: Environment
) -> None:
    # The key is derived from the number as stored and sent, by the helper and by the database
    # alike: rewriting it here would give the helper's row another key than the same intent
    # inserted with plain SQL (issue 8, item 5).
    assert check_number(raw, environment) == (
        None,
        [FieldError("to", f"{shown} is not in canonical E.164 form; did you mean {e164}?")],
    )


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "is required"),
        ("   ", "is required"),
        ("12127365000", "E.164"),  # no country code
        ("0044 20 7946 0958", "E.164"),
        ("+0123456789", "not a phone number"),
        ("+999 1234", "not a phone number"),  # no such country code
        ("+1234", "not a valid number"),
        ("+1 212 736 5000 5000 5000 50", "not a phone number"),  # too long
        ("+1 212 736 500", "not a valid number"),  # too short for the US
        ("+1 800 FLOWERS", "no letters"),  # keypad letters are not read as digits
        ("+1 212 736 5OOO", "no letters"),  # letter O typed for zero
        ("+1 212 736 5000 ext. 12", "no letters"),  # a fax cannot dial an extension
        ("+1 212 736 5000;ext=12", "no letters"),
        ("+44 7911 123456", "mobile"),  # UK mobiles cannot take a fax
        ("+49 151 12345678", "mobile"),
    ],
)
def test_bad_numbers_are_refused_with_a_reason(raw: str, reason: str) -> None:
    number, errors = check_number(raw, "sandbox")
    assert number is None
    assert [e.field for e in errors] == ["to"]
    assert reason in errors[0].reason


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("+15005550006", "sandbox test number"),  # mintfax magic number
        ("+15005550000", "sandbox test number"),
        ("+15005559999", "sandbox test number"),
        ("+12125550100", "fictional"),  # NXX-555-0100..0199
        ("+12125550199", "fictional"),
        ("+13105550123", "fictional"),
        ("+15551234567", "fictional"),  # the 555 area code
    ],
)
def test_test_numbers_pass_in_sandbox_and_are_refused_in_production(raw: str, reason: str) -> None:
    number, errors = check_number(raw, "sandbox")
    assert errors == []
    assert number is not None
    assert number.startswith("+1")
    number, errors = check_number(raw, "production")
    assert number is None
    assert len(errors) == 1
    assert errors[0].field == "to"
    assert reason in errors[0].reason
    assert "production" in errors[0].reason


@pytest.mark.parametrize("raw", ["+12125550200", "+12125550099", "+15005560000"])
def test_neighbours_of_fictional_ranges_are_real_numbers(raw: str) -> None:
    # 555-0200 and 555-0099 are outside 555-0100..0199; 500-556 is not the magic 500-555.
    assert check_number(raw, "production") == (raw, [])


# --- documents -----------------------------------------------------------------------------


@pytest.mark.parametrize("file_type", list(FileType))
def test_each_accepted_file_type_passes_with_its_own_extension(file_type: FileType) -> None:
    build, name = files.SAMPLES[file_type]
    intent = _intent(document=build(), filename=name)
    assert intent.file_type is file_type


@pytest.mark.parametrize(
    ("document", "filename", "message"),
    [
        (files.png(), "scan.pdf", "has a PDF name but the content is PNG"),
        (files.docx(), "sheet.xlsx", "has a XLSX name but the content is DOCX"),
        (files.xlsx(), "letter.docx", "has a DOCX name but the content is XLSX"),
        (files.pdf(), "letter.txt", "has a TXT name but the content is PDF"),
        (files.jpeg(), "scan.png", "has a PNG name but the content is JPG"),
        (files.txt(), "note.html", "has a HTML name but the content is TXT"),
        (files.pdf(), "letter", "has an unsupported extension but the content is PDF"),
        (files.pdf(), "letter.exe", "has an unsupported extension but the content is PDF"),
    ],
)
def test_spoofed_or_missing_extensions_are_refused(
    document: bytes, filename: str, message: str
) -> None:
    assert _errors(document=document, filename=filename) == [FieldError("filename", message)]


@pytest.mark.parametrize(
    "document",
    [files.plain_zip(), files.docx(content_types=False), b"GIF89a\x01\x00", b"\x00\x01\x02"],
)
def test_unsupported_content_is_refused_whatever_its_name(document: bytes) -> None:
    errors = _errors(document=document, filename="letter.docx")
    assert [e.field for e in errors] == ["document"]
    assert "not a supported type" in errors[0].reason


@pytest.mark.parametrize(
    ("size", "ok"),
    [(0, False), (1, True), (TEN_MB - 1, True), (TEN_MB, True), (TEN_MB + 1, False)],
)
def test_document_size_edges(size: int, ok: bool) -> None:
    assert MAX_DOCUMENT_BYTES == TEN_MB
    file_type, errors = check_document(b"a" * size, "note.txt")
    if ok:
        assert (file_type, errors) == (FileType.TXT, [])
    else:
        assert file_type is None
        assert [e.field for e in errors] == ["document"]
        assert ("is empty" if size == 0 else "the limit is 10485760") in errors[0].reason


@pytest.mark.parametrize(
    ("filename", "reason"),
    [
        ("", "is required"),
        ("   ", "is required"),
        ("dir/letter.pdf", "plain file name"),
        ("..\\letter.pdf", "plain file name"),
        ("let\x00ter.pdf", "plain file name"),
        ("x" * 252 + ".pdf", "longer than 255"),
        ("\ud800.pdf", "valid Unicode"),
    ],
)
def test_bad_filenames(filename: str, reason: str) -> None:
    errors = _errors(filename=filename)
    assert [e.field for e in errors] == ["filename"]
    assert reason in errors[0].reason


def test_longest_filename_passes() -> None:
    assert _intent(filename="x" * 251 + ".pdf").filename == "x" * 251 + ".pdf"


# --- reference, retries, idempotency key ----------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "ok"),
    [
        ("r", True),
        ("x" * 255, True),
        ("\u00e9" * 255, True),  # characters, not bytes, as the database counts them
        ("", False),
        ("x" * 256, False),
        ("nul\x00inside", False),
        ("lone \udc80 surrogate", False),
    ],
)
def test_reference_edges(reference: str, ok: bool) -> None:
    errors = check_reference(reference)
    assert (errors == []) is ok
    assert all(e.field == "reference" for e in errors)


@pytest.mark.parametrize(
    ("retries", "ok"),
    [(0, True), (3, True), (10, True), (-1, False), (11, False), (True, False), ("3", False)],
)
def test_retries_edges(retries: Any, ok: bool) -> None:
    errors = check_retries(retries)
    assert (errors == []) is ok
    assert all(e.field == "retries" for e in errors)


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        (None, True),
        ("my-key-1", True),
        ("k" * 255, True),
        ("", False),
        ("k" * 256, False),
        ("caf\u00e9", False),  # not ASCII: cannot be an HTTP header value
        ("line\nbreak", False),
        ("with space", False),  # the client cannot send it (issue 8, item 2)
        (" padded", False),
        ("tab\there", False),
        ("!~visible-ascii~!", True),
    ],
)
def test_idempotency_key_edges(key: str | None, ok: bool) -> None:
    errors = check_idempotency_key(key)
    assert (errors == []) is ok
    assert all(e.field == "idempotency_key" for e in errors)


# --- the whole intent -------------------------------------------------------------------------


def test_a_good_intent_comes_back_as_given() -> None:
    intent = _intent(to="+12127365000", retries=0)
    assert intent.to_number == "+12127365000"
    assert intent.file_type is FileType.PDF
    assert (intent.filename, intent.reference, intent.retries) == ("letter.pdf", "order-42", 0)


def test_every_problem_is_reported_at_once_each_naming_its_field() -> None:
    with pytest.raises(ValidationFailed) as caught:
        validate_intent(
            to="+1 212",
            document=b"",
            filename="a/b.pdf",
            reference="",
            retries=11,
            environment="production",
            idempotency_key="",
        )
    fields = [e.field for e in caught.value.errors]
    assert sorted(fields) == sorted(
        ["to", "filename", "document", "reference", "retries", "idempotency_key"]
    )
    assert set(caught.value.as_dict()) == set(fields)
    message = str(caught.value)
    for field in fields:
        assert f"{field}: " in message


def test_production_refuses_a_magic_number_that_sandbox_takes() -> None:
    assert _intent(to="+15005550006").to_number == "+15005550006"
    with pytest.raises(ValidationFailed) as caught:
        _intent("production", to="+15005550006")
    assert [e.field for e in caught.value.errors] == ["to"]


def test_number_results_are_not_shared_between_callers() -> None:
    # Judgements are cached; a caller appending to its error list must not change the next.
    _number, errors = check_number("+1 212", "sandbox")
    errors.append(FieldError("to", "scribbled by a caller"))
    assert check_number("+1 212", "sandbox")[1] == [
        FieldError("to", "is not a valid number for its country")
    ]
