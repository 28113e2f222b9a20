"""`python -m mintfax_sandbox` (and `faxout sandbox`, which forwards its arguments here).

The command line is the simulator's only edge with the environment: `--webhook-secret` falls back
to `FAXOUT_SANDBOX_WEBHOOK_SECRET`, `--control-token` to `FAXOUT_SANDBOX_CONTROL_TOKEN`, and
nothing below this module reads `os.environ`. Bound to anything but loopback (127.0.0.0/8, ::1,
`localhost`), the simulator warns on stderr and its control endpoints require the control token
(`Authorization: Bearer <token>`); when none is given, one is generated and printed once on stderr
(`sandbox control token: ...`), the only place the token is ever written. On loopback the control
endpoints are open unless a token is given. The server
and the app are imported only once the options are valid, so `--help` and bad options are cheap.
Exit codes: 0 after a clean stop (SIGTERM/SIGINT), 1 when the port cannot be bound, 2 for bad
options (one `error:` line per problem on stderr).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import secrets
from typing import Annotated

import typer

from mintfax_sandbox.faults import FaultConfig, FaultSpecError, parse_fault_spec

SECRET_ENV = "FAXOUT_SANDBOX_WEBHOOK_SECRET"  # noqa: S105 (a variable name, not a secret)
CONTROL_TOKEN_ENV = "FAXOUT_SANDBOX_CONTROL_TOKEN"  # noqa: S105 (a variable name, not a secret)
CONTROL_TOKEN_LINE = "sandbox control token: "  # noqa: S105 (the label of the start-up line)

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help and usage errors: no boxes, one line per problem
)


@app.command(help="Run the offline mintfax simulator (API under /v1, control under /sandbox).")
def run(
    port: Annotated[int, typer.Option(help="Port to listen on (0 = any free port).")] = 8765,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    rate_limit_per_minute: Annotated[
        int, typer.Option(help="Requests per key per sliding 60 s window (0 = unlimited).")
    ] = 60,
    rate_limit_window_seconds: Annotated[
        float,
        typer.Option(help="Length of the sliding window (mintfax: 60; shorter only for tests)."),
    ] = 60.0,
    faults: Annotated[
        str,
        typer.Option(
            help="Faults, JSON or name=value pairs: "
            "reset=0.05,error_500=0.05,error_503=0.05,commit_then_drop=0.05,"
            "latency_ms=20-80,webhook_duplicate=0.1,webhook_reorder=0.1,"
            "burst_429=0.001,burst_429_seconds=2,seed=7.",
        ),
    ] = "",
    time_scale: Annotated[
        float, typer.Option(help="Multiplier for simulated delays (300 = realistic minutes).")
    ] = 1.0,
    webhook_signing: Annotated[
        str, typer.Option(help="a = X-Mintfax-Signature (hex); b = Standard Webhooks.")
    ] = "a",
    webhook_secret: Annotated[
        str | None,
        typer.Option(
            envvar=SECRET_ENV,
            show_envvar=True,
            show_default=False,
            help="Account secret (whsec_<base64>) signing deliveries to per-fax webhook_urls; "
            "a fresh one when unset (GET /sandbox/webhook-secret shows it).",
        ),
    ] = None,
    control_token: Annotated[
        str | None,
        typer.Option(
            envvar=CONTROL_TOKEN_ENV,
            show_envvar=True,
            show_default=False,
            help="Token the /sandbox control endpoints require (Authorization: Bearer <token>). "
            "Required on a non-loopback --host, where one is generated and printed once when "
            "unset; on loopback the control endpoints are open unless a token is given.",
        ),
    ] = None,
) -> None:
    problems: list[str] = []
    fault_config = FaultConfig()
    try:
        fault_config = parse_fault_spec(faults)
    except FaultSpecError as exc:
        problems.append(str(exc))
    if webhook_signing not in ("a", "b"):
        problems.append("--webhook-signing must be a or b")
    if rate_limit_per_minute < 0:
        problems.append("--rate-limit-per-minute must be >= 0")
    if rate_limit_window_seconds <= 0:
        problems.append("--rate-limit-window-seconds must be > 0")
    if time_scale < 0:
        problems.append("--time-scale must be >= 0")
    if not 0 <= port <= 65535:
        problems.append("--port must be 0-65535")
    if webhook_secret is not None and not _is_signing_secret(webhook_secret):
        # The value itself is never echoed: it is a secret.
        problems.append(f"--webhook-secret (or {SECRET_ENV}) must be whsec_ followed by base64")
    if control_token is not None and not _is_usable_token(control_token):
        problems.append(
            f"--control-token (or {CONTROL_TOKEN_ENV}) must be printable ASCII without spaces"
        )
    if problems:
        for line in problems:
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(2)

    from mintfax_sandbox.app import create_app
    from mintfax_sandbox.server import serve
    from mintfax_sandbox.state import Sandbox, SandboxConfig

    config = SandboxConfig(
        rate_limit_per_minute=rate_limit_per_minute,
        rate_limit_window_seconds=rate_limit_window_seconds,
        time_scale=time_scale,
        webhook_signing="b" if webhook_signing == "b" else "a",
        faults=fault_config,
    )
    state = Sandbox(config, account_secret=webhook_secret)
    notices: list[str] = []
    if not is_loopback(host):
        notices.append(
            f"warning: the mintfax sandbox is bound to {host}: anyone who can reach it can "
            "change its balance and faults; control endpoints require the control token"
        )
        if control_token is None:
            control_token = secrets.token_urlsafe(32)
            notices.append(CONTROL_TOKEN_LINE + control_token)  # the one place it is written
    app_ = create_app(sandbox=state, control_token=control_token)
    try:
        serve(app_, state.transports, host, port, notices=notices)
    except OSError as exc:
        typer.echo(f"error: cannot listen on {host}:{port}: {exc.strerror}", err=True)
        raise typer.Exit(1) from None


def _is_signing_secret(value: str) -> bool:
    """`whsec_` + base64 of at least one byte: the shape both signing generations can use."""
    prefix, _, encoded = value.partition("_")
    if prefix != "whsec" or not encoded:
        return False
    try:
        return bool(base64.b64decode(encoded, validate=True))
    except (binascii.Error, ValueError):
        return False


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or `localhost`; anything else (0.0.0.0, ::, names) may be reachable."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_usable_token(value: str) -> bool:
    """Sendable as `Authorization: Bearer <token>`: visible ASCII, no spaces, not empty."""
    return bool(value) and all("!" <= c <= "~" for c in value)


def main(argv: list[str] | None = None, prog_name: str = "python -m mintfax_sandbox") -> int:
    """Run the command line with `argv` (default: `sys.argv[1:]`); returns the exit code."""
    try:
        app(args=argv, prog_name=prog_name)
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        typer.echo(str(code), err=True)
        return 1
    return 0
