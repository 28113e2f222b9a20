"""The simulator's own file-type judgement (`mintfax_sandbox.filetypes`).

Real documents come from tests/fixtures_files.py; the near misses are built here, each one byte
or one package detail away from a document mintfax takes.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable

import pytest

from mintfax_sandbox.filetypes import document_kind
from tests import fixtures_files as files

WORD_MAIN = "application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"
EXCEL_MAIN = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"
OFFICE_DOCUMENT = (
    "http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument"
)
STRICT_OFFICE_DOCUMENT = "http://purl.oclc.org/ooxml/officeDocument/relationships/officeDocument"


def package(
    parts: dict[str, str],
    *,
    main: str | None = "word/document.xml",
    relationship: str = OFFICE_DOCUMENT,
    overrides: dict[str, str] | None = None,
    defaults: dict[str, str] | None = None,
    attributes: str = "",
) -> bytes:
    """An OPC package: the given parts plus `_rels/.rels` and `[Content_Types].xml`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        types = "".join(
            f'<Default Extension="{ext}" ContentType="{ct}"/>'
            for ext, ct in {"rels": "application/xml", **(defaults or {})}.items()
        ) + "".join(
            f'<Override PartName="{name}" ContentType="{ct}"/>'
            for name, ct in (overrides or {}).items()
        )
        archive.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/'
            f'package/2006/content-types">{types}</Types>',
        )
        if main is not None:
            archive.writestr(
                "_rels/.rels",
                '<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.'
                'openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" '
                f'Type="{relationship}" Target="{main}"{attributes}/></Relationships>',
            )
        for name, text in parts.items():
            archive.writestr(name, text)
    return buffer.getvalue()


WORD_PART = {"word/document.xml": "<w:document/>"}
EXCEL_PART = {"xl/workbook.xml": "<workbook/>"}


# --- every accepted type -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "kind"),
    [
        (files.pdf, "pdf"),
        (files.png, "png"),
        (files.jpeg, "jpg"),
        (files.tiff, "tiff"),
        (lambda: files.tiff(big_endian=True), "tiff"),
        (files.docx, "docx"),
        (files.xlsx, "xlsx"),
        (files.html, "html"),
        (files.txt, "txt"),
    ],
)
def test_real_documents_of_every_accepted_type(build: Callable[[], bytes], kind: str) -> None:
    assert document_kind(build()) == kind


# --- DOCX, XLSX and other zips -------------------------------------------------------------------


def test_the_main_part_s_content_type_tells_docx_from_xlsx() -> None:
    docx = package(WORD_PART, overrides={"/word/document.xml": WORD_MAIN})
    xlsx = package(EXCEL_PART, main="xl/workbook.xml", overrides={"/xl/workbook.xml": EXCEL_MAIN})
    assert (document_kind(docx), document_kind(xlsx)) == ("docx", "xlsx")


def test_the_root_relationship_decides_when_both_kinds_of_part_are_present() -> None:
    both = {**WORD_PART, **EXCEL_PART}
    types = {"/word/document.xml": WORD_MAIN, "/xl/workbook.xml": EXCEL_MAIN}
    assert document_kind(package(both, main="xl/workbook.xml", overrides=types)) == "xlsx"
    assert document_kind(package(both, main="word/document.xml", overrides=types)) == "docx"


@pytest.mark.parametrize(
    "variant",
    [
        {"main": "/word/document.xml"},  # an absolute target
        {"main": "./word/document.xml"},
        {"relationship": STRICT_OFFICE_DOCUMENT},  # Strict OOXML's relationship type
        {"overrides": {}, "defaults": {"xml": WORD_MAIN}},  # typed by its extension's Default
        {"overrides": {"/WORD/Document.XML": WORD_MAIN}},  # part names are case-insensitive
    ],
)
def test_package_variants_a_reader_accepts(variant: dict[str, object]) -> None:
    options: dict[str, object] = {"overrides": {"/word/document.xml": WORD_MAIN}, **variant}
    assert document_kind(package(WORD_PART, **options)) == "docx"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("description", "document"),
    [
        ("a zip of something else", files.plain_zip()),
        ("no [Content_Types].xml", files.docx(content_types=False)),
        ("no [Content_Types].xml (xlsx)", files.xlsx(content_types=False)),
        ("no package relationships", package(WORD_PART, main=None)),
        (
            "macro-enabled Word document (docm)",
            package(
                WORD_PART,
                overrides={
                    "/word/document.xml": "application/vnd.ms-word.document.macroEnabled.main+xml"
                },
            ),
        ),
        (
            "Word template (dotx)",
            package(
                WORD_PART,
                overrides={
                    "/word/document.xml": "application/vnd.openxmlformats-officedocument."
                    "wordprocessingml.template.main+xml"
                },
            ),
        ),
        (
            "PowerPoint presentation",
            package(
                {"ppt/presentation.xml": "<p:presentation/>"},
                main="ppt/presentation.xml",
                overrides={
                    "/ppt/presentation.xml": "application/vnd.openxmlformats-officedocument."
                    "presentationml.presentation.main+xml"
                },
            ),
        ),
        (
            "the main part is missing",
            package({}, overrides={"/word/document.xml": WORD_MAIN}),
        ),
        (
            "word/document.xml without a content type for it",
            package(WORD_PART),
        ),
        (
            "a relationship that is not officeDocument",
            package(
                WORD_PART,
                relationship="http://schemas.openxmlformats.org/package/2006/relationships/"
                "metadata/core-properties",
                overrides={"/word/document.xml": WORD_MAIN},
            ),
        ),
        (
            "an external main part",
            package(
                WORD_PART,
                overrides={"/word/document.xml": WORD_MAIN},
                attributes=' TargetMode="External"',
            ),
        ),
        ("zip magic on a broken archive", b"PK\x03\x04 truncated garbage"),
    ],
)
def test_zips_that_are_not_docx_or_xlsx_are_refused(description: str, document: bytes) -> None:
    assert document_kind(document) is None, description


def test_a_corrupted_member_is_refused_not_an_error() -> None:
    good = bytearray(files.docx())
    # Flip bytes inside the first member's compressed data (after its 30-byte header + name).
    name_length = int.from_bytes(good[26:28], "little")
    start = 30 + name_length
    good[start : start + 8] = bytes(8)
    assert document_kind(bytes(good)) is None


def test_an_oversized_package_part_is_not_read() -> None:
    # A valid DOCX but for its content-type part, padded past what the reader accepts (1 MB):
    # refused rather than decompressed without limit (a zip bomb costs the server nothing).
    padding = " " * (1 << 20)
    small = package(WORD_PART, overrides={"/word/document.xml": WORD_MAIN})
    assert document_kind(small) == "docx"
    source = zipfile.ZipFile(io.BytesIO(small))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in source.namelist():
            text = source.read(name).decode()
            if name == "[Content_Types].xml":
                text = text.replace("<Types ", padding + "<Types ")
            archive.writestr(name, text)
    padded = buffer.getvalue()
    assert len(padded) < 20_000  # compresses to almost nothing
    assert document_kind(padded) is None


# --- signatures and their near misses ------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "kind"),
    [
        (b"%PDF-1.7\n%%EOF", "pdf"),
        (b"%PDF-2.0\n", "pdf"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 32, "png"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "jpg"),
        (b"\xff\xd8\xff\xdb\x00\x43", "jpg"),
        (b"II*\x00\x08\x00\x00\x00", "tiff"),
        (b"MM\x00*\x00\x00\x00\x08", "tiff"),
    ],
)
def test_signatures(document: bytes, kind: str) -> None:
    assert document_kind(document) == kind


@pytest.mark.parametrize(
    "document",
    [
        b"%PDF-x.y\n\x00",  # no version digit
        b"%PDF1.4\n\x00",
        b"\x89PNG\r\n\x1a\x00" + b"\x00" * 8,  # last signature byte wrong
        b"\x89PNG\n\x1a\n" + b"\x00" * 8,  # line-ending conversion damaged it
        b"\xff\xd8\xff",  # start of image and nothing else
        b"\xff\xd8\xff\x00\x00\x00",  # no marker after the start of image
        b"\xff\xd8\x00\xe0",
        b"II\x00*\x08\x00\x00\x00",  # 42 in the wrong byte order
        b"MM*\x00\x00\x00\x00\x08",
        b"II+\x00\x10\x00\x00\x00",  # BigTIFF
        b"II*\x00",  # header cut short
        b"GIF89a\x01\x00\x01\x00\x00\x00",  # an image mintfax does not take
        b"BM\x1e\x00\x00\x00\x00\x00",  # BMP
    ],
)
def test_near_misses_of_the_signatures_are_refused(document: bytes) -> None:
    assert document_kind(document) is None


# --- text and HTML -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "kind"),
    [
        (b"<!DOCTYPE html><html><body>x</body></html>", "html"),
        (b"\xef\xbb\xbf \n <HTML lang=en><p>x</p></HTML>", "html"),  # BOM, spaces, upper case
        (b"<p>Hello</p>", "html"),  # a fragment
        (b"<table>\n<tr><td>1</td></tr></table>", "html"),
        (b"<span class=x>a</span>", "html"),
        (b"<br/>line", "html"),
        (b"<!-- generated -->\n<div>x</div>", "html"),
        (b'<?xml version="1.0"?>\n<html xmlns="http://www.w3.org/1999/xhtml"></html>', "html"),
        (b"<paragraph>not an element</paragraph>", "txt"),
        (b"<html", "txt"),  # no tag end
        (b"<?xml version='1.0'?><note>x</note>", "txt"),  # XML that is not HTML
        (b"Dear Dr. Smith, <html> comes later", "txt"),
        (b"plain text\r\nwith CRLF\tand tabs\f\v", "txt"),
        (b"a report \x1b[1mbold\x1b[0m", "txt"),  # escape sequences are allowed
        ("Gr\u00fc\u00dfe \u2013 \u20ac 10".encode(), "txt"),
        (b"a", "txt"),
    ],
)
def test_text_and_html(document: bytes, kind: str) -> None:
    assert document_kind(document) == kind


@pytest.mark.parametrize(
    "document",
    [
        b"",
        b"\xef\xbb\xbf",  # a byte-order mark and nothing else
        b"text with a NUL \x00 byte",
        b"\x01\x02\x03 binary",
        b"a bell \x07 rings",
        b"caf\xe9 in latin-1",  # not UTF-8
        b"\xff\xfeh\x00i\x00",  # UTF-16 is refused, not guessed
        b"x" * 100_000 + b"\x00",  # judged as a whole, not by its first bytes
        b"x" * 100_000 + b"\xc3",  # cut in the middle of a character
    ],
)
def test_text_near_misses_are_refused(document: bytes) -> None:
    assert document_kind(document) is None
