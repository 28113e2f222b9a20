"""`mintfax_sandbox.cli.main` in this process: exit codes and the program name it is given.

Only invocations that stop before serving are run here; tests/sandbox/test_process.py runs the
simulator as a real process.
"""

from __future__ import annotations

import pytest

from mintfax_sandbox.cli import main


def test_help_names_the_program_it_was_called_as(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"], prog_name="faxout sandbox") == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage: faxout sandbox [OPTIONS]")
    for option in (
        "--port",
        "--host",
        "--rate-limit-per-minute",
        "--rate-limit-window-seconds",
        "--faults",
        "--time-scale",
        "--webhook-signing",
        "--webhook-secret",
        "--control-token",
    ):
        assert option in out


def test_the_default_program_name_is_the_module(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert capsys.readouterr().out.startswith("Usage: python -m mintfax_sandbox")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--port", "abc"], "--port"),
        (["--no-such-option"], "--no-such-option"),
        (["--faults", "reset=2"], "reset"),
        (["--webhook-signing", "x"], "--webhook-signing"),
    ],
)
def test_bad_options_return_2_instead_of_exiting(
    capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    assert main(argv) == 2
    assert needle in capsys.readouterr().err
