"""What kind of document an upload is, judged from its bytes the way mintfax would.

mintfax takes PDF, TIFF, DOCX, XLSX, JPG, PNG, HTML and TXT (mintfax-api.md section 10). This is
the simulator's own judgement, written apart from the client's, so that a file-type mistake in
our client shows up as a 422 here instead of being mirrored by the simulator and hidden:

- PDF, PNG, JPEG and TIFF by their signatures: `%PDF-` and a version digit; PNG's eight-byte
  signature; JPEG's start-of-image marker followed by a further marker; TIFF's byte order (`II`
  or `MM`) followed by the number 42 written in that byte order.
- DOCX and XLSX are OOXML packages (zip archives), told apart as a package reader does it: the
  `officeDocument` relationship in `_rels/.rels` names the main part, and `[Content_Types].xml`
  gives that part's content type, a WordprocessingML document or a SpreadsheetML workbook.
  Macro-enabled documents, templates, other Office packages and any other zip are refused.
- TXT is UTF-8 (a byte-order mark allowed) with no control characters other than tab, the line
  breaks, form feed and escape; it is HTML when it opens with a doctype, a comment or a known
  HTML element (an XML declaration may come first).
"""

from __future__ import annotations

import io
import re
import zipfile
import zlib
from typing import Literal

Kind = Literal["pdf", "tiff", "docx", "xlsx", "jpg", "png", "html", "txt"]

# What a package member may decompress to before we stop reading it (a zip bomb guard; real
# relationship and content-type parts are a few kilobytes).
_MAX_PART_BYTES = 1 << 20

_MAIN_PART_KINDS: dict[str, Kind] = {
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml": "docx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml": "xlsx",
}
# Transitional and Strict OOXML name the relationship differently; both end the same way.
_OFFICE_DOCUMENT_SUFFIX = "/officeDocument"

_ELEMENT = re.compile(r"<(?:[\w.-]+:)?(Relationship|Override|Default)\b([^>]*)>")
_ATTRIBUTE = re.compile(r"([\w:.-]+)\s*=\s*(?:\"([^\"]*)\"|'([^']*)')")

# C0 controls a text document may not contain: all but HT, LF, VT, FF, CR and ESC.
_BAD_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1a\x1c-\x1f]")
_XML_DECLARATION = re.compile(r"<\?xml[^>]*\?>\s*")
_MARKUP_START = re.compile(r"<(?:!doctype\s+html\b|!--|([a-z][a-z0-9]*)(?=[\s/>]))", re.I)
# Elements whose tag opening a text document makes it HTML (a fragment such as "<p>Hi" counts).
_HTML_ELEMENT_NAMES = """
a abbr address article aside b base basefont big blockquote body br caption center cite code col
colgroup dd del details dfn div dl dt em fieldset figure font footer form h1 h2 h3 h4 h5 h6 head
header hr html i iframe img ins kbd label li link main meta nav noscript ol p pre q s samp script
section small span strike strong style sub sup table tbody td tfoot th thead title tr tt u ul var
"""
_HTML_ELEMENTS = frozenset(_HTML_ELEMENT_NAMES.split())


def document_kind(data: bytes) -> Kind | None:
    """The kind of document `data` is, or None when it is nothing mintfax takes."""
    if not data:
        return None
    if data.startswith(b"PK\x03\x04"):
        return _package_kind(data)
    return _signature_kind(data) or _text_kind(data)


def _signature_kind(data: bytes) -> Kind | None:
    if data[:5] == b"%PDF-" and data[5:6].isdigit():
        return "pdf"
    if data[:8] == bytes((0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A)):
        return "png"
    if data[:3] == b"\xff\xd8\xff" and len(data) > 3 and 0xC0 <= data[3] <= 0xFE:
        return "jpg"
    if len(data) >= 8:
        order = data[:2]
        if (order == b"II" and int.from_bytes(data[2:4], "little") == 42) or (
            order == b"MM" and int.from_bytes(data[2:4], "big") == 42
        ):
            return "tiff"
    return None


def _package_kind(data: bytes) -> Kind | None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as package:
            members = {info.filename.lower(): info for info in package.infolist()}
            relationships = _read_member(package, members, "_rels/.rels")
            content_types = _read_member(package, members, "[content_types].xml")
            if relationships is None or content_types is None:
                return None
            main_part = _main_part(relationships)
            if main_part is None or main_part.lower() not in members:
                return None
            return _MAIN_PART_KINDS.get(_content_type_of(main_part, content_types) or "")
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        zlib.error,
        EOFError,
        OSError,
        ValueError,
        RuntimeError,
    ):
        # Broken, truncated, encrypted or oddly compressed: not a document mintfax can render.
        return None


def _read_member(
    package: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], name: str
) -> str | None:
    info = members.get(name)
    if info is None or info.file_size > _MAX_PART_BYTES:
        return None
    with package.open(info) as stream:
        raw = stream.read(_MAX_PART_BYTES + 1)
    if len(raw) > _MAX_PART_BYTES:
        return None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None


def _elements(xml: str, kind: str) -> list[dict[str, str]]:
    """The attributes of every `kind` element (namespace prefixes ignored)."""
    found: list[dict[str, str]] = []
    for match in _ELEMENT.finditer(xml):
        if match.group(1) == kind:
            attributes = _ATTRIBUTE.findall(match.group(2))
            found.append({name: double or single for name, double, single in attributes})
    return found


def _main_part(relationships: str) -> str | None:
    """The package path (no leading slash) of the part the `officeDocument` relationship names."""
    for relationship in _elements(relationships, "Relationship"):
        if relationship.get("TargetMode", "Internal") != "Internal":
            continue
        if relationship.get("Type", "").endswith(_OFFICE_DOCUMENT_SUFFIX):
            target = relationship.get("Target", "").removeprefix("./").lstrip("/")
            return target or None
    return None


def _content_type_of(part: str, content_types: str) -> str | None:
    """A part's content type: its `Override`, else the `Default` for its extension."""
    wanted = "/" + part.lower()
    for override in _elements(content_types, "Override"):
        if override.get("PartName", "").lower() == wanted:
            return override.get("ContentType")
    extension = part.rpartition(".")[2].lower()
    for default in _elements(content_types, "Default"):
        if default.get("Extension", "").lower() == extension:
            return default.get("ContentType")
    return None


def _text_kind(data: bytes) -> Kind | None:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    if not text or _BAD_CONTROL.search(text):
        return None
    opening = text.lstrip()
    declaration = _XML_DECLARATION.match(opening)
    if declaration is not None:
        opening = opening[declaration.end() :]
    markup = _MARKUP_START.match(opening)
    if markup is not None and (
        markup.group(1) is None or markup.group(1).lower() in _HTML_ELEMENTS
    ):
        return "html"
    return "txt"
