"""The sandbox's form-data parser against bodies real clients produce, and malformed ones."""

from __future__ import annotations

import httpx
import pytest

from mintfax_sandbox.multipart import MultipartError, boundary_of, parse


def _encoded(data: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://x/", data=data, files=files)
    return request.read(), request.headers["content-type"]


def test_parses_what_httpx_sends() -> None:
    document = b"%PDF-1.4\r\n--not-a-boundary\r\n\r\n\x00\xff binary"
    body, content_type = _encoded(
        {"to": "+15005550001", "retries": "2"}, {"file": ("scan; v2.pdf", document)}
    )
    fields = parse(body, content_type)
    assert fields["to"].text() == "+15005550001"
    assert fields["to"].filename is None
    assert fields["retries"].text() == "2"
    assert fields["file"].data == document
    assert fields["file"].filename == "scan; v2.pdf"


def test_quoted_boundary_preamble_padding_and_empty_values() -> None:
    body = (
        b"preamble to ignore\r\n"
        b"--b0und ary \t\r\n"
        b'Content-Disposition: form-data; name="webhook_url"\r\n\r\n'
        b"\r\n--b0und ary\r\n"
        b"content-disposition: form-data; name=to\r\nContent-Type: text/plain\r\n\r\n"
        b"+15005550007"
        b"\r\n--b0und ary--\r\nepilogue"
    )
    fields = parse(body, 'multipart/form-data; charset=utf-8; boundary="b0und ary"')
    assert fields["webhook_url"].data == b""
    assert fields["to"].text() == "+15005550007"


def test_the_first_part_of_a_repeated_name_wins() -> None:
    body, content_type = _encoded({}, {"file": ("a.pdf", b"first")})
    boundary = boundary_of(content_type).decode()
    extra = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="b"\r\n\r\n'
        f"second\r\n--{boundary}--\r\n"
    ).encode()
    fields = parse(body.removesuffix(f"--{boundary}--\r\n".encode()) + extra, content_type)
    assert fields["file"].data == b"first"


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b"{}", "application/json", "not multipart"),
        (b"", "multipart/form-data", "boundary"),
        (b"--x\r\n\r\n", "multipart/form-data; boundary=x", "no parts"),
        (
            b'--x\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--x\r\n',
            "multipart/form-data; boundary=x",
            "closing",
        ),
        (
            b"--x\r\nContent-Type: text/plain\r\n\r\n1\r\n--x--",
            "multipart/form-data; boundary=x",
            "Content-Disposition",
        ),
        (
            b'--x\r\nContent-Disposition: form-data; name="a"\r\n1\r\n--x--',
            "multipart/form-data; boundary=x",
            "blank line",
        ),
        (
            b'--xjunk\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--x--',
            "multipart/form-data; boundary=x",
            "line break",
        ),
    ],
)
def test_malformed_bodies_are_refused(body: bytes, content_type: str, reason: str) -> None:
    with pytest.raises(MultipartError, match=reason):
        parse(body, content_type)


def test_escaped_quotes_in_a_file_name() -> None:
    body = (
        b'--x\r\nContent-Disposition: form-data; name="file"; filename="a \\"b\\".pdf"\r\n\r\n'
        b"%PDF-1.4\r\n--x--\r\n"
    )
    assert parse(body, "multipart/form-data; boundary=x")["file"].filename == 'a "b".pdf'
