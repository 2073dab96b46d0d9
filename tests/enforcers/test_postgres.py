"""The `postgres` enforcer against the machine's real PostgreSQL 15.

Every test makes its own roles and databases (tests/databases.py). The
member's own login does the writing and the attempts to undo the
restriction, as a member would; the catalogs are compared as text (owners
and ACLs, NULL included) before restrict and after lift.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from quotad.enforcers.base import EnforcerError, Target
from quotad.enforcers.postgres import PostgresEnforcer, hold_role
from scanners.base import OptionError
from scanners.postgres import PostgresScanner
from tests.databases import PasswordRefusingPostgres, PgObjects, pg, refusing_postgres, tag

__all__ = ["pg", "refusing_postgres"]  # fixtures, used by name

# Everything restrict could change in one database, as text.
_STATE = {
    "database": "SELECT datname, datdba::regrole::text, datacl::text FROM pg_database"
    " WHERE datname = current_database()",
    "schemas": "SELECT nspname, nspowner::regrole::text, nspacl::text FROM pg_namespace"
    " ORDER BY nspname",
    "relations": "SELECT c.oid::regclass::text, c.relkind, c.relowner::regrole::text,"
    " c.relacl::text FROM pg_class AS c ORDER BY c.oid",
    "columns": "SELECT attrelid::regclass::text, attname, attacl::text FROM pg_attribute"
    " WHERE attacl IS NOT NULL ORDER BY attrelid, attnum",
    "large objects": "SELECT oid, lomowner::regrole::text, lomacl::text"
    " FROM pg_largeobject_metadata ORDER BY oid",
    "functions": "SELECT oid::regprocedure::text, proowner::regrole::text, proacl::text"
    " FROM pg_proc WHERE proacl IS NOT NULL OR proowner <> 10 ORDER BY oid",
    "types": "SELECT oid::regtype::text, typowner::regrole::text, typacl::text FROM pg_type"
    " WHERE typacl IS NOT NULL OR typowner <> 10 ORDER BY oid",
    "default privileges": "SELECT defaclrole::regrole::text, defaclnamespace, defaclobjtype,"
    " defaclacl::text FROM pg_default_acl ORDER BY 1, 2, 3",
}


def state(db: str) -> dict[str, list[tuple[Any, ...]]]:
    """Owners and ACLs of everything in DB (and of DB itself), as the server prints them."""
    with psycopg.connect(PgObjects.dsn(db), autocommit=True) as conn:
        return {name: conn.execute(query).fetchall() for name, query in _STATE.items()}


def changes(
    before: dict[str, list[tuple[Any, ...]]], after: dict[str, list[tuple[Any, ...]]]
) -> dict[str, list[tuple[str, tuple[Any, ...]]]]:
    """What differs between two states, row by row: empty when they are the same."""
    diff: dict[str, list[tuple[str, tuple[Any, ...]]]] = {}
    for name, old in before.items():
        new = after[name]
        rows = [("-", r) for r in old if r not in new] + [("+", r) for r in new if r not in old]
        if rows or old != new:
            diff[name] = rows
    return diff


def enforcer(**options: object) -> PostgresEnforcer:
    scanner = PostgresScanner.from_options("pg", {"dsn": PgObjects.dsn()}, Path())
    return PostgresEnforcer.from_options(scanner, options, Path())


def target(member: str, db: str) -> Target:
    return Target(member=member, source="pg", kind="postgres_database", name=db, bytes=0)


@contextmanager
def session(db: str, user: str) -> Iterator[psycopg.Connection[Any]]:
    """USER's own login on DB, as the member would connect."""
    with psycopg.connect(PgObjects.dsn(db, user=user), autocommit=True) as conn:
        yield conn


def denied(conn: psycopg.Connection[Any], statement: str) -> bool:
    """Whether the server refuses STATEMENT for lack of a privilege."""
    try:
        conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege:
        return True
    return False


def role_exists(pg: PgObjects, role: str) -> bool:
    row = pg.admin.execute("SELECT FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    return row is not None


class Setup:
    """A member's database with one object of every kind restrict deals with."""

    def __init__(self, pg: PgObjects) -> None:
        suffix = tag()
        self.member = pg.role(f"m_{suffix}")
        self.bob = pg.role(f"bob_{suffix}")
        self.hold = hold_role(self.member)
        pg.roles.insert(0, self.hold)  # dropped by the fixture should a test leave it
        self.db = pg.database(f"qdb_{suffix}", owner=self.member, rows=10)
        with session(self.db, self.member) as conn:
            conn.execute("CREATE TABLE notes (id serial PRIMARY KEY, body text)")
            conn.execute("INSERT INTO notes (body) SELECT 'n' || g FROM generate_series(1, 5) g")
            # The owner gave up TRUNCATE itself: the restriction must not hand it back.
            conn.execute(f'REVOKE TRUNCATE ON notes FROM "{self.member}"')
            conn.execute("CREATE TABLE shared (id int, v text)")
            conn.execute(f'GRANT INSERT, SELECT ON shared TO "{self.bob}" WITH GRANT OPTION')
            conn.execute(f'GRANT UPDATE (v) ON shared TO "{self.bob}"')
            conn.execute("GRANT SELECT ON shared TO PUBLIC")
            conn.execute("CREATE SCHEMA app")
            conn.execute(f'GRANT USAGE, CREATE ON SCHEMA app TO "{self.bob}"')
            conn.execute("CREATE TABLE app.items (id int GENERATED ALWAYS AS IDENTITY, v text)")
            conn.execute("CREATE TABLE events (id int, v text) PARTITION BY RANGE (id)")
            conn.execute("CREATE TABLE events_1 PARTITION OF events FOR VALUES FROM (0) TO (100)")
            conn.execute("INSERT INTO events VALUES (1, 'a'), (2, 'b')")
            conn.execute("CREATE MATERIALIZED VIEW notes_mv AS SELECT * FROM notes")
            conn.execute("CREATE VIEW notes_v AS SELECT * FROM notes")
            conn.execute(f'ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO "{self.bob}"')
            # A rule's actions run with the table owner's rights.
            conn.execute("CREATE TABLE audited (v text)")
            conn.execute("CREATE TABLE audit_log (v text)")
            conn.execute("INSERT INTO audited VALUES ('a')")
            conn.execute(
                "CREATE RULE keep AS ON DELETE TO audited DO ALSO"
                " INSERT INTO audit_log VALUES (old.v)"
            )
            row = conn.execute("SELECT lo_from_bytea(0, 'hello')").fetchone()
            assert row is not None
            self.lo = int(row[0])
        with psycopg.connect(PgObjects.dsn(self.db), autocommit=True) as conn:
            # The superuser's table (from pg.database) with a write grant to
            # the member, and a view through which it writes as the superuser.
            conn.execute(f'GRANT INSERT, UPDATE, SELECT ON payload TO "{self.member}"')
            conn.execute("CREATE VIEW payload_v AS SELECT * FROM payload")
            conn.execute(f'GRANT INSERT, SELECT ON payload_v TO "{self.member}"')
        with session(self.db, self.bob) as conn:
            # Handed on with bob's grant option: restored with bob as the grantor.
            conn.execute("GRANT INSERT, SELECT ON shared TO PUBLIC")
        pg.admin.execute(f'GRANT CREATE ON DATABASE "{self.db}" TO "{self.bob}"')
        self.target = target(self.member, self.db)


# Writes the member could do before and must not do while restricted.
_WRITES = (
    "INSERT INTO notes (body) VALUES ('x')",
    "UPDATE notes SET body = 'y'",
    "INSERT INTO shared VALUES (1, 'x')",
    "INSERT INTO app.items (v) VALUES ('x')",
    "INSERT INTO events VALUES (3, 'x')",
    "INSERT INTO events_1 VALUES (3, 'x')",
    "INSERT INTO notes_v (body) VALUES ('x')",
    "INSERT INTO payload VALUES (0, 'x')",
    "UPDATE payload SET v = 'y'",
    "INSERT INTO payload_v VALUES (0, 'x')",
    "CREATE TABLE more (x int)",
    "CREATE TABLE app.more (x int)",
    "CREATE TEMP TABLE scratch (x int)",
    "CREATE SCHEMA more",
    "CREATE INDEX ON notes (body)",
    "REFRESH MATERIALIZED VIEW notes_mv",
    "DELETE FROM audited",
    "SELECT lo_from_bytea(0, 'more')",
    "SELECT lo_create(0)",
)


def _undo_attempts(setup: Setup) -> list[str]:
    """What a member might try from its own session to lift the restriction."""
    me, db, hold = f'"{setup.member}"', f'"{setup.db}"', f'"{setup.hold}"'
    return [
        "SET default_transaction_read_only = off",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        f"GRANT INSERT, UPDATE ON notes TO {me}",
        f"GRANT ALL ON ALL TABLES IN SCHEMA app TO {me}",
        f"ALTER TABLE notes OWNER TO {me}",
        f"ALTER SCHEMA app OWNER TO {me}",
        f"ALTER DATABASE {db} OWNER TO {me}",
        f"ALTER DATABASE {db} SET default_transaction_read_only = off",
        f"GRANT CREATE ON DATABASE {db} TO {me}",
        f"GRANT CREATE ON SCHEMA public TO {me}",
        f"SET ROLE {hold}",
        f"GRANT {hold} TO {me}",
        f"ALTER ROLE {me} CREATEROLE",
        f"ALTER LARGE OBJECT {setup.lo} OWNER TO {me}",
        f"SELECT lo_put({setup.lo}, 0, 'x')",
        "ALTER TABLE notes DISABLE ROW LEVEL SECURITY",
    ]


def _assert_held(conn: psycopg.Connection[Any]) -> None:
    for statement in _WRITES:
        assert denied(conn, statement), statement


def test_over_hard_the_member_can_read_and_delete_but_not_write_nor_undo_it(
    pg: PgObjects,
) -> None:
    setup = Setup(pg)
    before = state(setup.db)
    enforce = enforcer()
    with session(setup.db, setup.member) as already_open:
        already_open.execute("SELECT count(*) FROM notes")
        saved = enforce.snapshot(setup.target)
        assert json.loads(json.dumps(saved)) == saved
        message = enforce.restrict(setup.target, saved)
        assert setup.db in message
        assert "handed to" in message

        # A session opened before the restriction is held at once.
        assert denied(already_open, "INSERT INTO notes (body) VALUES ('x')")
        assert denied(already_open, "CREATE TABLE more (x int)")

    with session(setup.db, setup.member) as conn:
        for attempt in _undo_attempts(setup):
            try:
                conn.execute(attempt)
            except psycopg.errors.Error:
                conn.execute("RESET ALL")
                continue
            # What the server accepts is a SET or a GRANT that grants nothing.
            _assert_held(conn)
        _assert_held(conn)
        # Cleaning up still works: read, delete, truncate what it could truncate.
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (5,)
        assert conn.execute("DELETE FROM notes WHERE id <= 2").rowcount == 2
        conn.execute("TRUNCATE events")
        assert denied(conn, "TRUNCATE notes")  # given up before, not handed back
        assert conn.execute("SELECT count(*) FROM notes_mv").fetchone() == (5,)
        assert conn.execute("SELECT lo_get(%s)", (setup.lo,)).fetchone() == (b"hello",)
        assert conn.execute("SELECT count(*) FROM payload").fetchone() == (10,)
        assert conn.execute("DELETE FROM shared").rowcount == 0

    with session(setup.db, setup.bob) as conn:
        assert denied(conn, "INSERT INTO shared VALUES (1, 'x')")
        assert denied(conn, "UPDATE shared SET v = 'y'")
        assert denied(conn, "CREATE TABLE app.bobs (x int)")
        assert denied(conn, "CREATE SCHEMA bobs")
        assert conn.execute("SELECT count(*) FROM shared").fetchone() == (0,)

    message = enforce.lift(setup.target, saved)
    assert "lifted" in message
    assert f"role {setup.hold} dropped" in message
    assert changes(before, state(setup.db)) == {}
    assert not role_exists(pg, setup.hold)

    with session(setup.db, setup.member) as conn:
        conn.execute("INSERT INTO notes (body) VALUES ('back')")
        conn.execute("UPDATE app.items SET v = 'w'")
        conn.execute("INSERT INTO payload VALUES (0, 'x')")
        conn.execute("INSERT INTO payload_v VALUES (0, 'x')")
        conn.execute("CREATE TABLE more (x int)")
        conn.execute("CREATE TEMP TABLE scratch (x int)")
        conn.execute("SELECT lo_put(%s, 0, 'j')", (setup.lo,))
        conn.execute("REFRESH MATERIALIZED VIEW notes_mv")
        conn.execute("DELETE FROM audited")
    with session(setup.db, setup.bob) as conn:
        conn.execute("INSERT INTO shared VALUES (1, 'x')")
        conn.execute("UPDATE shared SET v = 'y'")


def test_restrict_twice_is_once_and_lift_twice_is_once(pg: PgObjects) -> None:
    setup = Setup(pg)
    before = state(setup.db)
    enforce = enforcer()
    saved = enforce.snapshot(setup.target)
    enforce.restrict(setup.target, saved)
    held = state(setup.db)
    assert held != before
    message = enforce.restrict(setup.target, saved)
    assert "already held" in message
    assert changes(held, state(setup.db)) == {}

    enforce.lift(setup.target, saved)
    assert changes(before, state(setup.db)) == {}
    message = enforce.lift(setup.target, saved)
    assert "0 object(s) given back" in message
    assert changes(before, state(setup.db)) == {}


def test_a_second_database_of_the_member_is_left_alone(pg: PgObjects) -> None:
    setup = Setup(pg)
    other = pg.database(f"qdb2_{tag()}", owner=setup.member)
    with session(other, setup.member) as conn:
        conn.execute("CREATE TABLE notes (body text)")
    other_before = state(other)
    enforce = enforcer()
    saved = enforce.snapshot(setup.target)
    enforce.restrict(setup.target, saved)
    assert changes(other_before, state(other)) == {}
    with session(other, setup.member) as conn:
        conn.execute("INSERT INTO notes VALUES ('still mine')")
        conn.execute("CREATE TABLE more (x int)")
    other_before = state(other)

    # Both held by the same role: lifting one keeps the role for the other.
    other_target = target(setup.member, other)
    other_saved = enforce.snapshot(other_target)
    enforce.restrict(other_target, other_saved)
    assert "dropped" not in enforce.lift(setup.target, saved)
    assert role_exists(pg, setup.hold)
    with session(other, setup.member) as conn:
        assert denied(conn, "INSERT INTO notes VALUES ('held')")
    assert "dropped" in enforce.lift(other_target, other_saved)
    assert changes(other_before, state(other)) == {}
    assert not role_exists(pg, setup.hold)


def test_lift_after_the_database_was_dropped_is_not_an_error(pg: PgObjects) -> None:
    setup = Setup(pg)
    enforce = enforcer()
    saved = enforce.snapshot(setup.target)
    enforce.restrict(setup.target, saved)
    pg.drop(setup.db)
    assert "no longer exists" in enforce.lift(setup.target, saved)
    assert not role_exists(pg, setup.hold)

    # A new database under the old name is not the one saved.
    pg.database(setup.db, owner=setup.member)
    fresh = state(setup.db)
    assert "made anew" in enforce.lift(setup.target, saved)
    assert changes(fresh, state(setup.db)) == {}
    with pytest.raises(EnforcerError, match="made anew"):
        enforce.restrict(setup.target, saved)


def test_a_table_made_after_the_snapshot_is_held_and_given_to_the_owner(pg: PgObjects) -> None:
    setup = Setup(pg)
    enforce = enforcer()
    saved = enforce.snapshot(setup.target)
    with session(setup.db, setup.member) as conn:
        conn.execute("CREATE TABLE late (x int)")
    before = state(setup.db)
    enforce.restrict(setup.target, saved)
    with session(setup.db, setup.member) as conn:
        assert denied(conn, "INSERT INTO late VALUES (1)")
        conn.execute("DELETE FROM late")
    enforce.lift(setup.target, saved)
    assert changes(before, state(setup.db)) == {}


def test_a_role_that_could_undo_it_is_refused_and_nothing_changes(pg: PgObjects) -> None:
    setup = Setup(pg)
    pg.admin.execute(f'ALTER ROLE "{setup.member}" CREATEROLE')
    before = state(setup.db)
    enforce = enforcer()
    saved = enforce.snapshot(setup.target)
    with pytest.raises(EnforcerError, match="CREATEROLE"):
        enforce.restrict(setup.target, saved)
    assert changes(before, state(setup.db)) == {}
    assert not role_exists(pg, setup.hold)


def test_a_held_database_is_not_snapshotted_as_its_previous_state(pg: PgObjects) -> None:
    setup = Setup(pg)
    enforce = enforcer()
    saved = enforce.snapshot(setup.target)
    enforce.restrict(setup.target, saved)
    with pytest.raises(EnforcerError, match="already restricted"):
        enforce.snapshot(setup.target)
    enforce.lift(setup.target, saved)


def test_a_lock_held_by_the_member_fails_the_run_in_time(pg: PgObjects) -> None:
    setup = Setup(pg)
    scanner = PostgresScanner.from_options("pg", {"dsn": PgObjects.dsn(), "timeout": 1}, Path())
    enforce = PostgresEnforcer.from_options(scanner, {}, Path())
    saved = enforce.snapshot(setup.target)
    before = state(setup.db)
    with session(setup.db, setup.member) as conn, conn.transaction():
        conn.execute("LOCK TABLE notes IN ACCESS SHARE MODE")
        with pytest.raises(EnforcerError, match="lock"):
            enforce.restrict(setup.target, saved)
    assert changes(before, state(setup.db)) == {}


def test_options() -> None:
    with pytest.raises(OptionError, match="unknown"):
        enforcer(enforce_dsnx="host=x")
    with pytest.raises(OptionError) as caught:
        enforcer(enforce_dsn="host=db1 password='s3cret")
    assert "s3cret" not in str(caught.value)
    with pytest.raises(OptionError):
        enforcer(enforce_dsn=5)
    with pytest.raises(OptionError, match="empty"):
        enforcer(enforce_dsn=" ")
    assert enforcer(enforce_dsn="host=db2 dbname=postgres").dsn == "host=db2 dbname=postgres"
    assert enforcer().dsn == PgObjects.dsn()


def test_errors_name_the_server_never_the_password(
    refusing_postgres: PasswordRefusingPostgres,
) -> None:
    dsn = f"host=127.0.0.1 port={refusing_postgres.port} user=quotad password=s3cret dbname=x"
    enforce = enforcer(enforce_dsn=dsn)
    with pytest.raises(EnforcerError) as caught:
        enforce.snapshot(target("alice", "alice_blog"))
    text = str(caught.value)
    assert f"127.0.0.1:{refusing_postgres.port}/alice_blog" in text
    assert "s3cret" not in text
    assert "\n" not in text
    assert set(refusing_postgres.passwords) == {b"s3cret"}  # the server was really asked


def test_hold_role_names_fit_an_identifier() -> None:
    assert hold_role("alice") == "quotad_hold_alice"
    long = "a" * 64
    assert len(hold_role(long).encode()) <= 63
    assert hold_role(long) != hold_role("a" * 63 + "b")


def test_identifiers_are_quoted(pg: PgObjects) -> None:
    setup = Setup(pg)
    with session(setup.db, setup.member) as conn:
        conn.execute('CREATE SCHEMA "Odd ""Schema"""')
        conn.execute('CREATE TABLE "Odd ""Schema"""."Mixed Case" ("Col" int)')
        conn.execute(
            sql.SQL('GRANT INSERT ("Col") ON "Odd ""Schema"""."Mixed Case" TO {}').format(
                sql.Identifier(setup.bob)
            )
        )
    before = state(setup.db)
    enforce = enforcer()
    saved = enforce.snapshot(setup.target)
    enforce.restrict(setup.target, saved)
    with session(setup.db, setup.bob) as conn:
        assert denied(conn, 'INSERT INTO "Odd ""Schema"""."Mixed Case" VALUES (1)')
    enforce.lift(setup.target, saved)
    assert changes(before, state(setup.db)) == {}


def test_a_role_dropped_while_held_is_left_out_of_the_restored_acl(pg: PgObjects) -> None:
    setup = Setup(pg)
    carol = pg.role(f"carol_{tag()}")
    with session(setup.db, setup.member) as conn:
        conn.execute(sql.SQL("GRANT INSERT ON notes TO {}").format(sql.Identifier(carol)))
    before = state(setup.db)
    enforce = enforcer()
    saved = enforce.snapshot(setup.target)
    enforce.restrict(setup.target, saved)
    # Its only grant was revoked, so nothing keeps the role from being dropped.
    pg.admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(carol)))
    enforce.lift(setup.target, saved)
    diff = changes(before, state(setup.db))
    notes = f"{setup.member}=arwdxt/{setup.member}"
    assert diff == {
        "relations": [
            ("-", ("notes", "r", setup.member, f"{{{notes},{carol}=a/{setup.member}}}")),
            ("+", ("notes", "r", setup.member, f"{{{notes}}}")),
        ]
    }


def test_a_missing_database_fails_snapshot_and_restrict_but_not_lift(pg: PgObjects) -> None:
    missing = target("alice", f"qdb_missing_{tag()}")
    enforce = enforcer()
    with pytest.raises(EnforcerError, match="no such database"):
        enforce.snapshot(missing)
    saved = {"version": 1, "database": missing.name, "oid": 1, "hold": "quotad_hold_alice"}
    with pytest.raises(EnforcerError, match="no such database"):
        enforce.restrict(missing, {**saved, "objects": []})
    assert "no longer exists" in enforce.lift(missing, {**saved, "objects": []})
    with pytest.raises(EnforcerError, match="not a snapshot"):
        enforce.lift(missing, {**saved, "version": 99, "objects": []})
    del pg
