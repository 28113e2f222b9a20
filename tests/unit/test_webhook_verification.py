"""`outbox.webhooks.verify_webhook`: both signing generations, every refusal, rotation, limits.

Generation A is checked against vectors computed by hand (`openssl dgst -sha256 -hmac`), B
against signatures made by the Standard Webhooks reference library (`standardwebhooks`), so
neither side of a test is our own code.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

from mintfax_sandbox.webhooks import new_secret, signed_headers
from outbox.errors import FaxOutboxError, WebhookRefused
from outbox.webhooks import MAX_BODY_BYTES, TOLERANCE, verify_webhook

# Vector 1: `printf '%s' "1767225600.$BODY" | openssl dgst -sha256 -hmac "$SECRET"`.
A_SECRET = "whsec_MfKQ9r8GKYqqTWBEGdIhIdBpBBXiTY35"
A_TIMESTAMP = 1767225600  # 2026-01-01T00:00:00Z
A_BODY = (
    b'{"event_id":"evt_01JGA0000000000000000000","event":"fax.delivered",'
    b'"timestamp":"2026-01-01T00:00:00Z","data":{"id":"fax_abc","status":"delivered","pages":1}}'
)
A_SIGNATURE = "62504855e089217569d97623b5e7f34cecadf68159908c14ba84c291c703ab14"
# Vector 2: `printf '1700000000.{}' | openssl dgst -sha256 -hmac secret` (a non-whsec secret).
A2_SIGNATURE = "b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"

B_SECRET = "whsec_MfKMYDqzWo0a6N8jMkVtHBFBs4Ug0u5Q"
B_OTHER_SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
B_ID = "msg_2KWPBgLlAfxdpx2AI54pPJ85f1W"
B_BODY = json.dumps(
    {
        "id": "evt_b_1",
        "type": "fax.failed",
        "created": A_TIMESTAMP,
        "data": {"object": {"id": "fax_b1", "status": "failed", "error_code": "busy"}},
    },
    separators=(",", ":"),
).encode()

NOW = datetime.fromtimestamp(A_TIMESTAMP, UTC)


def _secrets(*values: str) -> list[SecretStr]:
    return [SecretStr(v) for v in values]


def a_headers(signature: str = A_SIGNATURE, timestamp: int = A_TIMESTAMP) -> dict[str, str]:
    return {"X-Mintfax-Timestamp": str(timestamp), "X-Mintfax-Signature": signature}


def b_headers(
    body: bytes = B_BODY,
    secrets: tuple[str, ...] = (B_SECRET,),
    timestamp: int = A_TIMESTAMP,
    msg_id: str = B_ID,
) -> dict[str, str]:
    """Headers as the reference library signs them (one `v1,` token per secret)."""
    when = datetime.fromtimestamp(timestamp, UTC)
    signature = " ".join(Webhook(s).sign(msg_id, when, body.decode()) for s in secrets)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def refused(body: bytes, headers: dict[str, str], secrets: list[SecretStr], now: datetime) -> int:
    with pytest.raises(WebhookRefused) as caught:
        verify_webhook(body, headers, secrets, now)
    assert isinstance(caught.value, FaxOutboxError)
    for secret in secrets:  # the reason is logged: it must never hold a secret
        assert not secret.get_secret_value() or secret.get_secret_value() not in str(caught.value)
    return caught.value.status


# -- accepted -------------------------------------------------------------------------------


def test_generation_a_hand_computed_vector_is_accepted_and_parsed() -> None:
    event = verify_webhook(A_BODY, a_headers(), _secrets(A_SECRET), NOW)
    assert event.event_id == "evt_01JGA0000000000000000000"
    assert event.event_type == "fax.delivered"
    assert event.occurred_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert event.data == {"id": "fax_abc", "status": "delivered", "pages": 1}
    assert event.mintfax_fax_id == "fax_abc"
    assert event.payload["event"] == "fax.delivered"


def test_generation_a_second_vector_with_a_plain_secret_reaches_parsing() -> None:
    # The signature holds (else 401); `{}` is then refused as no envelope (400).
    now = datetime.fromtimestamp(1700000000, UTC)
    headers = a_headers(A2_SIGNATURE, 1700000000)
    assert refused(b"{}", headers, _secrets("secret"), now) == 400
    assert refused(b"{}", headers, _secrets("secreT"), now) == 401


def test_headers_are_case_insensitive_and_hex_case_does_not_matter() -> None:
    headers = {"x-mintfax-timestamp": str(A_TIMESTAMP), "X-MINTFAX-SIGNATURE": A_SIGNATURE.upper()}
    assert verify_webhook(A_BODY, headers, _secrets(A_SECRET), NOW).event_type == "fax.delivered"
    upper_b = {k.upper(): v for k, v in b_headers().items()}
    assert verify_webhook(B_BODY, upper_b, _secrets(B_SECRET), NOW).event_type == "fax.failed"


def test_generation_b_signed_by_the_reference_library_is_accepted_and_parsed() -> None:
    headers = b_headers()
    event = verify_webhook(B_BODY, headers, _secrets(B_SECRET), NOW)
    assert event.event_id == B_ID  # webhook-id is the event id mintfax dedupes on
    assert event.event_type == "fax.failed"
    assert event.occurred_at == NOW
    assert event.data == {"id": "fax_b1", "status": "failed", "error_code": "busy"}
    assert event.mintfax_fax_id == "fax_b1"
    # The library's own verifier agrees (it judges against the real clock, so re-sign now).
    live = int(datetime.now(UTC).timestamp())
    Webhook(B_SECRET).verify(B_BODY, b_headers(timestamp=live))
    verify_webhook(B_BODY, b_headers(timestamp=live), _secrets(B_SECRET), datetime.now(UTC))


def test_generation_b_accepts_any_one_of_several_signatures() -> None:
    headers = b_headers(secrets=(B_OTHER_SECRET, B_SECRET))
    headers["webhook-signature"] = "v2,bm9wZQ== " + headers["webhook-signature"] + " v1,@@@"
    assert verify_webhook(B_BODY, headers, _secrets(B_SECRET), NOW).event_id == B_ID


@pytest.mark.parametrize("signing", ["a", "b"])
def test_what_the_simulator_signs_is_accepted(signing: str) -> None:
    # The simulator sends the generation A envelope under both signing schemes.
    secret = new_secret()
    headers = signed_headers(signing, secret, "evt_sim_1", A_BODY, A_TIMESTAMP)  # type: ignore[arg-type]
    event = verify_webhook(A_BODY, headers, _secrets(secret), NOW)
    assert event.event_type == "fax.delivered"
    assert event.event_id == "evt_01JGA0000000000000000000"  # the envelope's own id


# -- refused: signatures --------------------------------------------------------------------


def test_wrong_secret_is_refused() -> None:
    assert refused(A_BODY, a_headers(), _secrets(A_SECRET + "x"), NOW) == 401
    assert refused(B_BODY, b_headers(), _secrets(B_OTHER_SECRET), NOW) == 401


def test_tampered_body_is_refused() -> None:
    tampered = A_BODY.replace(b'"pages":1', b'"pages":2')
    assert refused(tampered, a_headers(), _secrets(A_SECRET), NOW) == 401
    tampered_b = B_BODY.replace(b"failed", b"delivered")
    assert refused(tampered_b, b_headers(), _secrets(B_SECRET), NOW) == 401


def test_re_serialised_json_is_refused() -> None:
    # Same JSON value, different bytes: a framework that parsed and re-dumped the body.
    for body, headers, secret in (
        (A_BODY, a_headers(), A_SECRET),
        (B_BODY, b_headers(), B_SECRET),
    ):
        again = json.dumps(json.loads(body)).encode()
        assert again != body and json.loads(again) == json.loads(body)
        assert refused(again, headers, _secrets(secret), NOW) == 401


@pytest.mark.parametrize("drop", ["X-Mintfax-Timestamp", "X-Mintfax-Signature"])
def test_missing_generation_a_header_is_refused(drop: str) -> None:
    headers = a_headers()
    del headers[drop]
    assert refused(A_BODY, headers, _secrets(A_SECRET), NOW) == 401


@pytest.mark.parametrize("drop", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_generation_b_header_is_refused(drop: str) -> None:
    headers = b_headers()
    del headers[drop]
    assert refused(B_BODY, headers, _secrets(B_SECRET), NOW) == 401


def test_no_signature_headers_at_all_is_refused() -> None:
    assert refused(A_BODY, {"content-type": "application/json"}, _secrets(A_SECRET), NOW) == 401


@pytest.mark.parametrize(
    "signature", ["", "zz" * 32, A_SIGNATURE[:-2], A_SIGNATURE + "00", "sha256=" + A_SIGNATURE]
)
def test_malformed_generation_a_signature_is_refused(signature: str) -> None:
    assert refused(A_BODY, a_headers(signature), _secrets(A_SECRET), NOW) == 401


@pytest.mark.parametrize("value", ["", "v1,", "v1,not base64!", "v2," + "A" * 44, "garbage"])
def test_malformed_generation_b_signature_is_refused(value: str) -> None:
    headers = {**b_headers(), "webhook-signature": value}
    assert refused(B_BODY, headers, _secrets(B_SECRET), NOW) == 401


@pytest.mark.parametrize("value", ["", "abc", "1767225600.5", "-1", "1e9", "١٧٦٧٢٢٥٦٠٠"])
def test_a_timestamp_that_is_not_unix_seconds_is_refused(value: str) -> None:
    assert refused(A_BODY, a_headers(timestamp=0) | {"X-Mintfax-Timestamp": value},
                   _secrets(A_SECRET), NOW) == 401  # fmt: skip


def test_no_configured_secret_refuses_everything() -> None:
    assert refused(A_BODY, a_headers(), [], NOW) == 401
    assert refused(B_BODY, b_headers(), _secrets(""), NOW) == 401


def test_a_secret_that_is_not_base64_is_skipped_for_generation_b() -> None:
    secrets = _secrets("not-a-standard-secret", B_SECRET)
    assert verify_webhook(B_BODY, b_headers(), secrets, NOW).event_id == B_ID


# -- refused: time --------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [-TOLERANCE.total_seconds(), 0, TOLERANCE.total_seconds()])
def test_timestamps_within_the_tolerance_either_side_are_accepted(offset: float) -> None:
    now = NOW + timedelta(seconds=offset)
    verify_webhook(A_BODY, a_headers(), _secrets(A_SECRET), now)
    verify_webhook(B_BODY, b_headers(), _secrets(B_SECRET), now)


@pytest.mark.parametrize("offset", [301, 3600, 10**6])
def test_stale_timestamps_are_refused(offset: int) -> None:
    now = NOW + timedelta(seconds=offset)
    assert refused(A_BODY, a_headers(), _secrets(A_SECRET), now) == 401
    assert refused(B_BODY, b_headers(), _secrets(B_SECRET), now) == 401


@pytest.mark.parametrize("offset", [301, 3600, 10**6])
def test_future_timestamps_are_refused(offset: int) -> None:
    now = NOW - timedelta(seconds=offset)
    assert refused(A_BODY, a_headers(), _secrets(A_SECRET), now) == 401
    assert refused(B_BODY, b_headers(), _secrets(B_SECRET), now) == 401


def test_a_captured_request_replayed_after_the_tolerance_is_refused() -> None:
    captured = (B_BODY, b_headers())
    assert verify_webhook(*captured, _secrets(B_SECRET), NOW + timedelta(seconds=5)).event_id
    later = NOW + TOLERANCE + timedelta(seconds=1)
    assert refused(*captured, _secrets(B_SECRET), later) == 401
    # Re-stamping it does not help: the timestamp is signed.
    restamped = {**captured[1], "webhook-timestamp": str(int(later.timestamp()))}
    assert refused(B_BODY, restamped, _secrets(B_SECRET), later) == 401
    restamped_a = a_headers(timestamp=int(later.timestamp()))
    assert refused(A_BODY, restamped_a, _secrets(A_SECRET), later) == 401


def test_now_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_webhook(A_BODY, a_headers(), _secrets(A_SECRET), NOW.replace(tzinfo=None))


# -- rotation -------------------------------------------------------------------------------


def test_both_secrets_are_accepted_during_a_rotation_overlap() -> None:
    old, new = B_SECRET, new_secret()
    overlap = _secrets(new, old)
    assert verify_webhook(B_BODY, b_headers(secrets=(old,)), overlap, NOW).event_id == B_ID
    assert verify_webhook(B_BODY, b_headers(secrets=(new,)), overlap, NOW).event_id == B_ID
    for signing in ("a", "b"):
        for secret in (old, new):
            headers = signed_headers(signing, secret, "evt_r", A_BODY, A_TIMESTAMP)
            assert verify_webhook(A_BODY, headers, overlap, NOW).event_type == "fax.delivered"
    # Once the old secret is retired, what it signs is refused.
    assert refused(B_BODY, b_headers(secrets=(old,)), _secrets(new), NOW) == 401


# -- refused: size and shape ----------------------------------------------------------------


def _signed_a(body: bytes, secret: str = A_SECRET) -> dict[str, str]:
    headers = signed_headers("a", secret, "evt_x", body, A_TIMESTAMP)
    return {k: v for k, v in headers.items() if k.startswith("x-mintfax")}


def _padded_envelope(size: int) -> bytes:
    base = json.loads(A_BODY)
    base["data"]["note"] = ""
    filler = size - len(json.dumps(base, separators=(",", ":")).encode())
    base["data"]["note"] = "x" * filler
    body = json.dumps(base, separators=(",", ":")).encode()
    assert len(body) == size
    return body


def test_a_body_of_exactly_one_megabyte_is_accepted_one_byte_more_is_413() -> None:
    body = _padded_envelope(MAX_BODY_BYTES)
    assert verify_webhook(body, _signed_a(body), _secrets(A_SECRET), NOW).event_id
    bigger = _padded_envelope(MAX_BODY_BYTES + 1)
    assert refused(bigger, _signed_a(bigger), _secrets(A_SECRET), NOW) == 413
    # Refused for its size before anything else is looked at.
    assert refused(bigger, {}, [], NOW) == 413


@pytest.mark.parametrize(
    "body",
    [b"not json", b"", b'["a list"]', b'"a string"', b"42", b"null", b'{"a": NaN}', b"{"],
)
def test_anything_but_a_json_object_is_400(body: bytes) -> None:
    assert refused(body, _signed_a(body), _secrets(A_SECRET), NOW) == 400


@pytest.mark.parametrize(
    "payload",
    [
        {"hello": "world"},
        {"event": "fax.delivered", "timestamp": "2026-01-01T00:00:00Z", "data": {}},
        {"event_id": "e", "event": "fax.delivered", "timestamp": "yesterday", "data": {}},
        {"event_id": "e", "event": "fax.delivered", "timestamp": "2026-01-01T00:00", "data": {}},
        {"event_id": "e", "event": "fax.delivered", "timestamp": "2026-01-01T00:00Z", "data": []},
        {"id": "e", "type": "fax.failed", "created": "soon", "data": {"object": {}}},
        {"id": "e", "type": "fax.failed", "created": 1, "data": {}},
        {"id": "e", "type": "fax.failed", "created": 10**20, "data": {"object": {}}},
    ],
)
def test_a_signed_object_that_is_no_event_envelope_is_400(payload: dict[str, object]) -> None:
    body = json.dumps(payload).encode()
    assert refused(body, _signed_a(body), _secrets(A_SECRET), NOW) == 400


def test_a_generation_b_body_that_is_not_utf8_is_400() -> None:
    body = b"\xff\xfe{}"
    headers = {"webhook-id": B_ID, "webhook-timestamp": str(A_TIMESTAMP),
               "webhook-signature": "v1,AAAA"}  # fmt: skip
    assert refused(body, headers, _secrets(B_SECRET), NOW) == 400


def test_a_generation_b_envelope_without_id_takes_the_webhook_id() -> None:
    payload = json.loads(B_BODY)
    del payload["id"]
    body = json.dumps(payload).encode()
    assert verify_webhook(body, b_headers(body), _secrets(B_SECRET), NOW).event_id == B_ID
