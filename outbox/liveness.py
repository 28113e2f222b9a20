"""Liveness: which processes of the fleet are alive, and one alert when a role has none.

Each long-running process (the relay, beat, every Celery worker node, every webhook receiver)
publishes a heartbeat to Postgres every few seconds (`Heart.beat`): one row per process,
upserted by a random instance id drawn when it starts, with its role, name, hostname and pid,
`started_at` and `seen_at` on the database's clock, so a host whose wall clock is wrong is
neither taken for dead nor for alive, and ages are measured on one clock. Postgres rather than
Redis: heartbeats are seen by the whole fleet and survive a Redis flush or restart.

A dead process cannot report its own death, and a dead beat cannot check anything, so the
relay, beat and every worker each check every role that matters (`LivenessWatch`, after each
of their beats): when no process of `relay` (or `beat`) has been seen for
`FAXOUT_LIVENESS_ALERT_SECONDS`, the first checker to notice opens the role's down episode (one
row; a unique index makes two checkers at once open one) and records its one alert in the same
transaction. The episode ends when a process of the role beats again.

Public API: `heartbeats(conn)`, `alive_roles(conn, within_seconds=...)`, `Heart`,
`LivenessWatch`. The core install can use it (`faxout status`, `faxout alive`): the alert
machinery (`outbox.alerts`, the `[worker]` extra) is imported only by the watch.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine

from outbox import repository
from outbox.clock import Clock, sql_now
from outbox.models import LIVENESS_ROLES

if TYPE_CHECKING:
    from outbox.alerts import Alert, Alerter

log = logging.getLogger("faxout.liveness")

ROLES = LIVENESS_ROLES
# The roles without which the fleet stops silently: no relay, nothing is sent; no beat, no
# lease is rescued, no pause healed, no alert retried, nothing polled.
WATCHED_ROLES = ("relay", "beat")
# A process that stopped cleanly is forgotten after an hour; one that went silent (a crash, a
# lost host) after a day, so that `faxout status` still shows what died overnight.
FORGET_STOPPED_SECONDS = 3600.0
FORGET_SILENT_SECONDS = 86_400.0


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """One process of the fleet as its heartbeats describe it (times on the database's clock).

    `age_seconds` is the time since its last heartbeat; `stopped_at` is set when it shut down
    cleanly.
    """

    role: str
    process: str
    hostname: str
    pid: int
    started_at: datetime
    seen_at: datetime
    age_seconds: float
    stopped_at: datetime | None = None

    @property
    def stopped(self) -> bool:
        """Whether the process said goodbye (a clean shutdown)."""
        return self.stopped_at is not None


def heartbeats(conn: Connection, *, now: datetime | None = None) -> list[Heartbeat]:
    """Every process the fleet remembers, by role and name, with its age.

    `now` (tests) replaces the database's clock for the ages.
    """
    return [
        Heartbeat(
            role=row["role"],
            process=row["process"],
            hostname=row["hostname"],
            pid=row["pid"],
            started_at=row["started_at"],
            seen_at=row["seen_at"],
            age_seconds=float(row["age_seconds"]),
            stopped_at=row["stopped_at"],
        )
        for row in repository.heartbeat_rows(conn, now=now)
    ]


def alive_roles(
    conn: Connection,
    *,
    within_seconds: float,
    hostname: str | None = None,
    now: datetime | None = None,
) -> set[str]:
    """The roles with a running process whose last heartbeat is younger than `within_seconds`
    (on `hostname` only, when given): what `faxout alive` and `faxout preflight` ask."""
    return repository.live_roles(conn, within_seconds=within_seconds, hostname=hostname, now=now)


def process_identity() -> tuple[str, int]:
    """This process's hostname and pid."""
    return socket.gethostname(), os.getpid()


class Heart:
    """The heartbeat of one process: `beat()` every few seconds, `stop()` on a clean exit."""

    def __init__(
        self,
        engine: Engine,
        role: str,
        process: str,
        clock: Clock,
        *,
        hostname: str | None = None,
        pid: int | None = None,
    ) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown liveness role {role!r} (one of {', '.join(ROLES)})")
        default_host, default_pid = process_identity()
        self.engine = engine
        self.role = role
        self.process = process
        self.hostname = hostname or default_host
        self.pid = pid if pid is not None else default_pid
        # Drawn per start: a restarted container keeps its hostname and its pid 1.
        self.instance = uuid.uuid4()
        self._clock = clock

    def __repr__(self) -> str:
        return f"Heart({self.role} {self.process})"

    def beat(self) -> None:
        """Record that this process is alive now. Raises the database's error when unreachable."""
        with self.engine.begin() as conn:
            repository.beat_heartbeat(
                conn,
                instance=self.instance,
                role=self.role,
                process=self.process,
                hostname=self.hostname,
                pid=self.pid,
                now=sql_now(self._clock),
            )

    def stop(self) -> None:
        """Record a clean shutdown: the process no longer counts as alive."""
        with self.engine.begin() as conn:
            repository.stop_heartbeat(conn, self.instance, now=sql_now(self._clock))


@dataclass(frozen=True, slots=True)
class WatchResult:
    """What one `LivenessWatch.run_once` did: roles whose down episode it opened or ended."""

    opened: tuple[str, ...] = ()
    ended: tuple[str, ...] = ()


class LivenessWatch:
    """Checks, from one live process, that every watched role has a live process.

    `checker` is the checking process's own heartbeat instance: it judges only once it has
    itself been up for `alert_after` seconds, so a fleet that is starting (or a checker that
    restarted) does not alert before the role had the time to beat.
    """

    def __init__(
        self,
        engine: Engine,
        alerter: Alerter,
        clock: Clock,
        *,
        checker: uuid.UUID,
        alert_after: float,
        roles: Sequence[str] = WATCHED_ROLES,
    ) -> None:
        self._engine = engine
        self._alerter = alerter
        self._clock = clock
        self._checker = checker
        self._alert_after = alert_after
        self._roles = tuple(roles)

    def run_once(self) -> WatchResult:
        """Open (with its one alert) or end each watched role's down episode, as due."""
        opened: list[str] = []
        ended: list[str] = []
        alert_ids: list[int] = []
        now = sql_now(self._clock)
        for role in self._roles:
            with self._engine.begin() as conn:
                back = repository.end_down_episode(conn, role=role, now=now)
                if back is not None:
                    ended.append(role)
                    log.warning(
                        "liveness: a %s is alive again (down since %s, episode %d)",
                        role,
                        f"{back[1]:%Y-%m-%d %H:%M:%S}",
                        back[0],
                        extra={"action": "liveness.role_back", "liveness_role": role},
                    )
                    continue
                episode = repository.open_down_episode(
                    conn, role=role, threshold=self._alert_after, checker=self._checker, now=now
                )
                if episode is None:
                    continue
                episode_id, last_seen = episode
                opened.append(role)
                alert_id = self._alerter.record(conn, _down_alert(role, episode_id, last_seen))
                if alert_id is not None:
                    alert_ids.append(alert_id)
        if alert_ids:
            self._alerter.deliver(self._engine, alert_ids)
        self.prune()
        return WatchResult(tuple(opened), tuple(ended))

    def prune(self) -> int:
        """Forget processes long gone (see `FORGET_*_SECONDS`); how many were forgotten."""
        with self._engine.begin() as conn:
            return repository.prune_heartbeats(
                conn,
                stopped_after=FORGET_STOPPED_SECONDS,
                silent_after=FORGET_SILENT_SECONDS,
                now=sql_now(self._clock),
            )


def _down_alert(role: str, episode_id: int, last_seen: datetime | None) -> Alert:
    from outbox.alerts import Alert  # the [worker] extra: only the watch raises alerts

    seen = "never seen" if last_seen is None else f"last seen {last_seen:%Y-%m-%d %H:%M:%S}Z"
    consequence = {
        "relay": "no fax is being sent",
        "beat": "no lease is rescued, no pause healed, no alert retried, nothing polled",
    }.get(role, "")
    return Alert(
        kind="role_down",
        dedupe_key=f"role_down:{role}:{episode_id}",
        message=f"no {role} process is alive ({seen}): {consequence}".rstrip(": "),
        severity="critical",
        detail={
            "role": role,
            "episode": episode_id,
            "last_seen_at": None if last_seen is None else last_seen.isoformat(),
        },
    )


def describe(beats: Iterable[Heartbeat], *, alive_within: float) -> list[str]:
    """One line per process for people: role, name, host and pid, state and age."""
    lines = []
    for hb in beats:
        if hb.stopped:
            state = f"stopped {hb.age_seconds:.0f}s ago"
        elif hb.age_seconds <= alive_within:
            state = f"alive, seen {hb.age_seconds:.1f}s ago"
        else:
            state = f"SILENT for {hb.age_seconds:.0f}s"
        lines.append(f"{hb.role:<8} {hb.process} ({hb.hostname} pid {hb.pid}): {state}")
    return lines
