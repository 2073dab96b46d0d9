"""The `postgres` scanner against the machine's real PostgreSQL 15.

Every test makes its own roles and databases (tests/databases.py) and looks
only at those: the server also holds the ledger tests' databases. Expected
sizes are the server's own `pg_database_size()`, read in the same test.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from scanners.base import (
    DetailValue,
    Measurement,
    OptionError,
    ResourceFailure,
    ScanContext,
    SourceError,
)
from scanners.postgres import PostgresScanner
from tests.databases import (
    PasswordRefusingPostgres,
    PgObjects,
    SilentServer,
    pg,
    refusing_postgres,
    silent_server,
    tag,
)
from tests.mailman_server import free_port

__all__ = ["pg", "refusing_postgres", "silent_server"]  # fixtures, used by name

KIND = "postgres_database"


def scanner(**options: object) -> PostgresScanner:
    return PostgresScanner.from_options("pg", {"dsn": PgObjects.dsn(), **options}, Path())


def scan(
    only: set[str], context: ScanContext | None = None, **options: object
) -> dict[str, Measurement | ResourceFailure]:
    """Name -> item for the databases named in ONLY (the server holds others too)."""
    items = list(scanner(**options).scan(context=context))
    names = [item.name for item in items]
    assert len(names) == len(set(names)), names
    assert all(item.kind == KIND for item in items)
    return {item.name: item for item in items if item.name in only}


def measured(items: dict[str, Measurement | ResourceFailure]) -> dict[str, tuple[str | None, int]]:
    """Name -> (member, bytes), asserting that nothing failed."""
    result = {}
    for name, item in items.items():
        assert isinstance(item, Measurement), item
        assert item.files == 0
        result[name] = (item.member, item.bytes)
    return result


def detail(item: Measurement | ResourceFailure) -> Mapping[str, DetailValue]:
    assert isinstance(item, Measurement), item
    return item.detail


def test_owner_rule_charges_the_owning_role_exactly_pg_database_size(pg: PgObjects) -> None:
    t = tag()
    alice, bob = pg.role(f"alice{t}"), pg.role(f"bob{t}")
    odd = pg.role(f"Odd Role {t}")
    blog = pg.database(f"blog_{t}", owner=alice, rows=20_000)
    shop = pg.database(f"shop_{t}", owner=alice, rows=500)
    wiki = pg.database(f"wiki_{t}", owner=bob, rows=3_000)
    orphan = pg.database(f"orphan_{t}", owner=odd)
    admin = pg.database(f"admin_{t}")  # owned by the superuser that made it
    mine = {blog, shop, wiki, orphan, admin}

    items = scan(mine)

    sizes = {name: pg.size(name) for name in mine}
    assert measured(items) == {
        blog: (alice, sizes[blog]),
        shop: (alice, sizes[shop]),
        wiki: (bob, sizes[wiki]),
        orphan: (None, sizes[orphan]),
        admin: (None, sizes[admin]),
    }
    # The rows are really there: a database with 20,000 rows is bigger.
    assert sizes[blog] > sizes[shop] + 1_000_000
    assert detail(items[blog]) == {"owner": alice}
    assert detail(items[orphan]) == {
        "owner": odd,
        "unattributed": f"the owner {odd!r} is not a member name",
    }
    assert detail(items[admin])["unattributed"] == "the owner 'postgres' is a superuser"


def test_prefix_rule_and_the_members_exceptions(pg: PgObjects) -> None:
    t = tag()
    blog = pg.database(f"m{t}_blog", rows=1_000)
    shop = pg.database(f"m{t}_shop_2")  # split on the first "_" only
    given = pg.database(f"n{t}_given")
    nobody = pg.database(f"n{t}_shared")
    plain = pg.database(f"plain{t}")
    shouting = pg.database(f"M{t}_X")
    mine = {blog, shop, given, nobody, plain, shouting}

    items = scan(
        mine, member_from="prefix", members={given: f"other{t}", nobody: "", "absent": "x"}
    )

    sizes = {name: pg.size(name) for name in mine}
    assert measured(items) == {
        blog: (f"m{t}", sizes[blog]),
        shop: (f"m{t}", sizes[shop]),
        given: (f"other{t}", sizes[given]),
        nobody: (None, sizes[nobody]),
        plain: (None, sizes[plain]),
        shouting: (None, sizes[shouting]),
    }
    assert detail(items[nobody])["unattributed"] == "the members table says nobody"
    assert detail(items[plain])["unattributed"] == 'no "_" in the name, so no member prefix'
    assert detail(items[shouting])["unattributed"] == f"the prefix 'M{t}' is not a member name"


def test_templates_and_excluded_databases_are_left_out(pg: PgObjects) -> None:
    t = tag()
    kept = pg.database(f"kept_{t}")
    skipped = pg.database(f"skipped_{t}")
    template = pg.database(f"template_{t}")
    pg.admin.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE true").format(sql.Identifier(template)))
    locked = pg.database(f"locked_{t}", rows=100)
    pg.admin.execute(
        sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(locked))
    )
    mine = {kept, skipped, template, locked, "postgres", "template0", "template1"}

    by_default = scan(mine)
    assert set(by_default) == {kept, skipped, locked}
    # Sizing needs no connection to the database itself.
    assert measured({locked: by_default[locked]}) == {locked: (None, pg.size(locked))}

    excluding = scan(mine, exclude=[skipped, "no such database"])
    assert set(excluding) == {kept, locked, "postgres"}


def test_hostile_names_are_measured_as_data(pg: PgObjects) -> None:
    t = tag()
    owner = pg.role(f"owner{t}")
    names = {
        pg.database(f'a"b; drop database test; -- {t}', owner=owner, rows=10),
        pg.database(f"q'uote\\back\\'slash {t}", owner=owner),
        pg.database(f"ünïcødé ❄ {t}", owner=owner),
        pg.database(f"{t}_$1 %s {{}} ?", owner=owner),
    }

    items = scan(names)

    assert measured(items) == {name: (owner, pg.size(name)) for name in names}
    assert pg.size("test") > 0  # still there


def test_the_ledgers_own_database_is_left_out(pg: PgObjects) -> None:
    t = tag()
    ledger = pg.database(f"ledger_{t}")
    other = pg.database(f"other_{t}")
    mine = {ledger, other}

    def seen(url: str | None) -> set[str]:
        return set(scan(mine, ScanContext(ledger_url=url)))

    assert seen(f"postgresql+psycopg://postgres@127.0.0.1:5432/{ledger}") == {other}
    assert seen(f"postgresql://quotad:secret@localhost/{ledger}") == {other}
    assert seen(f"postgresql+psycopg:///{ledger}?host=/var/run/postgresql") == {other}
    # Another server, another port, another engine: nothing to leave out.
    assert seen(f"postgresql+psycopg://postgres@db1.invalid:5432/{ledger}") == mine
    assert seen(f"postgresql+psycopg://postgres@127.0.0.1:5433/{ledger}") == mine
    assert seen("sqlite:////var/lib/quotad/quotad.db") == mine
    assert seen(None) == mine


DropHook = Callable[[], None]


def drop_after_listing(monkeypatch: pytest.MonkeyPatch, hook: DropHook) -> None:
    """Run HOOK between the scanner's listing and its sizing of the databases."""
    original = PostgresScanner._sizes

    def sizes(self: PostgresScanner, conn: Any, databases: Any) -> Any:
        hook()
        return original(self, conn, databases)

    monkeypatch.setattr(PostgresScanner, "_sizes", sizes)


@pytest.mark.parametrize("superuser", [True, False], ids=["superuser", "pg_read_all_stats"])
def test_a_database_dropped_while_scanning_is_gone_not_failed(
    pg: PgObjects, monkeypatch: pytest.MonkeyPatch, superuser: bool
) -> None:
    t = tag()
    owner = pg.role(f"owner{t}")
    stays = pg.database(f"stays_{t}", owner=owner, rows=100)
    goes = pg.database(f"goes_{t}", owner=owner, rows=100)
    # A role that is not a superuser gets an error, not NULL, for a
    # database dropped under it: the scanner then sizes one by one.
    user = "postgres" if superuser else pg.role(f"scan{t}", "IN ROLE pg_read_all_stats")
    drop_after_listing(monkeypatch, lambda: pg.drop(goes))

    items = scan({stays, goes}, dsn=PgObjects.dsn(user=user))

    assert measured(items) == {stays: (owner, pg.size(stays))}


def test_a_database_the_scanner_may_not_size_fails_alone(pg: PgObjects) -> None:
    t = tag()
    owner = pg.role(f"owner{t}")
    open_db = pg.database(f"open_{t}", owner=owner, rows=100)
    closed = pg.database(f"closed_{t}", owner=owner)
    pg.admin.execute(
        sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(sql.Identifier(closed))
    )
    weak = pg.role(f"weak{t}")

    items = scan({open_db, closed}, dsn=PgObjects.dsn(user=weak))

    assert measured({open_db: items[open_db]}) == {open_db: (owner, pg.size(open_db))}
    failure = items[closed]
    assert isinstance(failure, ResourceFailure)
    assert failure.member == owner
    assert failure.error == (
        f"cannot size database {closed!r}: permission denied for database {closed} "
        "(grant the scanner's role pg_read_all_stats, or CONNECT on the database)"
    )


def test_a_server_that_is_down_fails_the_source() -> None:
    port = free_port()
    dsn = f"postgresql://postgres:hunter2secret@127.0.0.1:{port}/test"
    with pytest.raises(SourceError) as caught:
        list(PostgresScanner.from_options("pg", {"dsn": dsn}, Path()).scan())
    message = str(caught.value)
    assert message.startswith(f"PostgreSQL 127.0.0.1:{port}/test: cannot connect: ")
    assert "Connection refused" in message
    assert "hunter2secret" not in message
    assert "\n" not in message


def test_an_unknown_user_or_database_fails_the_source(pg: PgObjects) -> None:
    t = tag()
    dsn = PgObjects.dsn(user=f"nobody{t}", password="hunter2secret")
    with pytest.raises(SourceError) as caught:
        list(PostgresScanner.from_options("pg", {"dsn": dsn}, Path()).scan())
    assert str(caught.value) == (
        "PostgreSQL 127.0.0.1:5432/test: cannot connect: connection failed: connection to server "
        f'at "127.0.0.1", port 5432 failed: FATAL:  role "nobody{t}" does not exist'
    )

    dsn = PgObjects.dsn(dbname=f"nowhere{t}")
    with pytest.raises(SourceError, match=f'database "nowhere{t}" does not exist'):
        list(PostgresScanner.from_options("pg", {"dsn": dsn}, Path()).scan())


def test_a_refused_password_fails_the_source_without_showing_it(
    refusing_postgres: PasswordRefusingPostgres,
) -> None:
    port = refusing_postgres.port
    dsn = f"postgresql://quotad:hunter2secret@127.0.0.1:{port}/postgres?sslmode=disable"
    with pytest.raises(SourceError) as caught:
        list(PostgresScanner.from_options("pg", {"dsn": dsn}, Path()).scan())
    assert refusing_postgres.passwords[-1] == b"hunter2secret"  # it was sent, and refused
    assert str(caught.value) == (
        f"PostgreSQL 127.0.0.1:{port}/postgres: cannot connect: connection failed: connection "
        f'to server at "127.0.0.1", port {port} failed: FATAL:  password authentication failed '
        'for user "quotad"'
    )


def test_a_server_that_never_answers_times_out(silent_server: SilentServer) -> None:
    dsn = f"host=127.0.0.1 port={silent_server.port} user=postgres password=hunter2secret"
    scanner = PostgresScanner.from_options("pg", {"dsn": dsn, "timeout": "2s"}, Path())
    with pytest.raises(SourceError) as caught:
        list(scanner.scan())
    assert str(caught.value) == (
        f"PostgreSQL 127.0.0.1:{silent_server.port}: no connection within 2 s (timeout)"
    )


@pytest.mark.parametrize(
    ("options", "key", "problem"),
    [
        ({}, "dsn", "is required"),
        ({"dsn": "host=db1 password=hunter2secret dbname"}, "dsn", "not a libpq connection"),
        ({"member_from": "grants"}, "member_from", 'must be one of "owner", "prefix"'),
        ({"members": {"db": "Not A Member"}}, "members.db", "must be a member name"),
        ({"members": {"db": 3}}, "members.db", 'or "" for nobody'),
        ({"exclude": "postgres"}, "exclude", "must be a list of strings"),
        ({"timeout": "0s"}, "timeout", "must be more than 0 seconds"),
        ({"schedule_typo": 1}, "schedule_typo", "unknown key"),
    ],
)
def test_option_errors_name_the_key(options: dict[str, object], key: str, problem: str) -> None:
    raw: dict[str, object] = {"dsn": "host=127.0.0.1 dbname=postgres", **options}
    if not options:
        del raw["dsn"]
    with pytest.raises(OptionError) as caught:
        PostgresScanner.from_options("pg", raw, Path())
    assert caught.value.key == key
    assert problem in caught.value.problem
    assert "hunter2secret" not in str(caught.value)


def test_scanner_connections_are_read_only(pg: PgObjects) -> None:
    scanner_ = scanner()
    with scanner_._connect() as conn:
        row = conn.execute("SHOW default_transaction_read_only").fetchone()
        assert row == ("on",)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("CREATE TABLE quotad_must_not_exist (x int)")
    del pg
