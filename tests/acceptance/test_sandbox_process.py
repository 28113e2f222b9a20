"""The simulator as a real process (`python -m mintfax_sandbox`): start-up line, options, clean
shutdown."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable

import httpx
import pytest

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
    ],
)
def test_bad_options_exit_2_with_one_clear_line(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mintfax_sandbox", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_busy_port_is_a_clear_error(sandbox_process: Callable[..., SandboxProcess]) -> None:
    proc = sandbox_process()
    port = proc.handle.url.rsplit(":", 1)[1]
    result = subprocess.run(
        [sys.executable, "-m", "mintfax_sandbox", "--port", port],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "cannot listen" in result.stderr
