"""Builders of small but real documents of every type mintfax accepts, for tests.

Each builder returns bytes that a real reader of that format would open (valid structure,
checksums and offsets), so a test that passes on them says something about real files, not
about magic bytes alone. Nothing here touches the disk or the network.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Callable

from outbox.filetypes import FileType

_CONTENT_TYPES = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" '
    'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="xml" ContentType="application/xml"/>'
    '<Override PartName="{part}" ContentType="{content_type}"/>'
    "</Types>"
)
_ROOT_RELS = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" Target="{target}" Type="http://schemas.openxmlformats.org/'
    'officeDocument/2006/relationships/officeDocument"/>'
    "</Relationships>"
)


def pdf(text: str = "Hello fax") -> bytes:
    """A one-page PDF 1.4 with a correct cross-reference table."""
    stream = f"BT /F1 24 Tf 72 720 Td ({text}) Tj ET".encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def png() -> bytes:
    """A 1x1 8-bit greyscale PNG with valid CRCs."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00\x80")  # filter byte 0, one grey pixel
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def jpeg() -> bytes:
    """A 1x1 baseline greyscale JPEG (one Huffman code each for DC 0 and AC end-of-block)."""

    def segment(marker: int, body: bytes) -> bytes:
        return struct.pack(">BBH", 0xFF, marker, len(body) + 2) + body

    one_code_table = bytes([1] + [0] * 15) + b"\x00"
    return (
        b"\xff\xd8"
        + segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
        + segment(0xDB, b"\x00" + bytes([1] * 64))
        + segment(0xC0, struct.pack(">BHHB", 8, 1, 1, 1) + b"\x01\x11\x00")
        + segment(0xC4, b"\x00" + one_code_table)
        + segment(0xC4, b"\x10" + one_code_table)
        + segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")
        + b"\x3f"  # DC diff 0 ("0"), end of block ("0"), padded with ones
        + b"\xff\xd9"
    )


def tiff(big_endian: bool = False) -> bytes:
    """A 1x1 bilevel baseline TIFF (the format fax machines speak), either byte order."""
    order = ">" if big_endian else "<"
    entries = [  # tag, type (3 SHORT, 4 LONG, 5 RATIONAL), count, value
        (256, 3, 1, 1),  # ImageWidth
        (257, 3, 1, 1),  # ImageLength
        (258, 3, 1, 1),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 0),  # Photometric: white is zero
        (273, 4, 1, 0),  # StripOffsets (patched below)
        (278, 3, 1, 1),  # RowsPerStrip
        (279, 4, 1, 1),  # StripByteCounts
        (282, 5, 1, 0),  # XResolution (offset patched below)
        (283, 5, 1, 0),  # YResolution
        (296, 3, 1, 2),  # ResolutionUnit: inch
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    rational_at = 8 + ifd_size
    strip_at = rational_at + 8
    ifd = struct.pack(order + "H", len(entries))
    for tag, kind, count, value in entries:
        if tag == 273:
            value = strip_at
        elif tag in (282, 283):
            value = rational_at
        if kind == 3:
            ifd += struct.pack(order + "HHIHH", tag, kind, count, value, 0)
        else:
            ifd += struct.pack(order + "HHII", tag, kind, count, value)
    ifd += struct.pack(order + "I", 0)
    magic = b"MM\x00*" if big_endian else b"II*\x00"
    return magic + struct.pack(order + "I", 8) + ifd + struct.pack(order + "II", 204, 1) + b"\x00"


def _office(parts: dict[str, str], *, content_types: bool = True) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in parts.items():
            if name == "[Content_Types].xml" and not content_types:
                continue
            archive.writestr(name, text)
    return buffer.getvalue()


def docx(text: str = "Hello fax", *, content_types: bool = True) -> bytes:
    """A minimal WordprocessingML package: content types, root rels, word/document.xml."""
    return _office(
        {
            "[Content_Types].xml": _CONTENT_TYPES.format(
                part="/word/document.xml",
                content_type="application/vnd.openxmlformats-officedocument."
                "wordprocessingml.document.main+xml",
            ),
            "_rels/.rels": _ROOT_RELS.format(target="word/document.xml"),
            "word/document.xml": (
                '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
                '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/'
                f'2006/main"><w:body><w:p><w:r><w:t>{text}</w:t></w:r></w:p></w:body>'
                "</w:document>"
            ),
        },
        content_types=content_types,
    )


def xlsx(*, content_types: bool = True) -> bytes:
    """A minimal SpreadsheetML package: content types, root rels, xl/workbook.xml, one sheet."""
    main = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    return _office(
        {
            "[Content_Types].xml": _CONTENT_TYPES.format(
                part="/xl/workbook.xml",
                content_type="application/vnd.openxmlformats-officedocument."
                "spreadsheetml.sheet.main+xml",
            ),
            "_rels/.rels": _ROOT_RELS.format(target="xl/workbook.xml"),
            "xl/workbook.xml": (
                f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<workbook xmlns="{main}"'
                ' xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
                '<sheets><sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>'
            ),
            "xl/_rels/workbook.xml.rels": _ROOT_RELS.format(target="worksheets/sheet1.xml"),
            "xl/worksheets/sheet1.xml": (
                '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
                f'<worksheet xmlns="{main}">'
                '<sheetData><row r="1"><c r="A1" t="inlineStr"><is><t>fax</t></is></c></row>'
                "</sheetData></worksheet>"
            ),
        },
        content_types=content_types,
    )


def plain_zip() -> bytes:
    """A zip archive that is neither DOCX nor XLSX."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "just a zip")
    return buffer.getvalue()


def html() -> bytes:
    """A small HTML document with a doctype."""
    return b"<!DOCTYPE html>\n<html><body><h1>Fax</h1><p>Hello</p></body></html>\n"


def txt() -> bytes:
    """A small UTF-8 text document."""
    return "Patient referral\nBitte zur\u00fcckfaxen.\n".encode()


# One sample per accepted type, with the extension a user would give it.
SAMPLES: dict[FileType, tuple[Callable[[], bytes], str]] = {
    FileType.PDF: (pdf, "letter.pdf"),
    FileType.DOCX: (docx, "letter.docx"),
    FileType.XLSX: (xlsx, "sheet.xlsx"),
    FileType.JPG: (jpeg, "scan.jpg"),
    FileType.PNG: (png, "scan.png"),
    FileType.TIFF: (tiff, "scan.tiff"),
    FileType.HTML: (html, "page.html"),
    FileType.TXT: (txt, "note.txt"),
}
