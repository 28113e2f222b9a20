"""The mintfax client against `httpx.MockTransport`: request shape, error mapping, secrets."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from outbox.clock import FrozenClock
from outbox.errors import (
    AuthenticationFailed,
    ConfigurationError,
    ConnectFailed,
    IdempotencyInProgress,
    IdempotencyKeyReuse,
    InsufficientBalance,
    MintfaxError,
    RateLimited,
    RequestRejected,
    ServerError,
    TransportError,
    UnexpectedResponse,
)
from outbox.fax_client import Balance, MintfaxClient, RateLimitInfo, SubmitResult

BASE = "http://mintfax.test/v1"
KEY = "fx_test_Sup3rS3cretK3yValue0123456789"
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
FAX_ID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
IDEM = "a" * 64

Handler = Callable[[httpx.Request], httpx.Response]


def make_client(handler: Handler, key: Any = None, **kwargs: Any) -> MintfaxClient:
    return MintfaxClient(
        BASE,
        SecretStr(KEY) if key is None else key,
        transport=httpx.MockTransport(handler),
        clock=FrozenClock(NOW),
        **kwargs,
    )


def answer(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if body is None:
            return httpx.Response(status, headers=headers)
        if isinstance(body, bytes):
            return httpx.Response(status, content=body, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return handler


def send(client: MintfaxClient, **overrides: Any) -> SubmitResult:
    args: dict[str, Any] = {
        "to": "+15005550001",
        "document": b"%PDF-1.4 hello",
        "filename": "letter.pdf",
        "idempotency_key": IDEM,
        "retries": 3,
    }
    args.update(overrides)
    return client.send_fax(**args)


def multipart_parts(request: httpx.Request) -> dict[str, Message]:
    raw = b"Content-Type: " + request.headers["content-type"].encode() + b"\r\n\r\n"
    message = BytesParser(policy=HTTP).parsebytes(raw + request.read())
    parts: dict[str, Message] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        assert isinstance(name, str)
        parts[name] = part
    return parts


ACCEPTED = {"id": FAX_ID, "status": "queued", "to": "+15005550001", "created_at": "2026-03-01"}


# -- request shape --------------------------------------------------------------------------


def test_send_fax_posts_multipart_with_idempotency_key_and_bearer_auth() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json=ACCEPTED, headers={"X-Request-Id": "req_123"})

    with make_client(handler) as client:
        result = send(client, webhook_url="https://hooks.example.com/mintfax")

    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/fax"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["idempotency-key"] == IDEM
    assert request.headers["user-agent"] == "fax-outbox/0.1"
    assert request.headers["accept"] == "application/json"
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    parts = multipart_parts(request)
    assert set(parts) == {"to", "retries", "webhook_url", "file"}
    assert parts["to"].get_content() == "+15005550001"
    assert parts["retries"].get_content() == "3"
    assert parts["webhook_url"].get_content() == "https://hooks.example.com/mintfax"
    assert parts["file"].get_filename() == "letter.pdf"
    assert parts["file"].get_content_type() == "application/pdf"
    assert parts["file"].get_payload(decode=True) == b"%PDF-1.4 hello"

    assert result.fax_id == FAX_ID
    assert result.status == "queued"
    assert result.status_code == 201
    assert result.request_id == "req_123"
    assert result.replayed is False
    assert isinstance(result.duration_ms, int)
    assert result.duration_ms >= 0


def test_send_fax_omits_webhook_url_unless_given() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json=ACCEPTED)

    send(make_client(handler))
    assert set(multipart_parts(seen[0])) == {"to", "retries", "file"}


@pytest.mark.parametrize(
    ("filename", "content_type"),
    [
        ("a.pdf", "application/pdf"),
        ("SCAN.TIFF", "image/tiff"),
        ("photo.jpeg", "image/jpeg"),
        ("report.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
        ("page.html", "text/html"),
        ("notes.txt", "text/plain"),
        ("blob.bin", "application/octet-stream"),
        ("noextension", "application/octet-stream"),
    ],
)
def test_file_content_type_follows_the_extension(filename: str, content_type: str) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json=ACCEPTED)

    send(make_client(handler), filename=filename)
    assert multipart_parts(seen[0])["file"].get_content_type() == content_type


def test_timeouts_are_on_by_default() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"available": 1, "held": 0})

    make_client(handler).get_balance()
    assert seen[0].extensions["timeout"] == {
        "connect": 30.0,
        "read": 30.0,
        "write": 30.0,
        "pool": 30.0,
    }


@pytest.mark.parametrize(
    "header",
    ["Idempotent-Replayed", "Idempotency-Replayed", "X-Idempotent-Replayed", "Idempotency-Replay"],
)
@pytest.mark.parametrize("status", [200, 201])
def test_replay_header_marks_the_result_replayed(header: str, status: int) -> None:
    result = send(make_client(answer(status, ACCEPTED, {header: "true"})))
    assert result.replayed is True
    assert result.status_code == status
    assert result.fax_id == FAX_ID


def test_replay_header_false_is_not_a_replay() -> None:
    assert (
        send(make_client(answer(201, ACCEPTED, {"Idempotent-Replayed": "false"}))).replayed is False
    )


@pytest.mark.parametrize("key", ["", "a b", "k" * 256, "clé", "abc\n"])
def test_bad_idempotency_keys_are_refused_before_sending(key: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing may be sent")

    with pytest.raises(ValueError, match="idempotency_key"):
        send(make_client(handler), idempotency_key=key)


def test_api_key_callable_is_read_on_every_request() -> None:
    keys = iter(["fx_test_first", "fx_test_second"])
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        return httpx.Response(200, json={"available": 5, "held": 1})

    client = make_client(handler, key=lambda: SecretStr(next(keys)))
    client.get_balance()
    client.get_balance()
    assert seen == ["Bearer fx_test_first", "Bearer fx_test_second"]


def test_a_key_provider_error_propagates_unchanged() -> None:
    def provider() -> SecretStr:
        raise ConfigurationError("MINTFAX_API_KEY_FILE", "is empty")

    with pytest.raises(ConfigurationError, match="MINTFAX_API_KEY_FILE is empty"):
        make_client(answer(200, {"available": 1, "held": 0}), key=provider).get_balance()


@pytest.mark.parametrize("bad_key", ["", "fx_test_abc\n", "fx_test_a b", "fx_test_\x00"])
def test_an_unsendable_key_is_a_configuration_error_that_hides_it(bad_key: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing may be sent")

    with pytest.raises(ConfigurationError) as info:
        make_client(handler, key=SecretStr(bad_key)).get_balance()
    assert info.value.setting == "MINTFAX_API_KEY"
    if bad_key:
        assert bad_key not in str(info.value)


@pytest.mark.parametrize("url", ["ftp://mintfax.test/v1", "mintfax.test/v1", "http:///v1"])
def test_base_url_must_be_http(url: str) -> None:
    with pytest.raises(ConfigurationError, match="MINTFAX_BASE_URL"):
        MintfaxClient(url, SecretStr(KEY))


def test_base_url_trailing_slash_is_tolerated() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={"available": 1, "held": 0})

    client = MintfaxClient(BASE + "/", SecretStr(KEY), transport=httpx.MockTransport(handler))
    client.get_balance()
    assert seen == [f"{BASE}/account/balance"]
    assert client.base_url == BASE


# -- other endpoints ------------------------------------------------------------------------


def test_get_fax_returns_the_resource() -> None:
    seen: list[httpx.Request] = []
    resource = {"id": FAX_ID, "status": "delivered", "to": "+15005550001", "pages": 1}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=resource)

    assert make_client(handler).get_fax(FAX_ID) == resource
    assert seen[0].method == "GET"
    assert str(seen[0].url) == f"{BASE}/fax/{FAX_ID}"


def test_get_fax_quotes_the_id_into_one_path_segment() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        return httpx.Response(200, json={"id": "x"})

    make_client(handler).get_fax("a/../b?c")
    assert seen == ["/v1/fax/a%2F..%2Fb%3Fc"]
    with pytest.raises(ValueError, match="resource id"):
        make_client(handler).get_fax("..")


def test_get_balance() -> None:
    assert make_client(answer(200, {"available": 12_345, "held": 600})).get_balance() == Balance(
        available=12_345, held=600
    )


@pytest.mark.parametrize(
    "body",
    [{"available": "12", "held": 0}, {"available": True, "held": 0}, {"held": 0}, [1, 2]],
)
def test_malformed_balance_is_an_unknown_outcome(body: Any) -> None:
    with pytest.raises(TransportError, match="account/balance"):
        make_client(answer(200, body)).get_balance()


def test_create_webhook_returns_data_and_a_hidden_secret() -> None:
    seen: list[httpx.Request] = []
    secret = "whsec_test_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    data = {"id": "ep_1", "url": "https://hooks.example.com/m", "is_active": True}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"data": data, "signing_secret": secret})

    got, signing_secret = make_client(handler).create_webhook(
        "https://hooks.example.com/m", events=["fax.delivered", "fax.failed"], description="prod"
    )
    assert got == data
    assert signing_secret.get_secret_value() == secret
    assert secret not in repr((got, signing_secret))
    assert seen[0].method == "POST"
    assert str(seen[0].url) == f"{BASE}/account/webhooks"
    assert json.loads(seen[0].content) == {
        "url": "https://hooks.example.com/m",
        "events": ["fax.delivered", "fax.failed"],
        "description": "prod",
    }


def test_create_webhook_without_events_subscribes_to_all() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"data": {"id": "ep"}, "signing_secret": "whsec_x"})

    make_client(handler).create_webhook("https://h.example.com")
    assert json.loads(seen[0].content) == {"url": "https://h.example.com"}


def test_create_webhook_without_a_secret_is_an_unknown_outcome_without_the_body() -> None:
    body = {"data": "whsec_leaked_maybe", "signing_secret": None}
    with pytest.raises(TransportError) as info:
        make_client(answer(201, body)).create_webhook("https://h.example.com")
    assert "whsec_leaked_maybe" not in json.dumps(info.value.envelope())


@pytest.mark.parametrize("wrap", [True, False])
def test_list_webhooks_accepts_envelope_or_list_and_drops_secrets(wrap: bool) -> None:
    items = [{"id": "ep_1", "url": "https://a", "signing_secret": "whsec_x"}, {"id": "ep_2"}]
    body = {"data": items} if wrap else items
    assert make_client(answer(200, body)).list_webhooks() == [
        {"id": "ep_1", "url": "https://a"},
        {"id": "ep_2"},
    ]


def test_delete_webhook() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    assert make_client(handler).delete_webhook("ep_1") is None
    assert (seen[0].method, str(seen[0].url)) == ("DELETE", f"{BASE}/account/webhooks/ep_1")


def test_delete_unknown_webhook_is_rejected() -> None:
    body = {"error": "not_found", "message": "No such endpoint"}
    with pytest.raises(RequestRejected, match="No such endpoint"):
        make_client(answer(404, body)).delete_webhook("ep_nope")


def test_rate_limit_headers_are_kept_for_status() -> None:
    headers = {"X-RateLimit-Limit": "60", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "34"}
    client = make_client(answer(200, {"available": 1, "held": 0}, headers))
    assert client.last_rate_limit is None
    client.get_balance()
    assert client.last_rate_limit == RateLimitInfo(60, 0, 34.0, NOW)


def test_garbage_rate_limit_headers_become_none() -> None:
    headers = {"X-RateLimit-Limit": "lots", "X-RateLimit-Remaining": "-1", "X-RateLimit-Reset": "x"}
    client = make_client(answer(200, {"available": 1, "held": 0}, headers))
    client.get_balance()
    assert client.last_rate_limit == RateLimitInfo(None, None, None, NOW)


def test_closed_client_sends_nothing() -> None:
    with make_client(answer(200, {"available": 1, "held": 0})) as client:
        client.get_balance()
    with pytest.raises(RuntimeError, match="closed"):
        client.get_balance()


# -- error mapping --------------------------------------------------------------------------

STATUS_MAP = [
    (500, "internal_error", ServerError),
    (502, None, ServerError),
    (503, "service_unavailable", ServerError),
    (504, None, ServerError),
    (599, None, ServerError),
    (429, "rate_limit_exceeded", RateLimited),
    (402, "insufficient_balance", InsufficientBalance),
    (401, "unauthenticated", AuthenticationFailed),
    (403, "account_not_activated", AuthenticationFailed),
    (409, "idempotency_key_in_progress", IdempotencyInProgress),
    (409, "idempotency_key_reuse", IdempotencyKeyReuse),
    (409, "conflict", IdempotencyKeyReuse),
    (400, "bad_request", RequestRejected),
    (404, "not_found", RequestRejected),
    (410, "gone", RequestRejected),
    (413, "payload_too_large", RequestRejected),
    (415, "unsupported_media_type", RequestRejected),
    (422, "validation_failed", RequestRejected),
    (418, "teapot", RequestRejected),
]


@pytest.mark.parametrize(("status", "code", "cls"), STATUS_MAP)
def test_status_codes_map_to_the_error_tree(
    status: int, code: str | None, cls: type[MintfaxError]
) -> None:
    body = {"error": code, "message": f"mintfax says {status}", "action": "do_something"}
    with pytest.raises(MintfaxError) as info:
        send(make_client(answer(status, body)))
    error = info.value
    assert type(error) is cls
    assert error.status_code == status
    assert error.error == code
    assert error.message == f"mintfax says {status}"
    assert error.action == "do_something"
    assert error.retryable == (cls in (ServerError, RateLimited, IdempotencyInProgress))


def test_validation_envelope_keeps_context_errors_and_request_id() -> None:
    body = {
        "error": "validation_failed",
        "message": "The given data was invalid.",
        "action": "fix_request",
        "docs": "https://mintfax.com/docs/errors/validation-failed",
        "context": {"errors": {"to": ["Use a magic number in the sandbox."]}},
        "request_id": "req_body",
    }
    with pytest.raises(RequestRejected) as info:
        send(make_client(answer(422, body, {"X-Request-Id": "req_header"})))
    error = info.value
    assert error.context == {"errors": {"to": ["Use a magic number in the sandbox."]}}
    assert error.request_id == "req_body"  # the body wins; the header is the fallback
    assert error.envelope()["kind"] == "RequestRejected"


def test_request_id_falls_back_to_the_header() -> None:
    with pytest.raises(InsufficientBalance) as info:
        send(make_client(answer(402, {"error": "insufficient_balance"}, {"X-Request-Id": "req_h"})))
    assert info.value.request_id == "req_h"
    assert info.value.message == "mintfax answered HTTP 402 Payment Required"


def test_nested_error_object_is_understood() -> None:
    body = {"error": {"code": "idempotency_key_in_progress", "message": "Still running"}}
    with pytest.raises(IdempotencyInProgress, match="Still running") as info:
        send(make_client(answer(409, body)))
    assert info.value.error == "idempotency_key_in_progress"


@pytest.mark.parametrize(
    ("status", "content", "cls"),
    [
        (502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", ServerError),
        (500, b"", ServerError),
        (503, b"upstream connect error", ServerError),
        (401, b"{not json", AuthenticationFailed),
        (409, b"\xff\xfe garbage", IdempotencyKeyReuse),
        (429, b"", RateLimited),
    ],
)
def test_malformed_error_bodies_still_map_by_status(
    status: int, content: bytes, cls: type[MintfaxError]
) -> None:
    with pytest.raises(MintfaxError) as info:
        send(make_client(answer(status, content)))
    error = info.value
    assert type(error) is cls
    assert error.status_code == status
    assert error.error is None
    assert error.message.startswith(f"mintfax answered HTTP {status}")


def test_html_error_body_is_kept_as_a_short_excerpt() -> None:
    page = b"<html><body><h1>502 Bad Gateway</h1>" + b"x" * 5000 + b"</body></html>"
    with pytest.raises(ServerError) as info:
        send(make_client(answer(502, page)))
    excerpt = info.value.context["body_excerpt"]
    assert excerpt.startswith("<html><body><h1>502 Bad Gateway</h1>")
    assert len(excerpt) <= 200


def test_redirect_names_the_location() -> None:
    handler = answer(301, b"", {"Location": "https://api.mintfax.com/v1/fax"})
    with pytest.raises(UnexpectedResponse, match=r"redirect to https://api\.mintfax\.com/v1/fax"):
        send(make_client(handler))


@pytest.mark.parametrize(
    ("status", "content"),
    [
        (404, b"<html>Not Found</html>"),  # a base URL without /v1
        (413, b"<html>413 Request Entity Too Large</html>"),  # a proxy's body limit
        (400, b'["not", "an", "envelope"]'),
        (418, b'{"message": "no error code"}'),
        (302, b""),
    ],
)
def test_a_refusal_without_mintfaxs_envelope_is_not_a_rejection_of_the_fax(
    status: int, content: bytes
) -> None:
    with pytest.raises(UnexpectedResponse) as info:
        send(make_client(answer(status, content)))
    assert info.value.status_code == status
    assert f"answered HTTP {status} without mintfax's error envelope" in info.value.message
    assert "MINTFAX_BASE_URL" in info.value.message


@pytest.mark.parametrize(
    ("headers", "retry_after"),
    [
        ({"Retry-After": "34"}, 34.0),
        ({"Retry-After": "Sun, 01 Mar 2026 12:00:20 GMT"}, 20.0),  # from our clock
        # An HTTP-date is measured from the server's Date, not our clock.
        (
            {
                "Retry-After": "Sun, 01 Mar 2026 11:00:20 GMT",
                "Date": "Sun, 01 Mar 2026 11:00:00 GMT",
            },
            20.0,
        ),
        ({}, 30.0),
        ({"Retry-After": "later"}, 30.0),
        ({"Retry-After": "-1"}, 30.0),
        ({"Retry-After": "999999"}, 3600.0),
        ({"Retry-After": "34", "Date": "garbage"}, 34.0),
    ],
)
def test_rate_limited_carries_retry_after(headers: dict[str, str], retry_after: float) -> None:
    body = {"error": "rate_limit_exceeded", "message": "Too many", "action": "wait_and_retry"}
    with pytest.raises(RateLimited) as info:
        send(make_client(answer(429, body, headers)))
    assert info.value.retry_after == retry_after


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'{"status": "queued"}',
        b'{"id": ""}',
        b'{"id": 42}',
        b'{"id": "x", "status": 7}',
    ],
)
def test_unusable_2xx_is_a_retryable_unknown_outcome(body: bytes) -> None:
    with pytest.raises(TransportError, match="outcome unknown") as info:
        send(make_client(answer(201, body, {"X-Request-Id": "req_9"})))
    error = info.value
    assert error.retryable is True
    assert error.status_code == 201
    assert error.request_id == "req_9"


def test_missing_status_on_201_means_queued() -> None:
    assert send(make_client(answer(201, {"id": FAX_ID}))).status == "queued"


TRANSPORT_FAILURES = [
    httpx.ConnectError("[Errno 111] Connection refused"),
    httpx.ConnectTimeout("timed out"),
    httpx.ReadTimeout("timed out"),
    httpx.WriteTimeout("timed out"),
    httpx.PoolTimeout("timed out"),
    httpx.ReadError("connection reset by peer"),
    httpx.WriteError("broken pipe"),
    httpx.RemoteProtocolError("Server disconnected without sending a response."),
    httpx.LocalProtocolError("illegal header"),
    httpx.DecodingError("bad gzip"),
    httpx.ProxyError("proxy said no"),
]


@pytest.mark.parametrize("failure", TRANSPORT_FAILURES, ids=lambda e: type(e).__name__)
def test_network_failures_become_transport_errors(failure: httpx.HTTPError) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise failure

    with pytest.raises(TransportError) as info:
        send(make_client(handler))
    error = info.value
    assert error.retryable is True
    assert error.status_code is None
    assert type(failure).__name__ in error.message
    assert "POST http://mintfax.test/v1/fax" in error.message
    # Only a failure to connect is known to have sent nothing; everything else is unknown.
    never_sent = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
    assert isinstance(error, ConnectFailed) == isinstance(failure, never_sent)
    # Not chained: the httpx exception could carry request headers into a traceback.
    assert error.__cause__ is None
    assert error.__suppress_context__ is True


# -- secret hygiene -------------------------------------------------------------------------


def _echo_key(status: int) -> Handler:
    """A server that (wrongly) echoes the Authorization header everywhere it can."""

    def handler(request: httpx.Request) -> httpx.Response:
        auth = request.headers["authorization"]
        body = {
            "error": f"code {auth}",
            "message": f"bad key {auth}",
            "action": auth,
            "context": {"echo": auth, "nested": [{"again": auth}]},
            "request_id": "req_1",
        }
        return httpx.Response(status, json=body, headers={"Retry-After": "1"})

    return handler


def _echo_key_text(status: int) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, text=f"oops {request.headers['authorization']}")

    return handler


def _raise_with_key(request: httpx.Request) -> httpx.Response:
    raise httpx.LocalProtocolError(f"Illegal header value b'{request.headers['authorization']}'")


SCENARIOS: list[tuple[str, Handler]] = [
    *((f"echo-{status}", _echo_key(status)) for status, _, _ in STATUS_MAP),
    *((f"text-{status}", _echo_key_text(status)) for status in (400, 500, 502)),
    ("transport", _raise_with_key),
    ("bad-2xx", answer(201, b"<html>")),
]


@pytest.mark.parametrize(("name", "handler"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_the_api_key_never_leaks_into_errors_or_logs(
    name: str, handler: Handler, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = make_client(handler)
    with pytest.raises(MintfaxError) as info:
        send(client)
    error = info.value
    for text in (
        str(error),
        repr(error),
        json.dumps(error.envelope()),
        repr(error.args),
        caplog.text,
        repr(client),
        repr(client.__dict__),
    ):
        assert KEY not in text, name
    assert caplog.records, "the client logs each call"


def test_scrubbed_text_still_says_which_kind_of_key() -> None:
    with pytest.raises(AuthenticationFailed) as info:
        send(make_client(_echo_key(401)))
    assert "fx_test_****" in info.value.message


def test_repr_shows_the_base_url_only() -> None:
    client = make_client(answer(200, {}))
    assert repr(client) == f"MintfaxClient(base_url='{BASE}')"


def test_logs_mask_the_recipient(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    send(make_client(answer(201, ACCEPTED)), to="+12125551223")
    assert "+12125551223" not in caplog.text
    assert "+1212*****23" in caplog.text


def test_the_client_never_retries() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(503, json={"error": "service_unavailable"})

    with pytest.raises(ServerError):
        send(make_client(handler))
    assert calls == 1
