"""File types are decided by content; names must agree with it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from outbox.filetypes import FileType, name_matches, sniff, type_for_name
from tests import fixtures_files as files


@pytest.mark.parametrize("file_type", list(FileType))
def test_every_accepted_type_is_recognised_by_content(file_type: FileType) -> None:
    build, _name = files.SAMPLES[file_type]
    assert sniff(build()) is file_type


def test_big_endian_tiff_is_recognised() -> None:
    assert sniff(files.tiff(big_endian=True)) is FileType.TIFF


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (files.docx, FileType.DOCX),
        (files.xlsx, FileType.XLSX),
        (files.plain_zip, None),  # a zip that is neither
        (lambda: files.docx(content_types=False), None),  # not an OOXML package
        (lambda: files.xlsx(content_types=False), None),
        (lambda: b"PK\x03\x04 truncated garbage", None),  # zip magic, broken archive
    ],
)
def test_zip_based_documents_are_told_apart_by_their_parts(
    build: Callable[[], bytes], expected: FileType | None
) -> None:
    assert sniff(build()) == expected


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"<!DOCTYPE html><html><body>x</body></html>", FileType.HTML),
        (b"\xef\xbb\xbf  \n<HTML lang=en><p>x</p></HTML>", FileType.HTML),  # BOM, case
        (b"<p>Hello</p>", FileType.HTML),  # a fragment is still HTML
        (b"<table>\n<tr><td>1</td></tr></table>", FileType.HTML),
        (b"<!-- generated -->\n<div>x</div>", FileType.HTML),
        (b"<paragraph>not html</paragraph>", FileType.TXT),  # <p must end the tag name
        (b"Dear Dr. Smith, <html> is mentioned later", FileType.TXT),
        (b"plain text\r\nwith CRLF\tand tabs\f", FileType.TXT),
        ("Gr\u00fc\u00dfe aus K\u00f6ln \u2013 \u20ac".encode(), FileType.TXT),
        (b"a", FileType.TXT),
        (b"text with a NUL \x00 byte", None),
        (b"\x01\x02\x03 binary", None),
        (b"\xff\xfe\x00h\x00i", None),  # UTF-16 text is refused, not guessed
        (b"caf\xe9 in latin-1", None),  # not UTF-8
        (b"GIF89a\x01\x00\x01\x00", None),  # an image mintfax does not take
    ],
)
def test_text_html_and_binary(content: bytes, expected: FileType | None) -> None:
    assert sniff(content) == expected


def test_utf8_character_cut_at_the_sniff_window_is_still_text() -> None:
    # 64 KiB window: a 3-byte character straddling the boundary must not make it "binary".
    content = b"a" * (64 * 1024 - 1) + "\u20ac".encode() + b"tail"
    assert sniff(content) is FileType.TXT


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("letter.pdf", FileType.PDF),
        ("LETTER.PDF", FileType.PDF),
        ("scan.jpeg", FileType.JPG),
        ("scan.JPG", FileType.JPG),
        ("scan.tif", FileType.TIFF),
        ("page.htm", FileType.HTML),
        ("archive.tar.docx", FileType.DOCX),
        ("noextension", None),
        (".pdf", None),  # a hidden file, not a PDF name
        ("image.gif", None),
    ],
)
def test_type_claimed_by_a_name(name: str, expected: FileType | None) -> None:
    assert type_for_name(name) == expected


@pytest.mark.parametrize(
    ("content_type", "name", "ok"),
    [
        (FileType.PDF, "a.pdf", True),
        (FileType.PNG, "a.pdf", False),  # a PNG named .pdf
        (FileType.DOCX, "a.xlsx", False),  # a DOCX named .xlsx
        (FileType.XLSX, "a.docx", False),
        (FileType.JPG, "a.jpeg", True),
        (FileType.HTML, "a.txt", True),  # HTML is text; sending it as text is what was meant
        (FileType.TXT, "a.html", False),
        (FileType.TIFF, "a", False),
    ],
)
def test_name_must_agree_with_content(content_type: FileType, name: str, ok: bool) -> None:
    assert name_matches(content_type, name) is ok
