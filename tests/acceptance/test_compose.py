"""The docker compose stack (issue 10, item 1), without Docker: every service of
docker-compose.yml runs its own command as a real local process with the environment compose
would give it (interpolated from .env.example), its hosts mapped to this machine (`postgres` and
`redis` to this test's database and Redis, the other services to free local ports), and each
long-running service's health check, run the same way, must pass. A fax enqueued then reaches
the simulator, so the rehearsal (`docker compose --profile sandbox up`) is complete. Further
tests check the file's rules (one-shot migrate first, exactly one beat, a health check on every
long-running service, basic auth on Flower) and that every environment name it uses is a
setting or a documented container-only variable."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from pydantic import AliasChoices
from sqlalchemy import Engine, select

from outbox.models import fax_outbox
from outbox.settings import Settings
from workers.single_host.embedded import free_port

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
VENV_BIN = Path(sys.executable).parent
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"

# Hosts of the compose network that are images, not commands of ours: mapped to this test's
# own database and Redis.
EXTERNAL_SERVICES = ("postgres", "redis")
# Variables a container reads that are not fax-outbox settings: each must be documented in the
# README's compose section.
CONTAINER_ONLY = (
    "POSTGRES_PASSWORD",
    "REDIS_PASSWORD",
    "FLOWER_BASIC_AUTH",
    "FAXOUT_SANDBOX_CONTROL_TOKEN",
)

# Compose's interpolation: $$, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error},
# ${VAR?error}, $VAR.
_REFERENCE = re.compile(
    r"\$(?:(?P<dollar>\$)|\{(?P<braced>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_]\w*))"
)


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """`value` as compose interpolates it from `env` (its .env file)."""

    def substitute(match: re.Match[str]) -> str:
        if match["dollar"]:
            return "$"
        name = match["braced"] or match["bare"]
        op, arg = match["op"], match["arg"] or ""
        current = env.get(name)
        missing = current is None or (current == "" and bool(op) and op.startswith(":"))
        if op and op.endswith("?") and missing:
            raise AssertionError(f"compose would refuse to start: {name}: {arg}")
        if op and op.endswith("-") and missing:
            return arg
        return current or ""

    return _REFERENCE.sub(substitute, value)


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as compose reads a .env file (comments and blank lines skipped)."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name.strip()] = value.strip()
    return env


def _interpolated(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_interpolated(n, env) for n in node]
    if isinstance(node, dict):
        return {k: _interpolated(v, env) for k, v in node.items()}
    return node


def load_compose() -> dict[str, Any]:
    """docker-compose.yml as compose would run it with .env.example as its .env."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    return _interpolated(raw, read_env_file(ENV_EXAMPLE))  # type: ignore[no-any-return]


def our_services(compose: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The services built from our image (each one of its commands)."""
    return {name: s for name, s in compose["services"].items() if "build" in s}


def container_ports(service: Mapping[str, Any]) -> list[int]:
    """The ports a service listens on inside its container (`expose`, `ports`)."""
    found = [int(p) for p in service.get("expose", [])]
    found += [int(str(p).rsplit(":", 1)[-1]) for p in service.get("ports", [])]
    return found


@dataclass
class LocalStack:
    """The compose services as local processes: the network mapped onto this machine."""

    database_url: str
    redis_url: str
    workdir: Path
    ports: dict[tuple[str, int], int] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def map_value(self, value: str) -> str:
        """A value with the compose network's hosts replaced by this machine's."""
        parts = urlsplit(value)
        if not parts.scheme or not parts.hostname:
            return value
        if parts.hostname == "postgres":
            return self.database_url
        if parts.hostname == "redis":
            return self.redis_url
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
        if port is not None and (parts.hostname, port) in self.ports:
            netloc = f"127.0.0.1:{self.ports[(parts.hostname, port)]}"
            return urlunsplit(parts._replace(netloc=netloc))
        return value

    def map_argument(self, service: str, argument: str) -> str:
        """A command-line argument of `service`: its ports as mapped, loopback for 0.0.0.0."""
        for (owner, inside), outside in self.ports.items():
            if owner == service:
                argument = re.sub(rf"(?<!\d){inside}(?!\d)", str(outside), argument)
        return argument.replace("0.0.0.0", "127.0.0.1")  # noqa: S104 (what we replace)

    def environment(self, service: Mapping[str, Any]) -> dict[str, str]:
        env = {k: self.map_value(str(v)) for k, v in (service.get("environment") or {}).items()}
        return {
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": str(self.workdir),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",  # the image's ENV
            **env,
        }

    def argv(self, name: str, command: list[str] | str) -> list[str]:
        words = shlex.split(command) if isinstance(command, str) else list(command)
        return [self.map_argument(name, word) for word in words]

    def start(self, name: str, service: Mapping[str, Any]) -> None:
        cwd = self.workdir / name
        cwd.mkdir(exist_ok=True)
        log = (self.workdir / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            self.argv(name, service["command"]),
            env=self.environment(service),
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def run(self, name: str, service: Mapping[str, Any]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(name, service["command"]),
            env=self.environment(service),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def healthcheck(
        self, name: str, service: Mapping[str, Any]
    ) -> subprocess.CompletedProcess[str]:
        """Run `service`'s health check once, as Docker would inside its container."""
        test = service["healthcheck"]["test"]
        kind, *rest = test if isinstance(test, list) else ["CMD-SHELL", test]
        if kind == "CMD-SHELL":
            argv = ["sh", "-c", self.map_argument(name, " ".join(rest))]
        else:
            assert kind == "CMD", test
            argv = self.argv(name, rest)
        return subprocess.run(
            argv,
            env=self.environment(service),
            cwd=self.workdir / name,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_all(self, grace: float = 30) -> dict[str, int | None]:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for name, process in self.processes.items():
            try:
                codes[name] = process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
                codes[name] = None
        return codes


@pytest.fixture
def local_stack(database_url: str, redis_url: str, tmp_path: Path) -> Iterator[LocalStack]:
    stack = LocalStack(database_url, redis_url, tmp_path)
    try:
        yield stack
    finally:
        stack.stop_all()


@pytest.mark.timeout(240)
def test_every_service_runs_and_becomes_healthy(local_stack: LocalStack, engine: Engine) -> None:
    compose = load_compose()
    services = our_services(compose)
    for name, service in services.items():
        for port in container_ports(service):
            local_stack.ports[(name, port)] = free_port()
    # The rehearsal's profile: the simulator first (the workers talk to it).
    assert services["sandbox"].get("profiles") == ["sandbox"]
    local_stack.start("sandbox", services["sandbox"])
    _wait_healthy(local_stack, ["sandbox"], services)
    # migrate is one shot and everything else waits for it to succeed.
    migrated = local_stack.run("migrate", services["migrate"])
    assert migrated.returncode == 0, migrated.stderr
    one_shot = {n for n, s in services.items() if s.get("restart") == "no"}
    assert one_shot == {"migrate", "preflight"}
    long_running = [n for n in services if n not in one_shot and n != "sandbox"]
    assert set(long_running) == {"relay", "worker", "beat", "webhooks", "flower", "admin"}
    for name in long_running:
        local_stack.start(name, services[name])
    _wait_healthy(local_stack, long_running, services)

    # Flower's basic auth is on, with the credentials of the env file.
    flower = f"http://127.0.0.1:{local_stack.ports[('flower', 5555)]}"
    user, _, password = read_env_file(ENV_EXAMPLE)["FLOWER_BASIC_AUTH"].partition(":")
    assert httpx.get(f"{flower}/api/workers", timeout=10).status_code == 401
    assert httpx.get(f"{flower}/api/workers", auth=(user, password), timeout=10).is_success

    # So is the admin server's, with its own.
    admin = f"http://127.0.0.1:{local_stack.ports[('admin', 9180)]}"
    env = read_env_file(ENV_EXAMPLE)
    admin_auth = (env["FAXOUT_ADMIN_USER"], env["FAXOUT_ADMIN_PASSWORD"])
    assert httpx.get(f"{admin}/metrics", timeout=10).status_code == 401
    metrics = httpx.get(f"{admin}/metrics", auth=admin_auth, timeout=30)
    assert metrics.is_success and "faxout_" in metrics.text

    # A fax goes through the stack to the simulator: the rehearsal is complete.
    document = local_stack.workdir / "referral.pdf"
    document.write_bytes(PDF)
    enqueue = ["faxout", "enqueue", "--to", "+15005550001", "--file", str(document)]
    enqueued = subprocess.run(
        [*enqueue, "--reference", "compose-1"],
        env=local_stack.environment(services["worker"]),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert enqueued.returncode == 0, enqueued.stderr
    deadline = time.monotonic() + 60
    while True:
        with engine.connect() as conn:
            row = conn.execute(
                select(fax_outbox.c.status, fax_outbox.c.mintfax_fax_id).where(
                    fax_outbox.c.reference == "compose-1"
                )
            ).one()
        if row.mintfax_fax_id is not None:
            break
        assert time.monotonic() < deadline, f"fax not sent: {row}\n{local_stack.log('worker')}"
        time.sleep(0.5)

    # `docker compose run --rm preflight` reaches everything it checks inside the network.
    if importlib.util.find_spec("outbox.preflight") is not None:
        ran = local_stack.run(
            "preflight",
            {**services["preflight"], "command": [*services["preflight"]["command"], "--json"]},
        )
        assert ran.returncode in (0, 1), ran.stderr
        outcomes = {c["name"]: c["outcome"] for c in json.loads(ran.stdout)["checks"]}
        wired = ("postgres", "redis", "migrations", "fleet_alive", "flower", "webhook_signature")
        assert {name: outcomes.get(name) for name in wired} == dict.fromkeys(wired, "passed"), (
            ran.stdout
        )

    codes = local_stack.stop_all()
    # The relay and the receiver exit 0 on SIGTERM; none needs to be killed.
    assert codes["relay"] == 0 and codes["webhooks"] == 0, codes
    assert None not in codes.values(), codes
    # Each health check tells a stopped service at once (a clean stop is recorded, not only
    # the absence of later heartbeats).
    for name in ["sandbox", *long_running]:
        check = local_stack.healthcheck(name, services[name])
        assert check.returncode != 0, f"{name}'s health check passes with {name} stopped"


def _wait_healthy(
    stack: LocalStack, names: list[str], services: Mapping[str, Mapping[str, Any]]
) -> None:
    pending = set(names)
    last: dict[str, str] = {}
    deadline = time.monotonic() + 90
    while pending and time.monotonic() < deadline:
        for name in sorted(pending):
            process = stack.processes[name]
            assert process.poll() is None, f"{name} exited:\n{stack.log(name)[-3000:]}"
            check = stack.healthcheck(name, services[name])
            if check.returncode == 0:
                pending.discard(name)
            last[name] = (check.stdout + check.stderr)[-500:]
        time.sleep(1)
    assert not pending, {n: (last.get(n), stack.log(n)[-2000:]) for n in pending}


def test_the_file_keeps_its_rules() -> None:
    compose = load_compose()
    services = compose["services"]
    ours = our_services(compose)
    # migrate runs once, and every other service of ours waits for its success.
    assert services["migrate"]["restart"] == "no"
    for name, service in ours.items():
        if name in ("migrate", "sandbox"):
            continue
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        if service.get("restart") == "no":  # one shot (preflight): nothing to keep healthy
            continue
        assert "healthcheck" in service, f"{name} has no health check"
        assert service.get("restart") == "unless-stopped", name
    for name in ("postgres", "redis", "sandbox"):
        assert "healthcheck" in services[name], name
    # Exactly one beat: never scaled in the file.
    assert services["beat"].get("deploy", {}).get("replicas", 1) == 1
    assert "scale" not in services["beat"]
    # The API key goes only where mintfax is called; the webhook secret only to the receiver.
    holders = {n for n, s in ours.items() if "MINTFAX_API_KEY" in (s.get("environment") or {})}
    assert holders == {"worker", "beat", "preflight"}
    secrets_ = {n for n, s in ours.items() if "MINTFAX_WEBHOOK_SECRET" in s.get("environment", {})}
    assert secrets_ == {"webhooks", "preflight"}
    assert services["preflight"]["profiles"] == ["tools"]
    # Dockerfile: slim, the [worker] extra, never root.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:\S*-slim", dockerfile.replace("${PYTHON_VERSION}", "3"), re.M)
    assert "fax-outbox[worker]" in dockerfile
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0")
    # The env file is git-ignored (and kept out of the image); its example is not.
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT, check=False)
    assert ignored.returncode == 0
    example = subprocess.run(["git", "check-ignore", "-q", ".env.example"], cwd=ROOT, check=False)
    assert example.returncode == 1
    assert ".env" in (ROOT / ".dockerignore").read_text().split()


def _settings_names() -> set[str]:
    names: set[str] = set()
    for info in Settings.model_fields.values():
        alias = info.validation_alias
        if isinstance(alias, str):
            names.add(alias)
        elif isinstance(alias, AliasChoices):
            names.update(a for a in alias.choices if isinstance(a, str))
    return names


def _names_used() -> set[str]:
    text = COMPOSE_FILE.read_text()
    used = {m["braced"] or m["bare"] for m in _REFERENCE.finditer(text) if not m["dollar"]}
    for service in yaml.safe_load(text)["services"].values():
        used.update((service.get("environment") or {}).keys())
    used.update(read_env_file(ENV_EXAMPLE))
    return used


def test_every_environment_name_is_a_setting_or_documented() -> None:
    settings = _settings_names()
    readme = (ROOT / "README.md").read_text()
    compose_section = readme[readme.index("## Running it with docker compose") :]
    images = {"POSTGRES_USER", "POSTGRES_DB"}  # the postgres image's own, fixed in the file
    unknown = []
    for name in sorted(_names_used() - settings - images):
        if name not in CONTAINER_ONLY or f"`{name}`" not in compose_section:
            unknown.append(name)
    assert unknown == [], f"neither a setting nor a documented container-only variable: {unknown}"
    # And the other way round: a compose variable the settings do not know would be ignored.
    for name in _names_used():
        if name.startswith(("FAXOUT_", "MINTFAX_")) and name not in CONTAINER_ONLY:
            assert name in settings, name


def test_interpolation_follows_compose() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} $$SET $SET", env) == (
        "x d  d $SET x"
    )
    with pytest.raises(AssertionError, match="UNSET: needed"):
        interpolate("${UNSET:?needed}", env)
    with pytest.raises(AssertionError, match="EMPTY"):
        interpolate("${EMPTY:?needed}", env)
