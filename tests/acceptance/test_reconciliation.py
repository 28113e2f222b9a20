"""Reconciliation at volume (issue 9, "Tests that must exist"): 10,000 webhook events from the
simulator, 30 % of them delivered twice and 20 % held back behind later ones, reach the real
receiver (`faxout webhooks serve`, a process of its own, started by `Stack.start_webhooks`) on a
real database. Every row ends in the simulator's final state (status, pages, error code), and
each event id is recorded exactly once in `fax_events`.

The faxes are created at the simulator with the real client from a few threads, and each row
takes the worker's steps in plain SQL (the events are under test, not the send path): it is
`sending` before the POST and stores its fax id with `submitted` just after the 201, so some
events beat it and wait in `fax_events` for the trigger that applies them, as in production.
Creation is paced so that the simulator, one process, keeps up with the webhooks it sends (past
a few hundred deliveries a second its HTTP client's connection pool falls behind).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import SecretStr
from sqlalchemy import func, select, text

from outbox.fax_client import MintfaxClient
from outbox.models import FaxStatus, fax_outbox
from tests.acceptance.fleet import API_KEY, PDF, Fleet
from workers.single_host.embedded import free_port

pytestmark = pytest.mark.slow

# Magic numbers (mintfax_sandbox/__init__.py) with retries=3, and the events each one yields:
# fax.queued, fax.sending per attempt, fax.retry_scheduled between attempts, then one of
# fax.delivered / fax.failed.
EVENTS_PER_FAX = {
    "+15005550001": 3,  # delivered, 1 page
    "+15005550002": 9,  # busy on all 4 attempts: failed (busy)
    "+15005550004": 5,  # busy, then delivered
    "+15005550005": 9,  # line quality on all 4 attempts: failed (line_quality)
    "+15005550007": 3,  # delivered, 3 pages
    "+15005550008": 3,  # invalid number, terminal on attempt 1: failed (invalid_number)
}
NUMBERS = tuple(EVENTS_PER_FAX)
WANTED_EVENTS = 10_000
FAXES = -(-WANTED_EVENTS * len(NUMBERS) // sum(EVENTS_PER_FAX.values()))  # ceil: >= 10,000
FAXES_PER_SECOND = 40  # ~280 webhook deliveries a second
THREADS = 4

_SENDING = text(
    """
    INSERT INTO fax_outbox (to_number, document, filename, reference, idempotency_key, retries,
                            status, attempts, lease_owner, lease_expires_at, lease_token,
                            first_attempt_at)
    VALUES (:to, :doc, 'doc.pdf', :key, :key, 3, 'sending', 0, 'test',
            now() + interval '1 hour', :token, now())
    RETURNING id
    """
)
_SUBMITTED = text(
    """
    UPDATE fax_outbox SET status = 'submitted', mintfax_fax_id = :fax_id,
        mintfax_status = :mintfax_status, attempts = 1, submitted_at = now(),
        lease_owner = NULL, lease_expires_at = NULL, lease_token = NULL
    WHERE id = :id
    """
)
_SYSTEM_COLUMNS = text("SET LOCAL faxout.allow_system_columns = on")


def _send_and_store(fleet: Fleet, indices: range, per_second: float) -> None:
    """What a worker does for each fax of `indices`, at `per_second`: the row in `sending`,
    the POST, then the fax id stored with `submitted`."""
    with MintfaxClient(fleet.sandbox_url, SecretStr(API_KEY), timeout=30) as client:
        started = time.monotonic()
        for n, i in enumerate(indices):
            wait = started + n / per_second - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            to, key = NUMBERS[i % len(NUMBERS)], f"recon-{i}"
            with fleet.engine.begin() as conn:
                conn.execute(_SYSTEM_COLUMNS)
                row_id = conn.execute(
                    _SENDING, {"to": to, "doc": PDF, "key": key, "token": uuid.uuid4()}
                ).scalar_one()
            result = client.send_fax(
                to=to, document=PDF, filename="doc.pdf", idempotency_key=key, retries=3
            )
            with fleet.engine.begin() as conn:
                conn.execute(_SYSTEM_COLUMNS)
                conn.execute(
                    _SUBMITTED,
                    {"id": row_id, "fax_id": result.fax_id, "mintfax_status": result.status},
                )


def test_ten_thousand_duplicated_and_reordered_events_reach_the_simulators_truth(
    fleet: Fleet,
) -> None:
    fleet.start_sandbox(
        "--rate-limit-per-minute", "0",
        "--faults", "webhook_duplicate=0.3,webhook_reorder=0.2,seed=9",
    )  # fmt: skip
    # A burst must not make the simulator give an event up before the receiver answers.
    fleet.sandbox("config", webhook_max_attempts=12)
    started = time.monotonic()
    # The receiver's address is known before it runs: register it first (every event), so the
    # secret it needs exists, then start it the way an operator does.
    port = free_port()
    url = f"http://127.0.0.1:{port}/webhooks/mintfax"
    with MintfaxClient(fleet.sandbox_url, SecretStr(API_KEY), timeout=10) as client:
        endpoint, secret = client.create_webhook(url)
    assert endpoint["events"] is None  # every event
    assert fleet.stack.start_webhooks(port, secret=secret.get_secret_value()) == url

    with ThreadPoolExecutor(THREADS) as pool:
        shares = [range(t, FAXES, THREADS) for t in range(THREADS)]
        list(pool.map(lambda r: _send_and_store(fleet, r, FAXES_PER_SECOND / THREADS), shares))
    created = time.monotonic() - started

    final = (FaxStatus.DELIVERED, FaxStatus.FAILED)

    def settled() -> bool:
        counts = fleet.counts()
        if sum(counts[s] for s in final) < FAXES:
            return False
        log = fleet.sandbox("webhooks")["data"]
        return all(d["status"] != "pending" for d in log)

    fleet.wait_until(
        settled, timeout=150, what="every row final and every delivery done", interval=1
    )
    elapsed = time.monotonic() - started

    # The simulator's account of what it sent.
    deliveries = fleet.sandbox("webhooks")["data"]
    assert all(d["status"] == "delivered" for d in deliveries), Counter(
        d["status"] for d in deliveries
    )
    sent = {d["event_id"] for d in deliveries}
    copies = Counter(d["event_id"] for d in deliveries)
    assert len(sent) >= WANTED_EVENTS, len(sent)
    duplicated = sum(1 for n in copies.values() if n > 1)
    assert 0.25 < duplicated / len(sent) < 0.35, duplicated / len(sent)

    # The truth: every row holds the simulator's final state.
    truth = {
        f["id"]: (f["status"], f["pages"], f["error_code"]) for f in fleet.sandbox("faxes")["data"]
    }
    assert len(truth) == FAXES
    with fleet.engine.connect() as conn:
        rows = conn.execute(
            select(
                fax_outbox.c.mintfax_fax_id,
                fax_outbox.c.status,
                fax_outbox.c.pages,
                fax_outbox.c.error_code,
                fax_outbox.c.completed_at,
            )
        ).all()
        recorded = conn.execute(
            text("SELECT count(*), count(DISTINCT event_id) FROM fax_events")
        ).one()
        recorded_ids = set(conn.execute(text("SELECT event_id FROM fax_events")).scalars())
        outcomes = dict(
            conn.execute(text("SELECT outcome, count(*) FROM fax_events GROUP BY 1")).all()
        )
        unfinished = conn.execute(
            select(func.count()).where(fax_outbox.c.completed_at.is_(None))
        ).scalar_one()
    mine = {r.mintfax_fax_id: (str(r.status), r.pages, r.error_code) for r in rows}
    wrong = {k: (mine.get(k), v) for k, v in truth.items() if mine.get(k) != v}
    assert not wrong, f"{len(wrong)} rows differ from the simulator, e.g. {list(wrong.items())[:5]}"
    assert unfinished == 0
    assert {s for s, _, _ in truth.values()} == {"delivered", "failed"}
    assert {c for _, _, c in truth.values()} >= {None, "busy", "line_quality", "invalid_number"}

    # Each event id recorded once, and every event the simulator sent is there.
    assert recorded[0] == recorded[1] == len(sent), (recorded, len(sent))
    assert recorded_ids == sent
    # Nothing left waiting for a row; reordering happened (older news arrived after newer).
    assert outcomes.get("pending", 0) == 0, outcomes
    assert outcomes.get("stale", 0) > 0, outcomes

    # The receiver's log names no secret, and it stops cleanly.
    assert fleet.stack.stop("webhooks", grace=15) == 0
    assert secret.get_secret_value() not in fleet.stack.log_text("webhooks")
    print(
        f"\n{FAXES} faxes, {len(sent)} events, {len(deliveries)} deliveries "
        f"({duplicated} events twice), outcomes {outcomes}; "
        f"created in {created:.1f}s, settled in {elapsed:.1f}s"
    )
