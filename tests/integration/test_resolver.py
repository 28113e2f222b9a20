"""Unknown outcomes resolved (issue 9, item 3), on real Postgres and Redis, with the real client
against the simulator over HTTP: a row parked because its attempts may have created a fax is
looked up at mintfax by its key; found, it takes the fax id and state; certainly absent inside
the 24 h window, it is sent again with the same key; otherwise it stays for a human."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis
from sqlalchemy import Engine, text

from outbox.alerts import Alerter
from outbox.fax_client import MintfaxClient
from outbox.reconcile import Reconciler, observation_from_resource
from outbox.resolver import UnknownOutcomeResolver
from outbox.submit import Outcome
from outbox.throttle import FleetThrottle
from tests.integration import parked
from tests.integration.parked import park_with_unknown_outcome
from tests.integration.test_submit import Harness, harness  # noqa: F401
from tests.sandbox_fixtures import SandboxHandle

mintfax = parked.mintfax  # the fixture, for this module's tests


@pytest.fixture
def resolver(
    harness: Harness,  # noqa: F811
    mintfax: MintfaxClient,
    engine: Engine,
    redis_url: str,
) -> Iterator[UnknownOutcomeResolver]:
    client = redis.Redis.from_url(redis_url)
    reconciler = Reconciler(engine, Alerter(harness.clock), None, harness.clock)
    yield UnknownOutcomeResolver(
        engine,
        mintfax,
        reconciler,
        harness.clock,
        throttle=FleetThrottle(client, 60_000),
        sends_horizon=0,
    )
    client.close()


def test_a_fax_created_by_a_dropped_answer_is_found_and_closed(
    harness: Harness,  # noqa: F811
    sandbox: SandboxHandle,
    resolver: UnknownOutcomeResolver,
    engine: Engine,
) -> None:
    # The first POST creates the fax and its answer is lost; then an outage outlasts the
    # attempts.
    row = park_with_unknown_outcome(harness, sandbox, {"commit_then_drop": 1.0})
    [created] = sandbox.faxes()

    report = resolver.run_once()
    assert (report.looked_up, report.found) == (1, 1)
    state = harness.row(row)
    assert state["mintfax_fax_id"] == created["id"]
    assert state["status"] in ("submitted", "delivered")

    # What mintfax says once the carrier is done closes it, as any poll would.
    final = sandbox.wait_for_fax(created["id"])
    observation = observation_from_resource(final)
    assert observation is not None
    with engine.begin() as conn:
        Reconciler(engine, Alerter(harness.clock), None, harness.clock).apply_observation(
            conn, observation
        )
    assert harness.row(row)["status"] == "delivered"
    assert len(sandbox.faxes()) == 1  # one fax at mintfax, whatever happened


def test_a_fax_mintfax_certainly_never_created_is_sent_again_with_its_key(
    harness: Harness,  # noqa: F811
    sandbox: SandboxHandle,
    resolver: UnknownOutcomeResolver,
) -> None:
    # Every attempt was answered 503 before anything was created.
    row = park_with_unknown_outcome(harness, sandbox, {"error_503": 1.0})
    assert sandbox.faxes() == []

    assert resolver.run_once().resent == 1
    state = harness.row(row)
    assert (state["status"], state["attempts"], state["outcome_unknown"]) == ("pending", 0, False)
    harness.dispatch()
    assert harness.submit(row) is Outcome.SUBMITTED
    [fax] = sandbox.faxes()
    assert fax["idempotency_key"] == state["idempotency_key"]


def test_past_the_24_h_window_an_absent_fax_is_left_for_a_human(
    harness: Harness,  # noqa: F811
    sandbox: SandboxHandle,
    resolver: UnknownOutcomeResolver,
    engine: Engine,
) -> None:
    row = park_with_unknown_outcome(harness, sandbox, {"error_503": 1.0})
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE fax_outbox SET first_attempt_at = :t WHERE id = :id"),
            {"t": harness.clock.now() - timedelta(hours=25), "id": row},
        )
    report = resolver.run_once()
    assert (report.looked_up, report.resent, report.left) == (1, 0, 1)
    assert harness.row(row)["status"] == "needs_review"
    assert sandbox.faxes() == []
