"""Injected failures: what a flaky network and a struggling mintfax look like to a client.

A request's fate is drawn once, from one seeded RNG, so a run with a seed replays the same
sequence of failures for the same sequence of requests:

- `reset`: the connection is reset before any byte of a response (nothing was processed);
- `error_500` / `error_503`: a server error envelope, nothing was processed;
- `commit_then_drop`: the fax IS created and its idempotency key stored, then the connection is
  reset, so the client never sees the 201 (the case idempotency keys exist for);
- `latency_ms`: added processing time (fixed or a `[low, high]` range), spent while the
  idempotency key is held "in progress";
- `webhook_duplicate` / `webhook_reorder`: rates of duplicate and held-back webhook deliveries;
- `burst_429`: the chance that a request starts a 429 burst: for `burst_429_seconds` every
  faulted request is refused with mintfax's 429 and a `Retry-After` counting down to the burst's
  end, however few requests the sliding window holds (what a gateway under load, or a limit
  shared with another system, does to a well-throttled client).

Faults hit `POST /v1/fax` only, unless `all_endpoints` is set (then reset / 500 / 503 / latency hit
every `/v1` request). `/sandbox/*` is never faulted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import struct
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

PROBABILITIES = ("reset", "error_500", "error_503", "commit_then_drop")
_RATES = ("webhook_duplicate", "webhook_reorder", "burst_429")


class FaultSpecError(ValueError):
    """A fault specification that cannot be honoured (the message names the field)."""


@dataclass(frozen=True)
class FaultConfig:
    """Probabilities (0-1) of each fault; all zero means a well-behaved service."""

    reset: float = 0.0
    error_500: float = 0.0
    error_503: float = 0.0
    commit_then_drop: float = 0.0
    latency_ms: tuple[float, float] = (0.0, 0.0)
    webhook_duplicate: float = 0.0
    webhook_reorder: float = 0.0
    burst_429: float = 0.0
    burst_429_seconds: float = 2.0
    all_endpoints: bool = False
    seed: int | None = None

    def as_json(self) -> dict[str, Any]:
        """The configuration as the control API shows it."""
        data = asdict(self)
        data["latency_ms"] = list(self.latency_ms)
        return data

    @classmethod
    def from_mapping(cls, raw: dict[str, Any]) -> FaultConfig:
        """Validate a JSON/CLI mapping; unknown fields and out-of-range values are refused."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise FaultSpecError(f"unknown fault field(s): {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for name in (*PROBABILITIES, *_RATES):
            if name in raw:
                values[name] = _probability(name, raw[name])
        if sum(values.get(name, 0.0) for name in PROBABILITIES) > 1.0:
            raise FaultSpecError("reset + error_500 + error_503 + commit_then_drop must be <= 1")
        if "latency_ms" in raw:
            values["latency_ms"] = _latency(raw["latency_ms"])
        if "burst_429_seconds" in raw:
            seconds = raw["burst_429_seconds"]
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
                raise FaultSpecError("burst_429_seconds must be a number of seconds above 0")
            values["burst_429_seconds"] = float(seconds)
        if "all_endpoints" in raw:
            if not isinstance(raw["all_endpoints"], bool):
                raise FaultSpecError("all_endpoints must be true or false")
            values["all_endpoints"] = raw["all_endpoints"]
        if raw.get("seed") is not None:
            if not isinstance(raw["seed"], int) or isinstance(raw["seed"], bool):
                raise FaultSpecError("seed must be an integer")
            values["seed"] = raw["seed"]
        return cls(**values)


def _probability(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise FaultSpecError(f"{name} must be a probability between 0 and 1")
    return float(value)


def _latency(value: Any) -> tuple[float, float]:
    if isinstance(value, str) and "-" in value:
        value = value.split("-", 1)
    if isinstance(value, list | tuple) and len(value) == 2:
        low, high = (_non_negative(v) for v in value)
        if low > high:
            raise FaultSpecError("latency_ms range must be [low, high] with low <= high")
        return (low, high)
    fixed = _non_negative(value)
    return (fixed, fixed)


def _non_negative(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FaultSpecError("latency_ms must be milliseconds or a [low, high] range") from None
    if isinstance(value, bool) or number < 0:
        raise FaultSpecError("latency_ms must be milliseconds or a [low, high] range")
    return number


def parse_fault_spec(text: str) -> FaultConfig:
    """Parse `--faults`: JSON, or `name=value` pairs separated by commas.

    Example: `reset=0.05,error_503=0.1,latency_ms=20-80,seed=7`.
    """
    text = text.strip()
    if not text:
        return FaultConfig()
    if text.startswith(("{", "[")):
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FaultSpecError(f"--faults is not valid JSON: {exc.msg}") from None
        if not isinstance(raw, dict):
            raise FaultSpecError("--faults JSON must be an object")
        return FaultConfig.from_mapping(raw)
    raw_pairs: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep:
            raise FaultSpecError(f"--faults item {part!r} is not name=value")
        name = name.strip()
        value = value.strip()
        if name == "seed":
            raw_pairs[name] = _int(value)
        elif name == "all_endpoints":
            raw_pairs[name] = value.lower() in ("1", "true", "yes")
        elif name == "latency_ms":
            raw_pairs[name] = value
        else:
            raw_pairs[name] = _float(name, value)
    return FaultConfig.from_mapping(raw_pairs)


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise FaultSpecError("seed must be an integer") from None


def _float(name: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise FaultSpecError(f"{name} must be a number") from None


class Fault(Enum):
    """What happens to one request."""

    NONE = "none"
    RESET = "reset"
    ERROR_500 = "error_500"
    ERROR_503 = "error_503"
    COMMIT_THEN_DROP = "commit_then_drop"


@dataclass(slots=True)
class FaultPlan:
    """The active configuration and its RNG (reseeded whenever the configuration changes)."""

    config: FaultConfig = field(default_factory=FaultConfig)
    rng: random.Random = field(default_factory=random.Random)
    # When the current 429 burst ends (monotonic seconds; 0: none yet).
    burst_until: float = 0.0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.config.seed)

    def draw(self) -> Fault:
        """The fault for the next request (one uniform draw, so seeded runs replay exactly)."""
        c = self.config
        if not (c.reset or c.error_500 or c.error_503 or c.commit_then_drop):
            return Fault.NONE
        u = self.rng.random()
        for fault, p in (
            (Fault.RESET, c.reset),
            (Fault.ERROR_500, c.error_500),
            (Fault.ERROR_503, c.error_503),
            (Fault.COMMIT_THEN_DROP, c.commit_then_drop),
        ):
            if u < p:
                return fault
            u -= p
        return Fault.NONE

    def latency(self) -> float:
        """Added latency for the next request, in seconds."""
        low, high = self.config.latency_ms
        if high <= 0:
            return 0.0
        return (low if low == high else self.rng.uniform(low, high)) / 1000.0

    def burst_remaining(self, now: float) -> float:
        """Seconds left of the 429 burst this request falls in (one starting now, at the
        `burst_429` rate, when none runs); 0.0 when the request is not refused."""
        if now < self.burst_until:
            return self.burst_until - now
        if self.chance(self.config.burst_429):
            self.burst_until = now + self.config.burst_429_seconds
            return self.config.burst_429_seconds
        return 0.0

    def chance(self, rate: float) -> bool:
        """True with probability `rate` (webhook duplicates / reordering)."""
        return rate > 0 and self.rng.random() < rate


def reset_transport(transport: asyncio.Transport) -> None:
    """Cut a connection the way a crashed peer or middlebox does: an RST, no response bytes.

    SO_LINGER 0 turns the close into a reset, so clients see a network error (httpx
    `ReadError`/`RemoteProtocolError`), never an HTTP status.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Already closed by the peer: aborting is all that is left to do.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
