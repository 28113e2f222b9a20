"""The sandbox account's money, as mintfax documents it, in integer cents.

Submitting places a hold (the scenario's page count times the page price: available -> held);
delivery captures the actual cost and gives back what the estimate over-held; failure releases
the hold (failures are never charged). A hold that cannot be covered is `InsufficientBalance`
(402, nothing created). `balance.low` fires once per cycle when available drops below 20 % of
the last top-up (or of the amount last set); a top-up or a set balance starts a new cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

LOW_BALANCE_FRACTION = 0.2

EmitEvent = Callable[[str, dict[str, Any]], None]


class InsufficientBalance(Exception):
    """The available balance cannot cover a hold (the HTTP layer answers 402)."""

    def __init__(self, available: int, required: int) -> None:
        super().__init__(f"available {available} < required {required}")
        self.available = available
        self.required = required


class Ledger:
    """Available and held cents, holds and their settlement, and the `balance.low` cycle."""

    def __init__(self, initial: int, emit: EmitEvent) -> None:
        self.available = initial
        self.held = 0
        self._last_topup = initial
        self._low_fired = False
        self._emit = emit

    def balance(self) -> dict[str, int]:
        """`GET /v1/account/balance`."""
        return {"available": self.available, "held": self.held}

    def hold(self, amount: int) -> None:
        """Move `amount` from available to held, or raise `InsufficientBalance`."""
        if self.available < amount:
            raise InsufficientBalance(self.available, amount)
        self.available -= amount
        self.held += amount
        self._check_low()

    def capture(self, held: int, cost: int) -> None:
        """Settle a delivered fax: charge `cost`, give back the rest of its hold."""
        self.held -= held
        self.available += held - cost
        if cost > held:
            self._check_low()

    def release(self, held: int) -> None:
        """Settle a failed fax: its whole hold goes back."""
        self.held -= held
        self.available += held

    def set_available(self, amount: int) -> None:
        """Set available cents; a new `balance.low` cycle is measured against it."""
        self.available = amount
        self._new_cycle(amount)

    def top_up(self, amount: int) -> None:
        """Add credits and fire `balance.topup` (a new `balance.low` cycle begins)."""
        self.available += amount
        self._new_cycle(amount)
        self._emit("balance.topup", {**self._event_data(), "amount": amount})

    def _new_cycle(self, reference: int) -> None:
        self._last_topup = reference
        self._low_fired = False

    def _event_data(self) -> dict[str, Any]:
        return {"available": self.available, "held": self.held, "currency": "USD"}

    def _check_low(self) -> None:
        threshold = LOW_BALANCE_FRACTION * self._last_topup
        if not self._low_fired and self.available < threshold:
            self._low_fired = True
            self._emit("balance.low", {**self._event_data(), "threshold": int(threshold)})
