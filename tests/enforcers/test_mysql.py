"""The `mysql` enforcer against the machine's real MariaDB 10.11.

Every test makes its own accounts and schemas (tests/databases.py), connects
as the member's own account to show what it can still do, and compares
`SHOW GRANTS` before and after with the server's own words.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pymysql
import pytest

from quotad.enforcers.base import EnforcerError, Saved, Target
from quotad.enforcers.mysql import MysqlEnforcer, escape_pattern
from scanners.base import OptionError
from scanners.mysql import MysqlScanner, quote
from tests.databases import MYSQL_DSN, MYSQL_HOST, MYSQL_PORT, MyObjects, mariadb, tag

__all__ = ["mariadb"]  # a fixture, used by name

# The server's "command denied" errors: on a table, on a schema, on a column.
DENIED = {1142, 1044, 1143}


def enforcer(**options: object) -> MysqlEnforcer:
    scanner = MysqlScanner.from_options("my", {"dsn": MYSQL_DSN}, Path())
    return MysqlEnforcer.from_options(scanner, options, Path())


def target(schema: str, member: str) -> Target:
    return Target(member, "my", "mysql_database", schema, 0)


def connect(user: str, schema: str | None = None) -> Any:
    return pymysql.connect(
        host=MYSQL_HOST,
        port=MYSQL_PORT,
        user=user,
        password="",
        database=schema,
        autocommit=True,
        connect_timeout=5,
    )


def can(user: str, sql: str, schema: str | None = None) -> bool:
    """Whether USER's own new session may run SQL."""
    conn = connect(user, schema)
    try:
        with conn.cursor() as cursor:
            cursor.execute(sql)
    except pymysql.err.MySQLError as exc:
        if exc.args[0] in DENIED:
            return False
        raise
    finally:
        conn.close()
    return True


def grants(mariadb: MyObjects, user: str, host: str | None = "%") -> list[str]:
    account = f"'{user}'" if host is None else f"'{user}'@'{host}'"
    return [line for (line,) in mariadb.execute(f"SHOW GRANTS FOR {account}")]


@pytest.fixture
def member(mariadb: MyObjects) -> tuple[str, str]:
    """A member's account (named as the member) and its schema with a table of 3 rows."""
    name = f"m{tag()}"
    schema = mariadb.schema(f"{name}_blog", rows=3)
    mariadb.account(name)
    return name, schema


def restricted(mariadb: MyObjects, schema: str, user: str, **options: object) -> Saved:
    """Snapshot and restrict SCHEMA of member USER; the snapshot, as the ledger stores it."""
    enf = enforcer(**options)
    saved: Saved = json.loads(json.dumps(enf.snapshot(target(schema, user))))
    enf.restrict(target(schema, user), saved)
    return saved


def test_over_hard_the_member_can_read_and_delete_but_not_write(
    mariadb: MyObjects, member: tuple[str, str]
) -> None:
    user, schema = member
    mariadb.grant("ALL PRIVILEGES", escape_pattern(schema), user)
    before = grants(mariadb, user)
    assert can(user, "INSERT INTO payload (v) VALUES ('x')", schema)

    enf = enforcer()
    saved = enf.snapshot(target(schema, user))
    assert json.loads(json.dumps(saved)) == saved
    assert saved["grants"] == [
        {"grantee": {"user": user, "host": "%", "role": False}, "show_grants": before}
    ]
    message = enf.restrict(target(schema, user), saved)
    assert "INSERT" in message
    assert user in message

    assert not can(user, "INSERT INTO payload (v) VALUES ('x')", schema)
    assert not can(user, "UPDATE payload SET v = 'y'", schema)
    assert not can(user, "CREATE TABLE more (id INT)", schema)
    assert not can(user, "ALTER TABLE payload ADD COLUMN w TEXT", schema)
    assert not can(user, "CREATE INDEX v ON payload (v(10))", schema)
    assert not can(user, "CREATE TEMPORARY TABLE scratch (id INT)", schema)
    assert can(user, "SELECT * FROM payload", schema)
    assert can(user, "DELETE FROM payload WHERE id = 1", schema)
    assert can(user, "TRUNCATE TABLE payload", schema)
    assert can(user, "DROP TABLE payload", schema)

    message = enf.lift(target(schema, user), saved)
    assert "back" in message
    assert grants(mariadb, user) == before
    assert can(user, "CREATE TABLE more (id INT)", schema)
    assert can(user, "INSERT INTO more VALUES (1)", schema)


def test_an_account_that_never_had_create_does_not_get_it(
    mariadb: MyObjects, member: tuple[str, str]
) -> None:
    user, schema = member
    mariadb.grant("SELECT, INSERT, DELETE", escape_pattern(schema), user)
    before = grants(mariadb, user)
    saved = restricted(mariadb, schema, user)
    (change,) = saved["changes"]
    assert change["revoke"] == ["INSERT"]
    assert change["kept"] == ["SELECT", "DELETE"]
    assert not can(user, "INSERT INTO payload (v) VALUES ('x')", schema)

    enforcer().lift(target(schema, user), saved)
    assert grants(mariadb, user) == before
    assert not can(user, "CREATE TABLE more (id INT)", schema)
    assert can(user, "INSERT INTO payload (v) VALUES ('x')", schema)


def test_restrict_twice_is_once_and_lift_twice_is_once(
    mariadb: MyObjects, member: tuple[str, str]
) -> None:
    user, schema = member
    mariadb.grant("SELECT, INSERT, UPDATE, DELETE, CREATE, DROP", escape_pattern(schema), user)
    before = grants(mariadb, user)
    enf = enforcer()
    saved = enf.snapshot(target(schema, user))
    enf.restrict(target(schema, user), saved)
    once = grants(mariadb, user)
    assert once != before
    assert "already restricted" in enf.restrict(target(schema, user), saved)
    assert grants(mariadb, user) == once

    enf.lift(target(schema, user), saved)
    assert grants(mariadb, user) == before
    assert "nothing to restore" in enf.lift(target(schema, user), saved)
    assert grants(mariadb, user) == before


def test_every_account_on_the_schema_is_restricted_at_every_level(
    mariadb: MyObjects, member: tuple[str, str]
) -> None:
    user, schema = member
    helper = mariadb.account(f"h{tag()}")
    writer = mariadb.account(f"w{tag()}")
    mariadb.grant("SELECT, INSERT, DELETE", escape_pattern(schema), user)
    mariadb.grant("SELECT, UPDATE, DELETE, CREATE VIEW", escape_pattern(schema), writer)
    table = f"{quote(schema)}.payload"
    mariadb.execute(f"GRANT SELECT, INSERT, DELETE, ALTER ON {table} TO %s@'%%'", (helper,))
    mariadb.execute(f"GRANT UPDATE (v), SELECT (id) ON {table} TO %s@'%%'", (helper,))
    before = {u: grants(mariadb, u) for u in (user, helper, writer)}
    assert can(helper, "UPDATE payload SET v = 'y'", schema)

    saved = restricted(mariadb, schema, user)
    assert {c["on"] for c in saved["changes"]} == {"schema", "table", "column"}
    for who in (user, helper):
        assert not can(who, "INSERT INTO payload (v) VALUES ('x')", schema)
        assert can(who, "SELECT id FROM payload", schema)
        assert can(who, "DELETE FROM payload WHERE id = 1", schema)
    assert not can(helper, "UPDATE payload SET v = 'y'", schema)
    assert not can(helper, "ALTER TABLE payload ADD COLUMN w TEXT", schema)
    assert not can(writer, "UPDATE payload SET v = 'y'", schema)
    assert not can(writer, "CREATE VIEW v AS SELECT 1", schema)
    assert can(writer, "DELETE FROM payload", schema)

    enforcer().lift(target(schema, user), saved)
    assert {u: grants(mariadb, u) for u in (user, helper, writer)} == before
    assert can(helper, "UPDATE payload SET v = 'y'", schema)
    assert can(writer, "CREATE VIEW v AS SELECT 1", schema)
    assert not can(writer, "INSERT INTO payload (v) VALUES ('x')", schema)


def test_a_pattern_grant_is_overridden_for_this_schema_alone(
    mariadb: MyObjects, member: tuple[str, str]
) -> None:
    user, schema = member
    other = mariadb.schema(f"{user}_shop", rows=1)
    mariadb.grant("SELECT, INSERT, DELETE, CREATE", f"{user}\\_%", user)
    before = grants(mariadb, user)

    saved = restricted(mariadb, schema, user)
    (change,) = saved["changes"]
    assert change["on"] == "exception"
    assert change["grant"] == ["SELECT", "DELETE"]
    assert not can(user, "INSERT INTO payload (v) VALUES ('x')", schema)
    assert can(user, "DELETE FROM payload WHERE id = 1", schema)
    # The pattern itself is untouched, and so is the member's other schema.
    assert set(before) < set(grants(mariadb, user))
    assert can(user, "INSERT INTO payload (v) VALUES ('x')", other)
    assert can(user, "CREATE TABLE more (id INT)", other)

    enforcer().lift(target(schema, user), saved)
    assert grants(mariadb, user) == before
    assert can(user, "INSERT INTO payload (v) VALUES ('x')", schema)


def test_a_pattern_that_grants_only_writes_is_refused(
    mariadb: MyObjects, member: tuple[str, str]
) -> None:
    user, schema = member
    mariadb.grant("INSERT, UPDATE", f"{user}\\_%", user)
    with pytest.raises(EnforcerError, match=r"without restricting other schemas"):
        enforcer().snapshot(target(schema, user))


def test_lift_after_the_schema_was_dropped(mariadb: MyObjects, member: tuple[str, str]) -> None:
    user, schema = member
    mariadb.grant("SELECT, INSERT, DELETE", escape_pattern(schema), user)
    mariadb.execute(f"GRANT INSERT ON {quote(schema)}.payload TO %s@'%%'", (user,))
    before = grants(mariadb, user)
    saved = restricted(mariadb, schema, user)
    mariadb.execute(f"DROP DATABASE {quote(schema)}")

    message = enforcer().lift(target(schema, user), saved)
    assert "no longer exists" in message
    # The schema-level grant outlives the schema, as it did before.
    table_grant = f"GRANT INSERT ON {quote(schema)}.`payload` TO `{user}`@`%`"
    assert grants(mariadb, user) == [line for line in before if line != table_grant]
    assert "nothing to restore" in enforcer().lift(target(schema, user), saved)


def test_snapshot_of_a_schema_that_does_not_exist_fails(mariadb: MyObjects) -> None:
    del mariadb
    with pytest.raises(EnforcerError, match="does not exist"):
        enforcer().snapshot(target(f"nobody{tag()}_gone", "nobody"))


@pytest.mark.parametrize("kill_sessions", [True, False])
def test_an_open_session_loses_its_write_privileges(
    mariadb: MyObjects, member: tuple[str, str], kill_sessions: bool
) -> None:
    user, schema = member
    mariadb.grant("SELECT, INSERT, DELETE", escape_pattern(schema), user)
    inside = connect(user, schema)  # the app's connection, in the schema since before
    elsewhere = connect(user)
    try:
        message = enforcer(kill_sessions=kill_sessions).restrict(
            target(schema, user), enforcer().snapshot(target(schema, user))
        )
        # MariaDB checks a session's privileges on its current schema as of
        # its last USE: only ending the session takes them away.
        if kill_sessions:
            assert "ended 1 open session" in message
            with pytest.raises(pymysql.err.OperationalError), inside.cursor() as cursor:
                cursor.execute("INSERT INTO payload (v) VALUES ('x')")
        else:
            with inside.cursor() as cursor:
                cursor.execute("INSERT INTO payload (v) VALUES ('x')")
        with pytest.raises(pymysql.err.OperationalError) as denied, elsewhere.cursor() as cursor:
            cursor.execute(f"INSERT INTO {quote(schema)}.payload (v) VALUES ('x')")
        assert denied.value.args[0] in DENIED
    finally:
        for conn in (inside, elsewhere):
            if conn.open:
                conn.close()


def test_a_role_holding_privileges_is_restricted(
    mariadb: MyObjects, member: tuple[str, str]
) -> None:
    user, schema = member
    role = mariadb.role(f"r{tag()}")
    mariadb.execute(f"GRANT SELECT, INSERT, DELETE ON {quote(escape_pattern(schema))}.* TO {role}")
    mariadb.execute(f"GRANT {role} TO %s@'%%'", (user,))
    mariadb.execute(f"SET DEFAULT ROLE {role} FOR %s@'%%'", (user,))
    before = grants(mariadb, role, host=None)
    assert can(user, "INSERT INTO payload (v) VALUES ('x')", schema)
    inside = connect(user, schema)

    saved = restricted(mariadb, schema, user)
    # A role's privileges on the session's schema are cached like the account's own.
    with pytest.raises(pymysql.err.OperationalError), inside.cursor() as cursor:
        cursor.execute("INSERT INTO payload (v) VALUES ('x')")
    assert not can(user, "INSERT INTO payload (v) VALUES ('x')", schema)
    assert can(user, "DELETE FROM payload", schema)

    enforcer().lift(target(schema, user), saved)
    assert grants(mariadb, role, host=None) == before
    assert can(user, "INSERT INTO payload (v) VALUES ('x')", schema)


def test_administrators_and_exempt_accounts_keep_their_grants(
    mariadb: MyObjects, member: tuple[str, str]
) -> None:
    user, schema = member
    admin = mariadb.account(f"a{tag()}")
    mariadb.execute("GRANT SELECT, PROCESS ON *.* TO %s@'%%'", (admin,))
    backup = mariadb.account(f"b{tag()}")
    for who in (user, admin, backup):
        mariadb.grant("SELECT, INSERT", escape_pattern(schema), who)
    before = {who: grants(mariadb, who) for who in (admin, backup)}
    sessions = [connect(who, schema) for who in (admin, backup)]

    saved = restricted(mariadb, schema, user, exempt_accounts=[backup])
    for session in sessions:
        with session.cursor() as cursor:
            cursor.execute("INSERT INTO payload (v) VALUES ('x')")
        session.close()
    assert {c["grantee"]["user"] for c in saved["changes"]} == {user}
    assert {who: grants(mariadb, who) for who in (admin, backup)} == before
    assert can(admin, "INSERT INTO payload (v) VALUES ('x')", schema)
    assert can(backup, "INSERT INTO payload (v) VALUES ('x')", schema)
    assert not can(user, "INSERT INTO payload (v) VALUES ('x')", schema)


def test_a_member_account_that_writes_everywhere_is_refused_before_acting(
    mariadb: MyObjects, member: tuple[str, str]
) -> None:
    user, schema = member
    helper = mariadb.account(f"h{tag()}")
    mariadb.grant("SELECT, INSERT", escape_pattern(schema), user)
    mariadb.grant("SELECT, INSERT", escape_pattern(schema), helper)
    mariadb.execute("GRANT INSERT, UPDATE ON *.* TO %s@'%%'", (user,))
    before = grants(mariadb, helper)
    enf = enforcer()
    saved = enf.snapshot(target(schema, user))
    with pytest.raises(EnforcerError, match=rf"'{user}'@'%' holds INSERT, UPDATE on \*\.\*"):
        enf.restrict(target(schema, user), saved)
    assert grants(mariadb, helper) == before


def test_an_account_without_grant_privileges_fails_in_one_line(
    mariadb: MyObjects, member: tuple[str, str]
) -> None:
    user, schema = member
    weak = mariadb.account(f"w{tag()}")
    mariadb.execute("GRANT SELECT ON *.* TO %s@'%%'", (weak,))
    mariadb.grant("SELECT, INSERT", escape_pattern(schema), user)
    enf = enforcer(enforce_dsn=f"mysql://{weak}@{MYSQL_HOST}:{MYSQL_PORT}/")
    saved = enf.snapshot(target(schema, user))
    with pytest.raises(EnforcerError) as failed:
        enf.restrict(target(schema, user), saved)
    assert "\n" not in str(failed.value)
    assert "REVOKE" in str(failed.value)
    assert can(user, "INSERT INTO payload (v) VALUES ('x')", schema)


@pytest.mark.parametrize(
    ("options", "key", "problem"),
    [
        ({"kill_sessions": "yes"}, "kill_sessions", "true or false"),
        ({"exempt_accounts": "backup"}, "exempt_accounts", "list of strings"),
        ({"enforce_dsn": "postgresql://x@h/"}, "enforce_dsn", "mysql:// URL"),
        ({"enforce_password_file": "pw"}, "enforce_password_file", "only applies with"),
        (
            {"enforce_dsn": "mysql://a:secret@h/", "enforce_password_file": "pw"},
            "enforce_password_file",
            "not both",
        ),
        ({"kill_session": True}, "kill_session", "unknown key"),
    ],
)
def test_bad_options_name_their_key(options: dict[str, object], key: str, problem: str) -> None:
    with pytest.raises(OptionError) as failed:
        enforcer(**options)
    assert failed.value.key == key
    assert problem in failed.value.problem
    assert "secret" not in str(failed.value)
