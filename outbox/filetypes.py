"""Decide a document's type from its bytes, never from its name.

mintfax accepts PDF, DOCX, XLSX, JPG, PNG, TIFF, HTML and TXT. DOCX and XLSX are both zip files
(Office Open XML); they are told apart by the parts inside the archive (`word/document.xml` vs
`xl/workbook.xml`). Magic-number sniffing libraries guess Office formats from the first bytes
only, which is why this small module reads the zip directory itself.
"""

from __future__ import annotations

import io
import zipfile
from enum import StrEnum


class FileType(StrEnum):
    """A document type mintfax accepts."""

    PDF = "pdf"
    DOCX = "docx"
    XLSX = "xlsx"
    JPG = "jpg"
    PNG = "png"
    TIFF = "tiff"
    HTML = "html"
    TXT = "txt"


EXTENSIONS: dict[str, FileType] = {
    ".pdf": FileType.PDF,
    ".docx": FileType.DOCX,
    ".xlsx": FileType.XLSX,
    ".jpg": FileType.JPG,
    ".jpeg": FileType.JPG,
    ".png": FileType.PNG,
    ".tif": FileType.TIFF,
    ".tiff": FileType.TIFF,
    ".html": FileType.HTML,
    ".htm": FileType.HTML,
    ".txt": FileType.TXT,
}

# HTML is text: a .txt name on HTML content still sends what the caller meant (plain text).
_COMPATIBLE_NAMES: dict[FileType, frozenset[FileType]] = {
    FileType.HTML: frozenset({FileType.HTML, FileType.TXT}),
}

# The WHATWG MIME Sniffing Standard's HTML patterns (section 7.1): after leading whitespace, one
# of these, then a tag-terminating byte (space or ">"). Fragments such as "<p>Hello" count as
# HTML, as browsers (and HTML-to-fax renderers) treat them.
_HTML_TAGS = (
    b"<!doctype html",
    b"<html",
    b"<head",
    b"<script",
    b"<iframe",
    b"<h1",
    b"<div",
    b"<font",
    b"<table",
    b"<a",
    b"<style",
    b"<title",
    b"<b",
    b"<body",
    b"<br",
    b"<p",
    b"<!--",
)
_TAG_TERMINATORS = frozenset(b" \t\n\f\r>")
_TEXT_SNIFF_BYTES = 64 * 1024


def sniff(document: bytes) -> FileType | None:
    """The type of `document` judged by content, or None when it is none we accept."""
    if document.startswith(b"%PDF-"):
        return FileType.PDF
    if document.startswith(b"\x89PNG\r\n\x1a\n"):
        return FileType.PNG
    if document.startswith(b"\xff\xd8\xff"):
        return FileType.JPG
    if document.startswith((b"II*\x00", b"MM\x00*")):
        return FileType.TIFF
    if document.startswith(b"PK\x03\x04"):
        return _sniff_office(document)
    return _sniff_text(document)


def _sniff_office(document: bytes) -> FileType | None:
    try:
        with zipfile.ZipFile(io.BytesIO(document)) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, ValueError, OSError):
        return None
    if "[Content_Types].xml" not in names:
        return None
    if "word/document.xml" in names:
        return FileType.DOCX
    if "xl/workbook.xml" in names:
        return FileType.XLSX
    return None


def _sniff_text(document: bytes) -> FileType | None:
    head = document[:_TEXT_SNIFF_BYTES]
    if b"\x00" in head:
        return None
    # A cut in the middle of a multi-byte character at the sniff boundary is still text.
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if len(document) <= _TEXT_SNIFF_BYTES or exc.start < len(head) - 3:
            return None
        text = head[: exc.start].decode("utf-8")
    if any(ord(ch) < 32 and ch not in "\t\n\r\f\v\x1b" for ch in text):
        return None
    start = text.lstrip("\ufeff \t\r\n\f").lower().encode("utf-8")
    if _looks_like_html(start):
        return FileType.HTML
    return FileType.TXT


def _looks_like_html(start: bytes) -> bool:
    if start.startswith(b"<!--"):
        return True
    for tag in _HTML_TAGS:
        if start.startswith(tag) and len(start) > len(tag) and start[len(tag)] in _TAG_TERMINATORS:
            return True
    return False


def type_for_name(filename: str) -> FileType | None:
    """The type a file name claims by its extension, or None for an unknown extension."""
    dot = filename.rfind(".")
    if dot <= 0:
        return None
    return EXTENSIONS.get(filename[dot:].lower())


def name_matches(content_type: FileType, filename: str) -> bool:
    """Whether `filename`'s extension agrees with the sniffed `content_type`."""
    claimed = type_for_name(filename)
    if claimed is None:
        return False
    return claimed in _COMPATIBLE_NAMES.get(content_type, frozenset({content_type}))
