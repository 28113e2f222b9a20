"""The simulator as a real process (`python -m mintfax_sandbox`): start-up line, options, clean
shutdown."""

from __future__ import annotations

import base64
import signal
from collections.abc import Callable
from subprocess import CompletedProcess

import httpx
import pytest

from mintfax_sandbox.cli import SECRET_ENV
from tests.sandbox_fixtures import SandboxProcess


def test_starts_announces_serves_and_stops_cleanly_on_sigterm(
    sandbox_process: Callable[..., SandboxProcess],
) -> None:
    proc = sandbox_process()
    assert proc.handle.send_fax().status_code == 201
    assert proc.stop() == 0


def test_stops_cleanly_on_sigint(sandbox_process: Callable[..., SandboxProcess]) -> None:
    proc = sandbox_process()
    proc.process.send_signal(signal.SIGINT)
    assert proc.process.wait(10) == 0
    proc.stop()  # closes the pipes


def test_options_reach_the_running_simulator(
    sandbox_process: Callable[..., SandboxProcess],
) -> None:
    proc = sandbox_process(
        "--rate-limit-per-minute",
        "7",
        "--faults",
        "error_503=1.0,seed=3",
        "--time-scale",
        "2.5",
        "--webhook-signing",
        "b",
    )
    config = httpx.get(f"{proc.handle.url}/sandbox/config").json()
    assert config["rate_limit_per_minute"] == 7
    assert config["time_scale"] == 2.5
    assert config["webhook_signing"] == "b"
    assert config["faults"]["error_503"] == 1.0
    response = proc.handle.send_fax()
    assert response.status_code == 503
    assert response.headers["x-ratelimit-limit"] == "7"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--faults", "explode=1"], "unknown fault"),
        (["--webhook-signing", "c"], "--webhook-signing"),
        (["--rate-limit-per-minute", "-1"], "--rate-limit-per-minute"),
        (["--rate-limit-window-seconds", "0"], "--rate-limit-window-seconds"),
        (["--time-scale", "-2"], "--time-scale"),
        (["--port", "70000"], "--port"),
        (["--port", "eighty"], "--port"),
        (["--webhook-secret", "not-a-secret"], "--webhook-secret"),
    ],
)
def test_bad_options_exit_2_with_one_clear_line(
    sandbox_cli: Callable[..., CompletedProcess[str]], args: list[str], message: str
) -> None:
    result = sandbox_cli("--port", "0", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert "not-a-secret" not in result.stderr  # a secret, even a bad one, is not echoed


def test_every_bad_option_is_reported_on_its_own_line(
    sandbox_cli: Callable[..., CompletedProcess[str]],
) -> None:
    result = sandbox_cli("--faults", "reset=2", "--webhook-signing", "z", "--time-scale", "-1")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3
    assert all(line.startswith("error: ") for line in lines)
    assert "reset" in lines[0]
    assert "--webhook-signing" in lines[1]
    assert "--time-scale" in lines[2]


def test_a_bad_secret_in_the_environment_is_refused_without_echoing_it(
    sandbox_cli: Callable[..., CompletedProcess[str]],
) -> None:
    result = sandbox_cli("--port", "0", env={SECRET_ENV: "whsec_???"})
    assert result.returncode == 2
    assert SECRET_ENV in result.stderr
    assert "???" not in result.stderr


def test_the_webhook_secret_comes_from_the_option_or_the_environment(
    sandbox_process: Callable[..., SandboxProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    from_env = "whsec_" + base64.b64encode(b"e" * 24).decode()
    from_option = "whsec_" + base64.b64encode(b"o" * 24).decode()
    monkeypatch.setenv(SECRET_ENV, from_env)
    assert sandbox_process().handle.webhook_secret() == from_env
    assert sandbox_process("--webhook-secret", from_option).handle.webhook_secret() == from_option
    monkeypatch.delenv(SECRET_ENV)
    fresh = sandbox_process().handle.webhook_secret()
    assert fresh.startswith("whsec_")
    assert fresh not in (from_env, from_option)


def test_a_busy_port_is_a_clear_error(
    sandbox_process: Callable[..., SandboxProcess],
    sandbox_cli: Callable[..., CompletedProcess[str]],
) -> None:
    proc = sandbox_process()
    port = proc.handle.url.rsplit(":", 1)[1]
    result = sandbox_cli("--port", port)
    assert result.returncode == 1
    assert "cannot listen" in result.stderr
