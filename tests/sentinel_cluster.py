"""A Sentinel-managed Redis on this machine for tests: a primary, a replica and sentinels,
each a real `redis-server` process (sentinels with `--sentinel`), with a failover detected
within about a second (`down-after-milliseconds` 1000)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

MASTER = "faxmaster"
HOST = "127.0.0.1"
# Each xdist worker its own ports: two failover tests at once on one set of ports elected,
# killed and demoted each other's servers. Servers from 6600: 6400-6419 belong to the outage
# and chaos tests' own servers (at 6390 + 10 per worker, worker 1 once met one on 6400).
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
_OFFSET = 10 * (int(_WORKER[2:]) if _WORKER[2:].isdigit() else 0)


@dataclass
class SentinelCluster:
    """Handles on the processes; ports of the two servers and of the sentinels."""

    workdir: Path
    server_ports: tuple[int, int] = (6600 + _OFFSET, 6601 + _OFFSET)
    sentinel_ports: tuple[int, ...] = (26390 + _OFFSET, 26391 + _OFFSET, 26392 + _OFFSET)
    password: str | None = None  # the Redis servers' (requirepass / masterauth)
    sentinel_password: str | None = None  # the sentinels' own
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    clients: dict[int, redis.Redis] = field(default_factory=dict)

    def url(self, master: str = MASTER, db: int = 0, password: str | None = None) -> str:
        """The `redis+sentinel://` URL of this cluster (REDIS_URL)."""
        secret = self.password if password is None else password
        auth = f":{secret}@" if secret else ""
        hosts = ",".join(f"{HOST}:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{auth}{hosts}/{master}/{db}"

    def start(self) -> None:
        """Primary, replica (in sync), then the sentinels (agreeing on the primary)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        primary, replica = self.server_ports
        self._server(primary)
        self._server(replica, "--replicaof", HOST, str(primary))
        self._wait(lambda: self._replica_in_sync(replica), 20, "the replica to sync")
        self.start_sentinels()

    def start_sentinels(self) -> None:
        """Start the sentinels (again, after `stop_sentinels`: their files kept what they
        learnt) and wait until each knows the primary and a healthy replica."""
        primary = self.server_ports[0]
        quorum = len(self.sentinel_ports) // 2 + 1
        for port in self.sentinel_ports:
            conf = self.workdir / f"sentinel-{port}.conf"
            if conf.exists():
                self._spawn(f"sentinel-{port}", "redis-server", str(conf), "--sentinel")
                continue
            lines = [
                f"port {port}",
                f"bind {HOST}",
                f"dir {self.workdir}",
                f"sentinel monitor {MASTER} {HOST} {primary} {quorum}",
                f"sentinel down-after-milliseconds {MASTER} 1000",
                f"sentinel failover-timeout {MASTER} 5000",
                f"sentinel parallel-syncs {MASTER} 1",
            ]
            if self.password:
                lines.append(f"sentinel auth-pass {MASTER} {self.password}")
            if self.sentinel_password:
                lines.append(f"requirepass {self.sentinel_password}")
            conf.write_text("\n".join(lines) + "\n")
            self._spawn(f"sentinel-{port}", "redis-server", str(conf), "--sentinel")
        for port in self.sentinel_ports:
            self._wait(lambda p=port: self._sentinel_sees_replica(p), 20, f"sentinel {port}")

    def _server(self, port: int, *extra: str) -> None:
        args = ["--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.workdir), "--dbfilename", f"dump-{port}.rdb"]
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        self._spawn(f"redis-{port}", "redis-server", *args, *extra)
        self._wait(lambda: self._pings(port), 10, f"redis {port}")

    def _spawn(self, name: str, *argv: str) -> None:
        log = (self.workdir / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def server(self, port: int) -> redis.Redis:
        """A plain client of one server (not following failovers), closed by `stop`."""
        return self._client(port, self.password)

    def sentinel(self, port: int) -> redis.Redis:
        """A client of one sentinel, closed by `stop`."""
        return self._client(port, self.sentinel_password)

    def _client(self, port: int, password: str | None) -> redis.Redis:
        if port not in self.clients:
            self.clients[port] = redis.Redis(
                host=HOST, port=port, password=password, socket_timeout=2, socket_connect_timeout=2
            )
        return self.clients[port]

    def master_port(self) -> int | None:
        """The primary's port as the first sentinel that answers sees it."""
        for port in self.sentinel_ports:
            try:
                answer = self.sentinel(port).sentinel_get_master_addr_by_name(MASTER)
            except redis.ConnectionError:
                continue
            if isinstance(answer, tuple):
                return int(answer[1])
        return None

    def kill_primary(self) -> int:
        """kill -9 the current primary; returns its port."""
        port = self.master_port()
        assert port is not None
        process = self.processes[f"redis-{port}"]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        return port

    def failover(self) -> int:
        """`SENTINEL FAILOVER`: the primary is demoted to a replica (it stays up and answers
        READONLY); returns its port."""
        port = self.master_port()
        assert port is not None
        deadline = time.monotonic() + 15
        while True:
            try:
                self.sentinel(self.sentinel_ports[0]).sentinel_failover(MASTER)
                return port
            except redis.ResponseError as exc:
                # NOGOODSLAVE until the sentinel has seen the replica answer for a while.
                if "NOGOODSLAVE" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def wait_for_new_primary(self, old_port: int, timeout: float = 60) -> int:
        """Until the sentinels name another primary and it takes writes; returns its port."""
        found: list[int] = []

        def promoted() -> bool:
            port = self.master_port()
            if port is None or port == old_port:
                return False
            try:
                role = self.server(port).execute_command("ROLE")  # type: ignore[no-untyped-call]
            except redis.ConnectionError:
                return False
            if role[0] != b"master":
                return False
            found.append(port)
            return True

        self._wait(promoted, timeout, "a new primary")
        return found[-1]

    def stop_sentinel(self, port: int) -> None:
        """kill -9 one sentinel."""
        self._kill(f"sentinel-{port}")

    def stop_sentinels(self) -> None:
        """kill -9 every sentinel (the servers keep running)."""
        for port in self.sentinel_ports:
            self._kill(f"sentinel-{port}")

    def stop(self) -> None:
        """kill -9 everything still running, close the clients."""
        for name in list(self.processes):
            self._kill(name)
        for client in self.clients.values():
            client.close()

    def _kill(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)

    def _pings(self, port: int) -> bool:
        try:
            return bool(self.server(port).ping())
        except redis.RedisError:
            return False

    def _replica_in_sync(self, port: int) -> bool:
        info = self.server(port).info("replication")
        return info.get("master_link_status") == "up"

    def _sentinel_sees_replica(self, port: int) -> bool:
        try:
            replicas = self.sentinel(port).sentinel_slaves(MASTER)
        except redis.RedisError:
            return False
        return any("s_down" not in r.get("flags", "") for r in replicas)

    def _wait(self, condition: object, timeout: float, what: str) -> None:
        assert callable(condition)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout}s waiting for {what} ({self.workdir})")
