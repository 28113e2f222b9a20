"""What a fleet pause's alert tells the operator to do."""

from __future__ import annotations

import pytest

from outbox.models import PauseReason
from outbox.pause import _message


def test_the_balance_pause_alert_says_a_top_up_is_enough() -> None:
    # The chaos run's 402 alert said "top up the balance, then run `faxout resume`", but the
    # pause ends by itself after a top-up (the balance.topup event, or the balance watch):
    # an operator following it would resume by hand what was already resuming.
    text = _message(PauseReason.INSUFFICIENT_BALANCE, {})
    assert "resumes by itself" in text
    assert "then run `faxout resume`" not in text
    assert "FAXOUT_RESUME_BALANCE_CENTS" in text


@pytest.mark.parametrize(
    "reason",
    [PauseReason.AUTHENTICATION_FAILED, PauseReason.API_KEY_MISMATCH],
)
def test_pauses_only_an_operator_can_end_still_say_faxout_resume(reason: PauseReason) -> None:
    assert "then run `faxout resume`" in _message(reason, {})
