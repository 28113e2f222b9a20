"""`faxout list|show|retry|cancel` as an operator runs them (issue 11, item 3): real
subprocesses against a running fleet (relay, Celery worker, the sandbox over HTTP). A retried
fax is sent again exactly once with its key; one whose unknown outcome outlived mintfax's 24 h
window is refused until --new-key; bulk forms ask first."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from tests.acceptance.fleet import PDF, Fleet

pytestmark = pytest.mark.timeout(240)

FAXOUT = Path(sys.executable).with_name("faxout")
NUMBER = "+15005550001"


def faxout(fleet: Fleet, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**fleet.stack.env, "COLUMNS": "200"}
    env.pop("MINTFAX_API_KEY", None)  # these commands need only the database
    done = subprocess.run(
        [str(FAXOUT), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    return done


def insert(fleet: Fleet, reference: str, **columns: Any) -> int:
    """A row in the state `columns` describe (as test fixtures may: system columns allowed)."""
    names = ["to_number", "document", "filename", "reference", *columns]
    values = [
        f":{n}" if n not in ("first_attempt_at", "next_attempt_at") else columns[n] for n in names
    ]
    params = {"to_number": NUMBER, "document": PDF, "filename": "a.pdf", "reference": reference}
    params |= {k: v for k, v in columns.items() if k not in ("first_attempt_at", "next_attempt_at")}
    with fleet.engine.begin() as conn:
        conn.execute(text("SET LOCAL faxout.allow_system_columns = on"))
        return int(
            conn.execute(
                text(
                    f"INSERT INTO fax_outbox ({', '.join(names)}) "
                    f"VALUES ({', '.join(values)}) RETURNING id"
                ),
                params,
            ).scalar_one()
        )


def parked(fleet: Fleet, reference: str, first_post_ago: str) -> int:
    """A row parked after five attempts of unknown outcome (none reached the sandbox)."""
    return insert(
        fleet,
        reference,
        status="needs_review",
        status_reason="unknown_outcome",
        outcome_unknown=True,
        attempts=5,
        first_attempt_at=f"now() - interval '{first_post_ago}'",
    )


def row(fleet: Fleet, fax_id: int) -> dict[str, Any]:
    with fleet.engine.connect() as conn:
        return dict(
            conn.execute(text("SELECT * FROM fax_outbox WHERE id = :id"), {"id": fax_id})
            .one()
            ._mapping
        )


def test_operators_list_show_retry_and_cancel_a_running_fleet(fleet: Fleet) -> None:
    fleet.start_sandbox("--rate-limit-per-minute", "0")
    fleet.start(workers=1, concurrency=2, beat=False)
    safe = parked(fleet, "parked-safe", "1 hour")
    late = parked(fleet, "parked-late", "25 hours")
    later = [
        insert(fleet, f"later-{n}", next_attempt_at="now() + interval '1 day'") for n in range(2)
    ]

    listed = faxout(fleet, "list", "--status", "needs_review", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["id"] for r in rows] == [late, safe]
    assert {r["to"] for r in rows} == {"+1500*****01"}
    table = faxout(fleet, "list")
    assert "+1500*****01" in table.stdout and NUMBER not in table.stdout
    assert str(later[1]) in table.stdout

    # Past the window: refused, with the reason and the way out; nothing changes.
    refused = faxout(fleet, "retry", str(late))
    assert refused.returncode == 1
    assert "24 h idempotency window" in refused.stderr and "--new-key" in refused.stderr
    assert row(fleet, late)["status"] == "needs_review"

    # Inside the window: back to pending with its key, sent once by the fleet.
    done = faxout(fleet, "retry", str(safe), "--as", "tester")
    assert done.returncode == 0, done.stderr
    assert f"fax {safe}: needs_review -> pending" in done.stdout
    fleet.wait_until(lambda: row(fleet, safe)["status"] == "submitted", 30, "the retried fax")
    faxes = fleet.sandbox("faxes")["data"]
    assert [f["idempotency_key"] for f in faxes] == [row(fleet, safe)["idempotency_key"]]

    shown = faxout(fleet, "show", str(safe))
    assert shown.returncode == 0, shown.stderr
    assert NUMBER in shown.stdout  # in full: the operator checks what was dialled
    assert "retry by tester (operator:" in shown.stdout
    detail = json.loads(faxout(fleet, "show", str(safe), "--json").stdout)
    assert detail["fax"]["mintfax_fax_id"] == faxes[0]["id"]
    assert [a["outcome"] for a in detail["attempts"]] == ["submitted"]
    assert detail["attempts"][0]["request_id"]
    assert detail["actions"][0]["actor"].startswith("tester (operator:")
    assert faxout(fleet, "show", "999999").returncode == 1

    # Accepted by mintfax: not cancellable.
    accepted = faxout(fleet, "cancel", str(safe))
    assert accepted.returncode == 1 and "mintfax accepted it" in accepted.stderr

    # Bulk cancel asks; "no" changes nothing, --yes goes ahead.
    declined = faxout(fleet, "cancel", "--status", "pending", stdin="n\n")
    assert declined.returncode == 1
    assert "Cancel 2 fax(es) in pending?" in declined.stderr
    assert {row(fleet, i)["status"] for i in later} == {"pending"}
    confirmed = faxout(fleet, "cancel", "--status", "pending", stdin="y\n")
    assert confirmed.returncode == 0, confirmed.stderr
    assert "2 done, 0 refused" in confirmed.stdout
    assert {row(fleet, i)["status"] for i in later} == {"cancelled"}

    # The late one, knowingly, as a new fax: bulk with --yes, sent by the fleet.
    resent = faxout(fleet, "retry", "--status", "needs_review", "--new-key", "--yes")
    assert resent.returncode == 0, resent.stderr
    assert "sent again as a NEW fax" in resent.stdout and "twice" in resent.stdout
    by_reference = json.loads(faxout(fleet, "show", "--reference", "parked-late", "--json").stdout)
    new, old = by_reference
    assert old["fax"]["id"] == late and old["fax"]["status"] == "cancelled"
    fleet.wait_until(lambda: row(fleet, new["fax"]["id"])["status"] == "submitted", 30, "resend")
    assert len(fleet.sandbox("faxes")["data"]) == 2
    assert faxout(fleet, "retry", str(late), "--new-key").returncode == 1  # once per fax


def test_bad_input_is_refused_in_one_line(fleet: Fleet) -> None:
    for args in (
        ("list", "--status", "lost"),
        ("list", "--since", "yesterday"),
        ("retry",),
        ("retry", "1", "--status", "pending"),
        ("cancel", "--status", "delivered", "--yes"),
        ("show",),
    ):
        done = faxout(fleet, *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert done.stderr.startswith("error:"), (args, done.stderr)
