"""mintfax's per-key rate limit: a sliding 60 s window, as the API gateway enforces it.

A sliding log (one timestamp per admitted request) rather than fixed buckets, because mintfax
documents a sliding window and the project's fleet throttle must be tested against exactly that:
a burst at the end of one minute and the start of the next is refused here as it is in live.
Rejected requests are not logged, so hammering a 429 does not extend the wait. The clock is the
real monotonic clock (injectable for unit tests) so the limit agrees with workers over real time.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

WINDOW_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The verdict on one request and the values of the `X-RateLimit-*` headers."""

    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int
    retry_after: int

    def headers(self) -> list[tuple[bytes, bytes]]:
        """`X-RateLimit-*` (and `Retry-After` on a refusal) as raw ASGI header pairs."""
        pairs = [
            (b"x-ratelimit-limit", str(self.limit).encode()),
            (b"x-ratelimit-remaining", str(self.remaining).encode()),
            (b"x-ratelimit-reset", str(self.reset_seconds).encode()),
        ]
        if not self.allowed:
            pairs.append((b"retry-after", str(self.retry_after).encode()))
        return pairs


class SlidingWindowLimiter:
    """At most `limit` admitted requests per key in any `window` seconds (0 = unlimited)."""

    def __init__(
        self,
        limit: int,
        window: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self._window = window
        self._clock = clock
        self._log: dict[str, deque[float]] = {}

    def acquire(self, key: str) -> RateDecision | None:
        """Admit or refuse one request for `key`; None when the limiter is switched off."""
        if self.limit <= 0:
            return None
        now = self._clock()
        log = self._log.get(key)
        if log is None:
            log = self._log[key] = deque()
        horizon = now - self._window
        while log and log[0] <= horizon:
            log.popleft()
        if len(log) >= self.limit:
            # The oldest admitted request leaving the window frees the next slot.
            wait = max(1, math.ceil(log[0] + self._window - now))
            return RateDecision(False, self.limit, 0, wait, wait)
        log.append(now)
        reset = max(1, math.ceil(log[0] + self._window - now))
        return RateDecision(True, self.limit, self.limit - len(log), reset, 0)

    def set_limit(self, limit: int) -> None:
        """Change the limit at runtime; the requests already in the window still count."""
        self.limit = limit

    def clear(self) -> None:
        """Forget every window (sandbox reset)."""
        self._log.clear()
