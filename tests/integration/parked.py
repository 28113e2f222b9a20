"""Set-up shared by the tests that park a fax whose outcome is unknown and then act on it (the
resolver's lookups, an operator's retry or cancel): the real client against the simulator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from outbox.fax_client import MintfaxClient
from tests.integration.test_submit import Harness, harness  # noqa: F401
from tests.sandbox_fixtures import SandboxHandle


@pytest.fixture
def mintfax(harness: Harness, sandbox: SandboxHandle) -> Iterator[MintfaxClient]:  # noqa: F811
    """The real mintfax client on the test's simulator, as the harness's sender."""
    client = MintfaxClient(sandbox.base_url, lambda: harness.ctx.api_key(), timeout=5)
    harness.ctx.sender = client
    yield client
    client.close()


def park_with_unknown_outcome(
    harness: Harness,  # noqa: F811
    sandbox: SandboxHandle,
    first: dict[str, float],
    ref: str = "r1",
) -> int:
    """A row parked in needs_review after attempts of unknown outcome: the first under the
    faults `first`, the rest in an outage (503 before anything is created)."""
    row = harness.enqueue(ref=ref)
    for attempt in range(harness.ctx.policy.max_attempts):
        sandbox.set_faults(**(first if attempt == 0 else {"error_503": 1.0}))
        harness.dispatch()
        harness.submit(row)
        harness.make_due()
    sandbox.set_faults()
    state = harness.row(row)
    assert (state["status"], state["status_reason"]) == ("needs_review", "unknown_outcome")
    return row
