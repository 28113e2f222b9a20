"""Retention asks mintfax to delete its copy (`FAXOUT_DELETE_AT_MINTFAX`): the real client
against the simulator over HTTP, on real Postgres and Redis."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

import pytest
import redis
from pydantic import SecretStr
from sqlalchemy import Engine, text

from outbox import repository
from outbox.clock import DatabaseClock
from outbox.fax_client import MintfaxClient
from outbox.retention import DAY_SECONDS, RetentionPolicy, RetentionService
from outbox.throttle import FleetThrottle
from tests.sandbox_fixtures import SMALL_PDF, SandboxHandle

POLICY = RetentionPolicy(document_age=0, delete_at_mintfax=True)
# The simulator refuses every key but a sandbox one (401).
WRONG_KEY = "fx_live_not_the_sandbox_key"


def _clock(engine: Engine) -> DatabaseClock:
    def read() -> datetime:
        with engine.connect() as conn:
            return repository.database_now(conn)

    return DatabaseClock(read)


def _client(sandbox: SandboxHandle, key: str | None = None) -> MintfaxClient:
    return MintfaxClient(sandbox.base_url, lambda: SecretStr(key or sandbox.api_key), timeout=5)


def _sent(sandbox: SandboxHandle, client: MintfaxClient, n: int, *, wait: bool = True) -> list[str]:
    ids = []
    for i in range(n):
        result = client.send_fax(
            to="+15005550001",
            document=SMALL_PDF + str(i).encode(),
            filename="a.pdf",
            idempotency_key=f"k-{i}-{id(client)}",
            retries=0,
        )
        if wait:
            sandbox.wait_for_fax(result.fax_id)
        ids.append(result.fax_id)
    return ids


def _rows(engine: Engine, fax_ids: list[str], *, status: str = "delivered") -> list[int]:
    """One outbox row per mintfax fax id, final a year ago."""
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL faxout.allow_system_columns = on"))
        return list(
            conn.execute(
                text(
                    """
                    INSERT INTO fax_outbox (to_number, document, filename, reference, status,
                                            mintfax_fax_id, submitted_at, final_at)
                    SELECT '+15005550001', convert_to(f, 'UTF8'), 'a.pdf', 'ref-' || f,
                           CAST(:status AS fax_status), f, now(), now() - interval '1 year'
                    FROM unnest(CAST(:ids AS text[])) AS f
                    RETURNING id
                    """
                ),
                {"ids": fax_ids, "status": status},
            ).scalars()
        )


def _deleted(engine: Engine) -> dict[int, bool]:
    with engine.connect() as conn:
        return dict(
            conn.execute(text("SELECT id, mintfax_deleted_at IS NOT NULL FROM fax_outbox")).all()
        )


@pytest.fixture
def client(sandbox: SandboxHandle) -> Iterator[MintfaxClient]:
    with _client(sandbox) as c:
        yield c


def test_copies_are_deleted_at_mintfax_once_our_bytes_are_gone(
    engine: Engine, sandbox: SandboxHandle, client: MintfaxClient
) -> None:
    fax_ids = _sent(sandbox, client, 3)
    rows = _rows(engine, [*fax_ids, "00000000-0000-4000-8000-000000000000"])  # last: unknown
    service = RetentionService(engine, _clock(engine), POLICY, client=client)
    report = service.run_once()
    assert report.documents_removed == 4
    assert report.mintfax_deleted == 4  # the unknown one answered 404: nothing left there
    assert _deleted(engine) == dict.fromkeys(rows, True)
    assert sandbox.stats()["faxes_deleted"] == 3
    assert all(f["deleted"] for f in sandbox.faxes())
    assert service.run_once().mintfax_deleted == 0  # done once, never asked again
    deletes = sandbox.stats()["requests_by_path"]["DELETE /v1/fax/{id}"]
    assert deletes == 4


def test_a_fax_not_final_at_mintfax_waits_and_others_go_on(
    engine: Engine, sandbox_factory: Callable[..., SandboxHandle]
) -> None:
    slow = sandbox_factory(time_scale=1000.0)  # the carrier takes minutes
    with _client(slow) as client:
        [in_progress] = _sent(slow, client, 1, wait=False)
        # A row we hold final (cancelled, say) whose fax mintfax is still working on.
        [waiting] = _rows(engine, [in_progress], status="failed")
        service = RetentionService(engine, _clock(engine), POLICY, client=client)
        report = service.run_once()
    assert report.documents_removed == 1
    assert report.mintfax_refused == 1 and report.mintfax_deleted == 0
    assert _deleted(engine) == {waiting: False}
    assert slow.stats()["faxes_deleted"] == 0


def test_a_wrong_key_stops_the_step_and_records_nothing(
    engine: Engine, sandbox: SandboxHandle, client: MintfaxClient
) -> None:
    fax_ids = _sent(sandbox, client, 2)
    rows = _rows(engine, fax_ids)
    with _client(sandbox, WRONG_KEY) as wrong:
        report = RetentionService(engine, _clock(engine), POLICY, client=wrong).run_once()
    assert report.documents_removed == 2 and report.mintfax_deleted == 0
    assert report.mintfax_refused == 0  # not held against the faxes
    assert _deleted(engine) == dict.fromkeys(rows, False)
    assert sandbox.stats()["requests_by_path"].get("DELETE /v1/fax/{id}") == 1  # stopped at once
    # With the right key the next pass does it.
    assert (
        RetentionService(engine, _clock(engine), POLICY, client=client).run_once().mintfax_deleted
        == 2
    )


def test_mintfax_down_stops_the_step_until_the_next_pass(
    engine: Engine, sandbox: SandboxHandle, client: MintfaxClient
) -> None:
    fax_ids = _sent(sandbox, client, 2)
    _rows(engine, fax_ids)
    sandbox.set_faults(error_503=1.0, all_endpoints=True)
    first = RetentionService(engine, _clock(engine), POLICY, client=client).run_once()
    assert first.mintfax_deleted == 0 and first.mintfax_refused == 0
    sandbox.set_faults()
    assert (
        RetentionService(engine, _clock(engine), POLICY, client=client).run_once().mintfax_deleted
        == 2
    )


def test_rows_wait_for_mintfax_before_they_are_deleted(
    engine: Engine, sandbox: SandboxHandle, client: MintfaxClient
) -> None:
    fax_ids = _sent(sandbox, client, 2)
    _rows(engine, fax_ids)
    policy = RetentionPolicy(document_age=0, row_age=DAY_SECONDS, delete_at_mintfax=True)
    with _client(sandbox, WRONG_KEY) as wrong:
        first = RetentionService(engine, _clock(engine), policy, client=wrong).run_once()
    assert first.rows_deleted == 0 and first.mintfax_deleted == 0  # mintfax still holds them
    second = RetentionService(engine, _clock(engine), policy, client=client).run_once()
    assert second.mintfax_deleted == 2 and second.rows_deleted == 0  # deleted there first
    third = RetentionService(engine, _clock(engine), policy, client=client).run_once()
    assert third.rows_deleted == 2
    assert sandbox.stats()["faxes_deleted"] == 2


def test_deletions_take_fleet_throttle_tokens_and_never_wait(
    engine: Engine, sandbox: SandboxHandle, client: MintfaxClient, redis_url: str
) -> None:
    fax_ids = _sent(sandbox, client, 5)
    _rows(engine, fax_ids)
    r = redis.Redis.from_url(redis_url)
    try:
        throttle = FleetThrottle(r, 60, burst=2, key_prefix="faxout:test-retention")
        service = RetentionService(engine, _clock(engine), POLICY, client=client, throttle=throttle)
        report = service.run_once()
    finally:
        r.close()
    assert report.mintfax_deleted == 2  # the burst; the rest waits for the next pass
    assert sandbox.stats()["faxes_deleted"] == 2


def test_no_deletions_while_sends_are_due(
    engine: Engine, sandbox: SandboxHandle, client: MintfaxClient
) -> None:
    fax_ids = _sent(sandbox, client, 1)
    _rows(engine, fax_ids)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO fax_outbox (to_number, document, filename, reference) "
                "VALUES ('+15005550001', 'x', 'a.txt', 'due-now')"
            )
        )
    report = RetentionService(engine, _clock(engine), POLICY, client=client).run_once()
    assert report.documents_removed == 1 and report.mintfax_deleted == 0
    assert sandbox.stats()["faxes_deleted"] == 0


def test_a_404_alone_is_believed_only_from_mintfax_s_api(
    engine: Engine, sandbox: SandboxHandle
) -> None:
    unknown = "00000000-0000-4000-8000-000000000000"
    [row] = _rows(engine, [unknown])
    # MINTFAX_BASE_URL without /v1: every path answers 404, a deletion's included.
    with MintfaxClient(sandbox.url, lambda: SecretStr(sandbox.api_key), timeout=5) as wrong:
        report = RetentionService(engine, _clock(engine), POLICY, client=wrong).run_once()
    assert report.mintfax_deleted == 0 and _deleted(engine) == {row: False}
    # The right URL: the 404 is mintfax's own (its balance answers), so nothing is left there.
    with _client(sandbox) as right:
        report = RetentionService(engine, _clock(engine), POLICY, client=right).run_once()
    assert report.mintfax_deleted == 1 and _deleted(engine) == {row: True}
    assert sandbox.stats()["requests_by_path"]["GET /v1/account/balance"] == 1


def test_deletions_at_mintfax_are_one_pass_at_a_time(
    engine: Engine, sandbox: SandboxHandle, client: MintfaxClient, database_url: str
) -> None:
    import psycopg

    fax_ids = _sent(sandbox, client, 2)
    _rows(engine, fax_ids)
    with psycopg.connect(database_url, autocommit=True) as other_pass:
        other_pass.execute("SELECT pg_advisory_lock(7246012)")  # another pass is at it
        busy = RetentionService(engine, _clock(engine), POLICY, client=client).run_once()
    assert busy.documents_removed == 2 and busy.mintfax_deleted == 0
    assert (
        RetentionService(engine, _clock(engine), POLICY, client=client).run_once().mintfax_deleted
        == 2
    )
