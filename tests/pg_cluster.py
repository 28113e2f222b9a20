"""A throwaway PostgreSQL cluster of a test's own, which the test may stop and restart without
touching the Postgres that every other test (and engineer) shares: `initdb` + `pg_ctl` from
/usr/lib/postgresql/*/bin on a loopback port, trust authentication, data in a temp directory.
Run as root, the cluster is the `postgres` user's (initdb refuses root)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

HOST = "127.0.0.1"


def _bin_dir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


def available() -> bool:
    """Whether this machine has the server binaries a cluster needs."""
    return _bin_dir() is not None


@dataclass
class PgCluster:
    """One cluster on `port`, its files under `workdir`."""

    workdir: Path
    port: int

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    def url(self, database: str = "postgres") -> str:
        """Its libpq URL (DATABASE_URL)."""
        return f"postgresql://postgres@{HOST}:{self.port}/{database}"

    def init(self) -> None:
        """initdb and start; then wait until it takes connections."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._own(self.workdir)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8")
        self.start()

    def start(self) -> None:
        """Start (again) and wait until it takes connections."""
        options = f"-p {self.port} -k {self.workdir} -c listen_addresses={HOST} -c fsync=off"
        log = str(self.workdir / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start")
        self._wait_accepting()

    def stop(self, mode: str = "fast") -> None:
        """Stop (`fast`: clients disconnected, like a restart by an operator; `immediate`: a
        crash)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def create_database(self, name: str) -> str:
        """CREATE DATABASE `name`; returns its URL."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        """Stop it if it runs and remove its files."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _wait_accepting(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(psycopg.OperationalError),
                psycopg.connect(self.url(), connect_timeout=2),
            ):
                return
            time.sleep(0.05)
        raise AssertionError(f"postgres on port {self.port} did not come up ({self.workdir})")

    def _run(self, program: str, *args: str) -> None:
        directory = _bin_dir()
        assert directory is not None, "no /usr/lib/postgresql/*/bin"
        argv = [str(directory / program), *args]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        subprocess.run(argv, check=True, capture_output=True, timeout=60)

    @staticmethod
    def _own(path: Path) -> None:
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(path, user.pw_uid, user.pw_gid)
