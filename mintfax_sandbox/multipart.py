"""A small, strict parser for the `multipart/form-data` bodies `POST /v1/fax` receives.

Why not python-multipart (Starlette's form parser)? Its streaming, callback-per-byte-range design
suits gigabyte uploads, but a fax is at most 10 MB and the whole body is in memory anyway; splitting
on the boundary is several times cheaper, and the simulator must never be what limits the
project's benchmarks. The parser follows RFC 7578 / RFC 2046: a boundary parameter (quoted or
not), an optional preamble, CRLF-delimited parts with `Content-Disposition: form-data; name=...;
filename=...`, and a closing delimiter; anything else is `MultipartError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# One `name=value` parameter of a header: the value quoted (with backslash escapes) or bare.
_PARAM = re.compile(r'([^\s=;]+)[ \t]*=[ \t]*(?:"([^"\\]*(?:\\.[^"\\]*)*)"|([^;]*))')
_ESCAPE = re.compile(r"\\(.)")


class MultipartError(ValueError):
    """A body that is not well-formed multipart/form-data (the message says why)."""


@dataclass(frozen=True, slots=True)
class Part:
    """One form field: its value bytes, and the file name when it is a file upload."""

    data: bytes
    filename: str | None = None

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def boundary_of(content_type: str) -> bytes:
    """The boundary parameter of a `multipart/form-data` Content-Type."""
    media_type, _, params = content_type.partition(";")
    if media_type.strip().lower() != "multipart/form-data":
        raise MultipartError("the body is not multipart/form-data")
    for name, value in _params(params):
        if name == "boundary" and 1 <= len(value) <= 70:
            return value.encode("latin-1")
    raise MultipartError("the multipart boundary is missing")


def parse(body: bytes, content_type: str) -> dict[str, Part]:
    """The fields of a form-data body by name (the first part wins on repeated names)."""
    delimiter = b"\r\n--" + boundary_of(content_type)
    segments = (b"\r\n" + body).split(delimiter)
    if len(segments) < 3:
        raise MultipartError("the multipart body has no parts or no closing boundary")
    if not segments[-1].startswith(b"--"):
        raise MultipartError("the multipart body has no closing boundary")
    fields: dict[str, Part] = {}
    for segment in segments[1:-1]:
        # After the delimiter: optional whitespace ("transport padding"), then CRLF.
        line_end = segment.find(b"\r\n")
        if line_end < 0 or segment[:line_end].strip(b" \t"):
            raise MultipartError("a multipart delimiter is not followed by a line break")
        head, sep, data = segment[line_end + 2 :].partition(b"\r\n\r\n")
        if not sep:
            raise MultipartError("a multipart part has no blank line after its headers")
        name, filename = _disposition(head)
        fields.setdefault(name, Part(data, filename))
    return fields


def _disposition(head: bytes) -> tuple[str, str | None]:
    for line in head.split(b"\r\n"):
        header, _, value = line.decode("utf-8", errors="replace").partition(":")
        if header.strip().lower() != "content-disposition":
            continue
        kind, _, params = value.partition(";")
        if kind.strip().lower() != "form-data":
            break
        found = dict(_params(params))
        if "name" in found:
            return found["name"], found.get("filename")
        break
    raise MultipartError("a multipart part has no Content-Disposition: form-data; name=...")


def _params(text: str) -> list[tuple[str, str]]:
    """`; a=b; c="d; e"` -> [("a", "b"), ("c", "d; e")], honouring quotes and escapes."""
    result: list[tuple[str, str]] = []
    for match in _PARAM.finditer(text):
        name, quoted, bare = match.groups()
        if quoted is None:
            value = bare.strip()
        else:
            value = _ESCAPE.sub(r"\1", quoted) if "\\" in quoted else quoted
        result.append((name.lower(), value))
    return result
