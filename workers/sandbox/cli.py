"""`faxout sandbox`: the simulator as a process (for acceptance tests, the demo and users).

Heavy imports happen inside the command, so registering it costs other `faxout` commands nothing.
"""

from __future__ import annotations

from typing import Annotated

import typer


def sandbox(
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
            "latency_ms=20-80,webhook_duplicate=0.1,webhook_reorder=0.1,seed=7.",
        ),
    ] = "",
    time_scale: Annotated[
        float, typer.Option(help="Multiplier for simulated delays (300 = realistic minutes).")
    ] = 1.0,
    webhook_signing: Annotated[
        str, typer.Option(help="a = X-Mintfax-Signature (hex); b = Standard Webhooks.")
    ] = "a",
) -> None:
    """Run the offline mintfax simulator (generation A API under /v1, control under /sandbox)."""
    from workers.sandbox.app import create_app
    from workers.sandbox.faults import FaultSpecError, parse_fault_spec
    from workers.sandbox.server import serve
    from workers.sandbox.state import Sandbox, SandboxConfig

    problems = []
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
    if problems:
        for line in problems:
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(2)
    config = SandboxConfig(
        rate_limit_per_minute=rate_limit_per_minute,
        rate_limit_window_seconds=rate_limit_window_seconds,
        time_scale=time_scale,
        webhook_signing="b" if webhook_signing == "b" else "a",
        faults=fault_config,
    )
    state = Sandbox(config)
    try:
        serve(create_app(sandbox=state), state, host, port)
    except OSError as exc:
        typer.echo(f"error: cannot listen on {host}:{port}: {exc.strerror}", err=True)
        raise typer.Exit(1) from None
