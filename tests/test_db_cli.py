"""The `postgres` and `mysql` sources end to end through the `quotad` command, on both ledgers.

The databases are the machine's real PostgreSQL and MariaDB (tests/databases.py);
expected sizes are the servers' own figures, read in the same test. The
servers hold other tests' databases too (the PostgreSQL ledger among them),
so the assertions look only at this test's members.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Ledger
from tests.databases import MYSQL_HOST, MYSQL_PORT, MyObjects, PgObjects, mariadb, pg, tag
from tests.helpers import run, run_json, unattributed_rows
from tests.mailman_server import free_port

__all__ = ["mariadb", "pg"]  # fixtures, used by name

PG_DSN = PgObjects.dsn()


def config_text(pg_dsn: str, mysql_dsn: str) -> str:
    return (
        f'[[sources]]\nname = "pg"\nkind = "postgres"\ndsn = "{pg_dsn}"\nmember_from = "owner"\n'
        f'[[sources]]\nname = "mysql"\nkind = "mysql"\ndsn = "{mysql_dsn}"\n'
    )


def usage(
    capsys: pytest.CaptureFixture[str], config: Path, members: set[str]
) -> dict[str, dict[tuple[str, str, str], int]]:
    """Member -> (source, kind, name) -> bytes from `quotad report --json`, for MEMBERS only."""
    report = run_json(capsys, "--config", str(config), "report", "--json")
    result = {}
    for entry in report:
        resources = {(r["source"], r["kind"], r["name"]): r["bytes"] for r in entry["resources"]}
        assert entry["total"]["bytes"] == sum(resources.values()), entry
        if entry["member"] in members:
            result[entry["member"]] = resources
    return result


def unattributed(report_text: str) -> set[tuple[str, str]]:
    """(source, name) of the "unattributed resources" table of `quotad report`."""
    return {(row[0], row[2]) for row in unattributed_rows(report_text)}


def test_databases_are_charged_and_a_failing_server_keeps_the_earlier_values(
    ledger: Ledger,
    pg: PgObjects,
    mariadb: MyObjects,
    capsys: pytest.CaptureFixture[str],
) -> None:
    t = tag()
    alice, bob = f"alice{t}", f"bob{t}"
    pg.role(alice)
    pg.role(bob)
    alice_pg = pg.database(f"blog_{t}", owner=alice, rows=5_000)
    bob_pg = pg.database(f"wiki_{t}", owner=bob, rows=100)
    alice_my = mariadb.schema(f"{alice}_shop", rows=2_000)
    bob_my = mariadb.schema(f"{bob}_forum", rows=300)
    config = ledger.config_file(config_text(PG_DSN, f"mysql://root@{MYSQL_HOST}:{MYSQL_PORT}/"))

    scans = run_json(capsys, "--config", str(config), "scan", "--json")

    assert [(s["source"], s["kind"], s["status"], s["error"]) for s in scans] == [
        ("pg", "postgres", "complete", None),
        ("mysql", "mysql", "complete", None),
    ]
    expected = {
        alice: {
            ("pg", "postgres_database", alice_pg): pg.size(alice_pg),
            ("mysql", "mysql_database", alice_my): mariadb.size(alice_my),
        },
        bob: {
            ("pg", "postgres_database", bob_pg): pg.size(bob_pg),
            ("mysql", "mysql_database", bob_my): mariadb.size(bob_my),
        },
    }
    assert usage(capsys, config, {alice, bob}) == expected
    code, out, _ = run(capsys, "--config", str(config), "report")
    assert code == 0
    # Databases of the superuser are nobody's; the ledger's own is not even
    # measured.
    assert ("pg", "test") in unattributed(out)
    if ledger.backend == "postgresql":
        ledger_db = ledger.url.rsplit("/", 1)[1]
        assert all(name != ledger_db for _, name in unattributed(out))

    # The databases grow, but neither server can be used: each source fails
    # as a whole and every earlier value stands.
    mariadb.insert(alice_my, "payload", rows=1_000)
    port = free_port()
    down = ledger.config_file(
        config_text(
            f"postgresql://postgres:hunter2secret@127.0.0.1:{port}/test",
            f"mysql://root:hunter2secret@{MYSQL_HOST}:{MYSQL_PORT}/",
        )
    )
    code, out, err = run(capsys, "--config", str(down), "scan", "--json")

    assert code == 1
    results = {s["source"]: s for s in json.loads(out)}
    assert {name: s["status"] for name, s in results.items()} == {"pg": "failed", "mysql": "failed"}
    pg_why = results["pg"]["error"]
    assert pg_why.startswith(f"PostgreSQL 127.0.0.1:{port}/test: cannot connect: ")
    assert "Connection refused" in pg_why
    my_why = (
        f"MySQL {MYSQL_HOST}:{MYSQL_PORT}: cannot connect: Access denied for user "
        f"'root'@'{MYSQL_HOST}' (using password: YES)"
    )
    assert results["mysql"]["error"] == my_why
    assert f"quotad: source pg failed: {pg_why}" in err
    assert f"quotad: source mysql failed: {my_why}" in err
    assert "hunter2secret" not in out + err
    assert usage(capsys, down, {alice, bob}) == expected
    code, out, _ = run(capsys, "--config", str(down), "report")
    assert code == 0
    assert "sources whose last scan did not complete:" in out
    assert my_why in out
