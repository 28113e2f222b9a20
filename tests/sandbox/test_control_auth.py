"""The control endpoints (`/sandbox/...`) and their token (issue 8, item 7).

Bound to a non-loopback address the simulator warns on stderr and requires
`Authorization: Bearer <control token>` on `/sandbox/...` (generated and printed once when not
given); on loopback the token is required only when one is given. `/v1` keeps its own API keys.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable

import httpx
import pytest

from mintfax_sandbox import Sandbox, SandboxConfig, ThreadedServer, create_app
from tests.sandbox_fixtures import SandboxHandle, SandboxProcess

WARNING = (
    "the mintfax sandbox is bound to 0.0.0.0: anyone who can reach it can change its balance "
    "and faults; control endpoints require the control token"
)
TOKEN_LINE = "sandbox control token: "
CONTROL_TOKEN_ENV = "FAXOUT_SANDBOX_CONTROL_TOKEN"
# Every interface of this machine (not loopback), reached by the tests through 127.0.0.1.
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 (binding to it is the point of these tests)


def _startup_stderr(proc: SandboxProcess, lines: int, timeout: float = 5) -> list[str]:
    """The first `lines` lines the process wrote on stderr (fewer if it wrote fewer in time)."""
    found: list[str] = []
    stream = proc.process.stderr
    assert stream is not None

    def read() -> None:
        for _ in range(lines):
            line = stream.readline()
            if not line:
                return
            found.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    return list(found)


def _local(proc: SandboxProcess) -> str:
    """The server root reached through 127.0.0.1, whatever interface it is bound to."""
    port = proc.handle.url.rsplit(":", 1)[1]
    return f"http://127.0.0.1:{port}"


def _control(
    url: str, method: str, path: str, token: str | None, json: object = None
) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.request(method, f"{url}/sandbox/{path}", headers=headers, json=json, timeout=10)


def _assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 401
    body = response.json()
    assert body["error"] == "unauthenticated"
    assert body["request_id"].startswith("req_")
    assert set(body) == {"error", "message", "action", "docs", "context", "request_id"}


def _assert_every_control_call_guarded(url: str, token: str) -> None:
    for method, path, body in (
        ("GET", "stats", None),
        ("GET", "webhook-secret", None),
        ("POST", "balance", {"available": 5}),
        ("POST", "faults", {"error_500": 1.0}),
        ("POST", "clock", {"advance_seconds": 60}),
        ("POST", "config", {"time_scale": 3}),
        ("POST", "reset", {}),
    ):
        _assert_refused(_control(url, method, path, None, json=body))
        _assert_refused(_control(url, method, path, token + "x", json=body))
        _assert_refused(_control(url, method, path, "fx_test_sandbox_fixture_key", json=body))
    # Nothing of the refused calls took effect.
    handle = SandboxHandle(url, control_token=token)
    try:
        assert handle.balance()["available"] == 1_000_000
        assert handle.configure()["time_scale"] == 1.0
        assert handle.set_faults()["error_500"] == 0
        handle.set_balance(4321)
        assert handle.balance()["available"] == 4321
        assert handle.webhook_secret().startswith("whsec_")
        assert handle.send_fax().status_code == 201  # /v1 with its API key, no control token
    finally:
        handle.close()


def test_a_non_loopback_bind_warns_generates_a_token_and_requires_it(
    sandbox_process: Callable[..., SandboxProcess],
) -> None:
    proc = sandbox_process("--host", ALL_INTERFACES)
    stderr = _startup_stderr(proc, 2)
    assert len(stderr) == 2, stderr
    assert stderr[0].endswith(WARNING)
    assert stderr[1].startswith(TOKEN_LINE)
    token = stderr[1].removeprefix(TOKEN_LINE)
    assert len(token) >= 32
    url = _local(proc)
    _assert_every_control_call_guarded(url, token)
    # /v1 is unaffected: the control token is no API key.
    response = httpx.get(f"{url}/v1/account/balance", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert proc.stop() == 0
    assert token not in proc.stderr  # printed once, at start-up, and nowhere else


@pytest.mark.parametrize("source", ["option", "environment"])
def test_a_non_loopback_bind_uses_the_given_token_and_never_prints_it(
    sandbox_process: Callable[..., SandboxProcess],
    monkeypatch: pytest.MonkeyPatch,
    source: str,
) -> None:
    token = "operator-chosen-control-token-123"
    if source == "option":
        proc = sandbox_process("--host", ALL_INTERFACES, "--control-token", token)
    else:
        monkeypatch.setenv(CONTROL_TOKEN_ENV, token)
        proc = sandbox_process("--host", ALL_INTERFACES)
    stderr = _startup_stderr(proc, 1)
    assert stderr and stderr[0].endswith(WARNING)
    _assert_every_control_call_guarded(_local(proc), token)
    assert proc.stop() == 0
    assert token not in proc.stderr
    assert TOKEN_LINE not in proc.stderr


def test_on_loopback_the_token_is_optional_but_required_once_given(
    sandbox_process: Callable[..., SandboxProcess],
) -> None:
    open_proc = sandbox_process()
    assert _control(
        open_proc.handle.url, "POST", "balance", None, json={"available": 7}
    ).json() == {
        "available": 7,
        "held": 0,
    }
    assert open_proc.stop() == 0
    assert "warning" not in open_proc.stderr

    token = "loopback-control-token"
    guarded = sandbox_process("--control-token", token)
    _assert_every_control_call_guarded(guarded.handle.url, token)
    assert guarded.stop() == 0
    assert "warning" not in guarded.stderr
    assert token not in guarded.stderr


@pytest.mark.parametrize("bad", ["", "has space", "caf\u00e9"])
def test_an_unusable_control_token_is_refused_without_echoing_it(
    sandbox_cli: Callable[..., subprocess.CompletedProcess[str]], bad: str
) -> None:
    result = sandbox_cli("--port", "0", "--control-token", bad)
    assert result.returncode == 2
    assert "--control-token" in result.stderr
    assert CONTROL_TOKEN_ENV in result.stderr
    if bad:
        assert bad not in result.stderr


def test_in_process_apps_are_open_by_default_and_guarded_with_a_token() -> None:
    state = Sandbox(SandboxConfig())
    with ThreadedServer(create_app(sandbox=state), state.transports) as server:
        assert httpx.get(f"{server.url}/sandbox/stats").status_code == 200
    state = Sandbox(SandboxConfig())
    app = create_app(sandbox=state, control_token="in-process-token")
    with ThreadedServer(app, state.transports) as server:
        _assert_every_control_call_guarded(server.url, "in-process-token")
