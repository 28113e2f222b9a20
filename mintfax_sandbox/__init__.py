"""mintfax sandbox: an offline simulator of the mintfax API (generation A), with its failures.

A product of its own: it imports nothing from `outbox` or `workers`, and judges what it receives
(file types included, `filetypes`) with its own code, so a bug in our client is not mirrored here.
Run `python -m mintfax_sandbox [--port N] [--host H] [--rate-limit-per-minute L]
[--rate-limit-window-seconds W] [--faults SPEC] [--time-scale X] [--webhook-signing a|b]
[--webhook-secret whsec_...] [--control-token T]` (`faxout sandbox` forwards the same options;
prints `sandbox listening on http://HOST:PORT` when ready; SIGTERM/SIGINT stop it cleanly, exit
0), or in-process
with `ThreadedServer(create_app(sandbox=s), s.transports)` / the pytest fixture `sandbox`
(tests/sandbox_fixtures.py). Needs the `[sandbox]` extra (Starlette, uvicorn, httpx); importing
this package does not import them: the names below load their modules on first use.

Modules: `cli` (the command line, the only reader of the environment), `app` (routes: parse and
serialise), `gate` (auth, rate limit, request ids, counters), `forms` (request checks), `errors`
(the envelope), `state` (the `Sandbox` behind it all), `idempotency` (keys), `ledger` (money),
`carrier` (magic numbers and status transitions), `records`, `clock`, `webhooks`, `faults`,
`ratelimit`, `multipart`, `filetypes`, `server` (uvicorn with connection faults).

API (`/v1`, `Authorization: Bearer fx_test_...`; anything else, `fx_live_` included, is 401
`unauthenticated`). Errors: `{error, message, action, docs, context, request_id}`, 422 carries
`context.errors = {field: [messages]}`; every response has `X-Request-Id: req_...`.
- `POST /v1/fax` multipart `to`, `file` (PDF/DOCX/XLSX/JPG/PNG/TIFF/HTML/TXT by content, <=10 MB),
  `webhook_url`, `retries` 0-10 (default 3); `Idempotency-Key` header (<=255; the form field
  `idempotency_key` is accepted too). 201 `{id, status: "queued", to, created_at}` +
  `X-Idempotency-Key`. Only magic numbers are accepted (other E.164 numbers: 422 on `to`).
- `GET /v1/fax/{id}`, `GET /v1/fax?page=N` (`{data, page, per_page: 20, total, has_more}`, newest
  first; each item is the fax resource, `idempotency_key` included; optional exact-match filters
  `idempotency_key=` and `to=`, `total` counting the matches), `GET /v1/account/balance`
  (`{available, held}` cents), `POST|GET /v1/account/webhooks`, `DELETE
  /v1/account/webhooks/{id}` (204).
- Idempotency, 24 h of simulated time: same key + same body (`to`, file bytes, `retries`,
  `webhook_url`) replays the stored 201 with `Idempotent-Replayed: true`; a different body is 409
  `idempotency_key_reuse`; a request arriving while the first is still processing (i.e. during
  injected latency) is 409 `idempotency_key_in_progress` (+ `Retry-After: 1`). Requests that
  create nothing (402, 422, faults before the commit) do not store the key.
- Rate limit: sliding 60 s window per key (default 60/min, the documented sample; 0 = off, then no
  headers), `X-RateLimit-Limit/-Remaining/-Reset` on every /v1 response, 429
  `rate_limit_exceeded` + `Retry-After`; refused requests do not count. Real monotonic time.
- Money: 10 cents a page; hold on submit (the scenario's page count), capture on delivery, release
  on failure; 402 `insufficient_balance` (`top_up_balance`) with no record when the hold fails.
  Starts at 1,000,000 cents. `balance.low` once per cycle when available < 20 % of the last
  top-up (or of the amount last set).

Magic numbers (+1500555....): 0001 delivered 1 page; 0002 `busy` every attempt; 0003 `no_answer`;
0004 `busy` on attempt 1 then delivered; 0005 `line_quality` every attempt; 0006 402 at submit;
0007 delivered 3 pages; 0008 `invalid_number`, terminal on attempt 1; 0099 422 on `to`; any other
magic number delivers 1 page. Attempts = `retries` + 1; statuses queued -> submitted ->
in_progress -> delivered | failed; events `fax.queued`, `fax.sending` (each attempt),
`fax.retry_scheduled`, `fax.delivered` / `fax.failed`, `balance.low`, `balance.topup`. A carrier
step is 50 ms x time scale (a 1-page delivery takes ~0.2 s at scale 1).

Webhooks: envelope `{event_id, event, timestamp, data}` POSTed to each subscribed endpoint and to
the fax's `webhook_url` (signed with the account secret: `--webhook-secret`, else
`FAXOUT_SANDBOX_WEBHOOK_SECRET`, else a fresh one; `GET /sandbox/webhook-secret` shows it).
Signing a (default): `X-Mintfax-Timestamp`, `X-Mintfax-Signature` = hex HMAC-SHA256(secret as
issued, "{ts}.{body}"); b: Standard Webhooks. Retried with backoff (0.1 s x 2^n x time scale, 6
attempts) on non-2xx, errors, or no answer in 5 s. Event `timestamp` and signature timestamps
are real time; record timestamps follow the simulated clock.

Faults (`--faults`, `POST /sandbox/faults`): `reset`, `error_500`, `error_503`,
`commit_then_drop` probabilities, `latency_ms` (fixed or `[low, high]`), `webhook_duplicate`,
`webhook_reorder`, `all_endpoints`, `seed`. Resets are real TCP resets (httpx `ReadError` /
`RemoteProtocolError`).

Control (`/sandbox`). Auth: `Authorization: Bearer <control token>`, compared in constant time; a
missing or wrong token is 401 `unauthenticated` (`check_control_token`) in the envelope above. The
token is `--control-token`, else `FAXOUT_SANDBOX_CONTROL_TOKEN`. Bound to anything but loopback
(127.0.0.0/8, ::1, `localhost`) the token is always required: the simulator prints one `warning:
the mintfax sandbox is bound to HOST: ...` line on stderr at start-up and, when no token is given,
generates one (`secrets.token_urlsafe`) and prints it once on stderr (`sandbox control token:
...`), the only place it is ever written. On loopback, and for `create_app(...)` in-process (its
`control_token=` argument, default none), the control endpoints are open unless a token is given.
`/v1` is unaffected (its own `fx_test_` keys). Endpoints: `GET faxes` (id, idempotency_key, to,
status, pages, submissions, ...), `GET stats` (requests_total, requests_by_status incl.
`reset`/`dropped`, requests_by_path, faxes_created, duplicate_creations, same_content_creations,
idempotent_replays, webhooks_delivered, webhooks_failed), `GET requests` (POST /v1/fax arrivals:
seq, received_at, monotonic, idempotency_key, status), `GET webhooks` (delivery log), `GET
webhook-secret`, `POST balance` (`{"available": N}` sets, `{"top_up": N}` adds + `balance.topup`),
`GET|POST faults`, `GET|POST config` (rate_limit_per_minute, time_scale, webhook_signing,
price_per_page, webhook_max_attempts, webhook_timeout_seconds), `GET|POST clock`
(`{"advance_seconds": N}`), `POST keys` (issues a new `fx_test_` key: `{"id", "key"}`, the key
shown only there), `GET keys` (id, last4, issued_at, revoked_at, requests and refused per key),
`POST keys/revoke` (`{"key": ...}` or `{"id": ...}`: that key gets 401 from then on; any other
`fx_test_` key keeps working), `POST reset` (back to the start-up state and configuration).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mintfax_sandbox.app import create_app
    from mintfax_sandbox.faults import FaultConfig, parse_fault_spec
    from mintfax_sandbox.server import ThreadedServer
    from mintfax_sandbox.state import Sandbox, SandboxConfig

# Public name -> the module that defines it, imported on first access (PEP 562).
_LAZY = {
    "FaultConfig": "mintfax_sandbox.faults",
    "Sandbox": "mintfax_sandbox.state",
    "SandboxConfig": "mintfax_sandbox.state",
    "ThreadedServer": "mintfax_sandbox.server",
    "create_app": "mintfax_sandbox.app",
    "parse_fault_spec": "mintfax_sandbox.faults",
}

__all__ = [
    "FaultConfig",
    "Sandbox",
    "SandboxConfig",
    "ThreadedServer",
    "create_app",
    "parse_fault_spec",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
