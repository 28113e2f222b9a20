"""`faxout webhooks ...` without the `[worker]` extra: one line naming it, exit 2, nothing run."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from workers import cli


@pytest.mark.parametrize(
    "argv",
    [
        ["webhooks", "serve", "--port", "1"],
        ["webhooks", "register", "--url", "https://h.example.com/x"],
        ["webhooks", "list"],
    ],
)
def test_a_webhooks_command_without_the_worker_extra_names_it(
    monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    monkeypatch.setitem(cli._EXTRA_MODULES, "worker", ("starlette", "no_such_module_for_faxout"))
    done = CliRunner().invoke(cli.app, argv)
    assert done.exit_code == 2
    command = " ".join(argv[:2])
    assert f"`faxout {command}` needs the [worker] extra" in " ".join(done.output.split())


def test_the_worker_extra_check_covers_the_receiver_modules() -> None:
    assert {"starlette", "uvicorn", "standardwebhooks"} <= set(cli._EXTRA_MODULES["worker"])
