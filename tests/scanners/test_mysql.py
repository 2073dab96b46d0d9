"""The `mysql` scanner against the machine's real MariaDB 10.11.

Every test makes its own accounts and schemas (tests/databases.py) and looks
only at those. Expected sizes are the server's own `SUM(DATA_LENGTH +
INDEX_LENGTH)` read in the same test, after the refresh the statistics mode
implies, or GNU find's sizes of the schema's folder in "files" mode.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path

import pytest

from scanners.base import (
    DetailValue,
    Measurement,
    OptionError,
    ResourceFailure,
    ScanItem,
    SourceError,
)
from scanners.mysql import MysqlScanner, exact, grant_matches, quote, split_grantee
from tests.conftest import need
from tests.databases import (
    MYSQL_DSN,
    MYSQL_HOST,
    MYSQL_PORT,
    MyObjects,
    SilentServer,
    mariadb,
    silent_server,
    tag,
)
from tests.helpers import find_sizes
from tests.mailman_server import free_port

__all__ = ["mariadb", "silent_server"]  # fixtures, used by name

KIND = "mysql_database"


def scanner(**options: object) -> MysqlScanner:
    return MysqlScanner.from_options("my", {"dsn": MYSQL_DSN, **options}, Path())


def scan(only: set[str], **options: object) -> dict[str, ScanItem]:
    """Name -> item for the schemas named in ONLY (the server holds others too)."""
    items = list(scanner(**options).scan())
    names = [item.name for item in items]
    assert len(names) == len(set(names)), names
    assert all(item.kind == KIND for item in items)
    return {item.name: item for item in items if item.name in only}


def measured(items: Mapping[str, ScanItem]) -> dict[str, tuple[str | None, int, int]]:
    """Name -> (member, bytes, files), asserting that nothing failed."""
    result = {}
    for name, item in items.items():
        assert isinstance(item, Measurement), item
        result[name] = (item.member, item.bytes, item.files)
    return result


def detail(item: ScanItem) -> Mapping[str, DetailValue]:
    assert isinstance(item, Measurement), item
    return item.detail


def local_datadir(mariadb: MyObjects) -> Path:
    """The server's data directory, which "files" mode reads; it must be readable here."""
    path = Path(mariadb.datadir())
    if not os.access(path, os.R_OK | os.X_OK):
        need(f"MariaDB's data directory {path}", "run the tests as root on the database host")
    return path


# Prefix rule, "analyze" (the default) and "cached"


def test_prefix_rule_charges_the_analyzed_size(mariadb: MyObjects) -> None:
    t = tag()
    blog = mariadb.schema(f"m{t}_blog", rows=3_000)
    shop = mariadb.schema(f"m{t}_shop_2", rows=10)
    mariadb.table(shop, "orders", rows=500, engine="MyISAM")
    mariadb.table(shop, "carts", rows=50, engine="Aria")
    mariadb.execute(f"CREATE VIEW {quote(shop)}.recent AS SELECT * FROM {quote(shop)}.orders")
    mariadb.execute(f"CREATE SEQUENCE {quote(shop)}.numbers")
    given = mariadb.schema(f"n{t}_given")
    nobody = mariadb.schema(f"n{t}_shared", rows=5)
    plain = mariadb.schema(f"plain{t}")
    shouting = mariadb.schema(f"M{t}_X")
    mine = {blog, shop, given, nobody, plain, shouting}

    items = scan(mine, members={given: f"other{t}", nobody: ""})

    sizes = {name: mariadb.size(name) for name in mine}
    assert measured(items) == {
        blog: (f"m{t}", sizes[blog], 1),
        # Four tables: the view takes no space and is not one.
        shop: (f"m{t}", sizes[shop], 4),
        given: (f"other{t}", 0, 0),
        nobody: (None, sizes[nobody], 1),
        plain: (None, 0, 0),
        shouting: (None, 0, 0),
    }
    assert sizes[blog] > 300_000  # the rows are really there, analyzed
    assert detail(items[blog]) == {}
    assert detail(items[nobody]) == {"unattributed": "the members table says nobody"}
    assert detail(items[plain]) == {"unattributed": 'no "_" in the name, so no member prefix'}
    assert detail(items[shouting]) == {"unattributed": f"the prefix 'M{t}' is not a member name"}


def test_cached_statistics_lag_and_analyze_catches_up(mariadb: MyObjects) -> None:
    t = tag()
    grows = mariadb.schema(f"m{t}_grows")
    # No automatic recalculation, so that the lag does not depend on the
    # server's timing: by default InnoDB recalculates only after 10% of the
    # rows changed, so a table that doubles in bytes but not in rows lags
    # the same way for good (see the README).
    mariadb.execute(
        f"CREATE TABLE {quote(grows)}.t (id INT AUTO_INCREMENT PRIMARY KEY, v TEXT)"
        " ENGINE=InnoDB STATS_AUTO_RECALC=0"
    )
    mariadb.insert(grows, "t", rows=2_000, width=100)
    mariadb.analyze(grows)
    before = mariadb.size(grows)
    mariadb.insert(grows, "t", rows=200, width=4_000)

    cached = scan({grows}, statistics="cached")

    # "cached" reports what the statistics say, however old.
    assert mariadb.size(grows) == before
    assert measured(cached) == {grows: (f"m{t}", before, 1)}

    analyzed = scan({grows})

    after = mariadb.size(grows)
    assert after >= before + 800_000
    assert measured(analyzed) == {grows: (f"m{t}", after, 1)}


# "files"


def test_files_mode_sums_the_schemas_folder(mariadb: MyObjects) -> None:
    datadir = local_datadir(mariadb)
    t = tag()
    blog = mariadb.schema(f"m{t}_blog", rows=2_000)
    mariadb.table(blog, "log", rows=300, engine="Aria")
    odd = mariadb.schema(f"m{t}_café-1.x", rows=10)
    empty = mariadb.schema(f"m{t}_empty")
    mine = {blog, odd, empty}

    items = scan(mine, statistics="files")

    # The server's own file name encoding: "-" is @002d, "é" @0p, "." @002e.
    folders = {blog: f"m{t}_blog", odd: f"m{t}_caf@0p@002d1@002ex", empty: f"m{t}_empty"}
    expected = {}
    for name, folder in folders.items():
        size, _files = find_sizes(datadir / folder)
        assert size > 0  # db.opt at least
        expected[name] = (f"m{t}", size, len(mariadb.table_names(name)))
        assert detail(items[name]) == {"folder": folder}
    assert measured(items) == expected
    assert expected[blog][1] > mariadb.size(blog)  # definitions and free extents count too


def test_files_mode_with_a_datadir_that_is_not_here(mariadb: MyObjects, tmp_path: Path) -> None:
    with pytest.raises(SourceError) as caught:
        scan(set(), statistics="files", datadir=str(tmp_path / "elsewhere"))
    assert str(caught.value) == (
        f'MySQL {MYSQL_HOST}:{MYSQL_PORT}: statistics = "files" reads the server\'s files, '
        f"but {tmp_path / 'elsewhere'} is no folder here: run quotad on the database host, "
        "or set datadir"
    )
    del mariadb


def test_a_schema_whose_folder_is_missing_fails_alone(mariadb: MyObjects, tmp_path: Path) -> None:
    t = tag()
    there = mariadb.schema(f"m{t}_there")
    (tmp_path / f"m{t}_there").mkdir()
    (tmp_path / f"m{t}_there" / "t.ibd").write_bytes(b"x" * 1234)
    missing = mariadb.schema(f"m{t}_missing")

    items = scan({there, missing}, statistics="files", datadir=str(tmp_path))

    assert measured({there: items[there]}) == {there: (f"m{t}", 1234, 0)}
    failure = items[missing]
    assert isinstance(failure, ResourceFailure)
    assert failure.error == (
        f"table '(folder)' cannot be measured: no folder {tmp_path / missing}; "
        "is datadir the server's?"
    )


# A table the server cannot open


@contextlib.contextmanager
def broken_table(datadir: Path, folder: str) -> Iterator[None]:
    """A table definition file the server cannot read, as a crash or a bad copy leaves it."""
    path = datadir / folder / "broken.frm"
    path.write_bytes(b"\x00not a table definition" * 10)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


@pytest.mark.parametrize("statistics", ["analyze", "cached"])
def test_a_table_the_server_cannot_open_fails_its_schema(
    mariadb: MyObjects, statistics: str
) -> None:
    datadir = local_datadir(mariadb)
    t = tag()
    sound = mariadb.schema(f"m{t}_sound", rows=10)
    damaged = mariadb.schema(f"m{t}_damaged", rows=10)

    with broken_table(datadir, damaged):
        items = scan({sound, damaged}, statistics=statistics)

    assert measured({sound: items[sound]}) == {sound: (f"m{t}", mariadb.size(sound), 1)}
    failure = items[damaged]
    assert isinstance(failure, ResourceFailure)
    assert failure.member == f"m{t}"
    assert failure.error == (
        f"table 'broken' cannot be measured: Incorrect information in file: "
        f"'./{damaged}/broken.frm'"
    )


# Names


def test_hostile_names_are_measured_as_data(mariadb: MyObjects) -> None:
    t = tag()
    names = {
        mariadb.schema(f'm{t}_a"b; drop database test; --', rows=5),
        mariadb.schema(f"m{t}_q'uote\\back`tick", rows=5),
        mariadb.schema(f"m{t}_ünïcødé ❄", rows=5),
        mariadb.schema(f"m{t}_%s {{}} ?", rows=5),
    }
    for name in names:
        mariadb.table(name, "t`a'b\"c", rows=3)

    analyzed = scan(names)

    assert measured(analyzed) == {name: (f"m{t}", mariadb.size(name), 2) for name in names}
    assert {name for (name,) in mariadb.execute("SHOW DATABASES LIKE 'test'")} == {"test"}
    if os.access(mariadb.datadir(), os.R_OK | os.X_OK):
        files = scan(names, statistics="files")
        assert set(measured(files)) == names


# The grants rule


def test_grants_rule_charges_the_one_account_holding_the_schema(mariadb: MyObjects) -> None:
    t = tag()
    alice, bob, carol = (mariadb.account(f"{n}{t}") for n in ("alice", "bob", "carol"))
    helper = mariadb.account(f"helper{t}")
    operator = mariadb.account(f"operator{t}")
    mariadb.execute("GRANT SELECT ON *.* TO %s@'%%'", (operator,))  # administrative
    odd = mariadb.account(f"Odd{t}")
    role = mariadb.role(f"role{t}")

    solo = mariadb.schema(f"solo{t}", rows=10)
    mariadb.grant("ALL PRIVILEGES", f"solo{t}", alice)
    mariadb.grant("SELECT", f"solo{t}", operator)  # an administrator does not count
    mariadb.execute(f"GRANT SELECT ON {quote(solo)}.* TO {quote(role)}")  # a role is nobody
    shared = mariadb.schema(f"shared{t}")
    mariadb.grant("ALL PRIVILEGES", f"shared{t}", alice)
    mariadb.grant("SELECT", f"shared{t}", bob)
    pattern_a, pattern_b = mariadb.schema(f"pat{t}_a"), mariadb.schema(f"pat{t}_b")
    mariadb.grant("ALL PRIVILEGES", f"pat{t}\\_%", carol)
    helped = mariadb.schema(f"helped{t}")
    mariadb.grant("ALL PRIVILEGES", f"helped{t}", bob)
    mariadb.grant("SELECT", f"helped{t}", helper)  # listed in admin_accounts below
    nobodys = mariadb.schema(f"nobodys{t}")
    odds = mariadb.schema(f"odds{t}")
    mariadb.grant("ALL PRIVILEGES", f"odds{t}", odd)
    excepted = mariadb.schema(f"excepted{t}")
    mariadb.grant("ALL PRIVILEGES", f"excepted{t}", alice)
    mine = {solo, shared, pattern_a, pattern_b, helped, nobodys, odds, excepted}

    items = scan(
        mine, member_from="grants", admin_accounts=[helper], members={excepted: f"dora{t}"}
    )

    sizes = {name: mariadb.size(name) for name in mine}
    assert measured(items) == {
        solo: (alice, sizes[solo], 1),
        shared: (None, 0, 0),
        pattern_a: (carol, 0, 0),
        pattern_b: (carol, 0, 0),
        helped: (bob, 0, 0),
        nobodys: (None, 0, 0),
        odds: (None, 0, 0),
        excepted: (f"dora{t}", 0, 0),
    }
    assert detail(items[shared]) == {
        "unattributed": f"several accounts hold privileges on it: {alice}, {bob}"
    }
    assert detail(items[nobodys]) == {
        "unattributed": "no account but administrators holds privileges on it"
    }
    assert detail(items[odds]) == {"unattributed": f"the account 'Odd{t}' is not a member name"}


def test_an_account_that_cannot_see_every_table_fails_the_source(mariadb: MyObjects) -> None:
    t = tag()
    weak = mariadb.account(f"weak{t}")
    mariadb.grant("SELECT", f"m{t}\\_%", weak)
    mariadb.schema(f"m{t}_x", rows=1)
    dsn = f"mysql://{weak}@{MYSQL_HOST}:{MYSQL_PORT}/"

    with pytest.raises(SourceError) as caught:
        scan(set(), dsn=dsn, statistics="cached")
    assert str(caught.value) == (
        f"MySQL {MYSQL_HOST}:{MYSQL_PORT}: the account cannot see every table, so sizes would "
        "be too small: grant it SELECT ON *.*"
    )

    # A role holding SELECT on *.* is as good as the grant itself.
    role = mariadb.role(f"reader{t}")
    mariadb.execute(f"GRANT SELECT ON *.* TO {quote(role)}")
    mariadb.execute(f"GRANT {quote(role)} TO %s@'%%'", (weak,))
    mariadb.execute(f"SET DEFAULT ROLE {quote(role)} FOR %s@'%%'", (weak,))
    assert set(scan({f"m{t}_x"}, dsn=dsn, statistics="cached")) == {f"m{t}_x"}


def test_analyze_and_grants_say_which_privilege_is_missing(mariadb: MyObjects) -> None:
    t = tag()
    user = f"reader{t}"
    mariadb.execute("CREATE USER %s@'%%' IDENTIFIED BY 'hunter2secret'", (user,))
    mariadb.accounts.append((user, "%"))
    mariadb.execute("GRANT SELECT ON *.* TO %s@'%%'", (user,))
    mariadb.schema(f"m{t}_x", rows=1)
    dsn = f"mysql://{user}:hunter2secret@{MYSQL_HOST}:{MYSQL_PORT}/"

    with pytest.raises(SourceError) as caught:
        scan(set(), dsn=dsn)
    message = str(caught.value)
    assert message.startswith(f"MySQL {MYSQL_HOST}:{MYSQL_PORT}: ANALYZE TABLE in schema ")
    assert f"INSERT command denied to user '{user}'@'{MYSQL_HOST}'" in message
    assert message.endswith(
        "ANALYZE TABLE needs the SELECT and INSERT privileges on every table; grant them to "
        'the scanner\'s account, or set statistics = "cached"'
    )
    assert "hunter2secret" not in message

    # Seeing some of the mysql schema is not seeing every grant.
    narrow = mariadb.account(f"narrow{t}")
    mariadb.execute("GRANT SELECT ON mysql.user TO %s@'%%'", (narrow,))
    with pytest.raises(SourceError) as caught:
        scan(
            set(),
            dsn=f"mysql://{narrow}@{MYSQL_HOST}:{MYSQL_PORT}/",
            member_from="grants",
            statistics="cached",
        )
    assert str(caught.value) == (
        f"MySQL {MYSQL_HOST}:{MYSQL_PORT}: reading grants: SELECT command denied to user "
        f"'{narrow}'@'{MYSQL_HOST}' for table `mysql`.`db`: member_from = \"grants\" needs "
        "SELECT on the mysql schema, to see every grant"
    )


# A server that cannot be used


def test_a_server_that_is_down_fails_the_source() -> None:
    port = free_port()
    with pytest.raises(SourceError) as caught:
        scan(set(), dsn=f"mysql://root:hunter2secret@127.0.0.1:{port}/")
    assert str(caught.value) == (
        f"MySQL 127.0.0.1:{port}: cannot connect: Can't connect to MySQL server on "
        "'127.0.0.1' ([Errno 111] Connection refused)"
    )


def test_a_wrong_password_or_unknown_user_fails_the_source(mariadb: MyObjects) -> None:
    t = tag()
    with pytest.raises(SourceError) as caught:
        scan(set(), dsn=f"mysql://root:hunter2secret@{MYSQL_HOST}:{MYSQL_PORT}/")
    assert str(caught.value) == (
        f"MySQL {MYSQL_HOST}:{MYSQL_PORT}: cannot connect: Access denied for user "
        f"'root'@'{MYSQL_HOST}' (using password: YES)"
    )
    with pytest.raises(SourceError) as caught:
        scan(set(), dsn=f"mysql://nobody{t}@{MYSQL_HOST}:{MYSQL_PORT}/")
    # MariaDB answers an unknown user as one of two kinds of account, at
    # random, so that the answer does not tell which users exist.
    assert str(caught.value) in {
        f"MySQL {MYSQL_HOST}:{MYSQL_PORT}: cannot connect: Access denied for user "
        f"'nobody{t}'@'{MYSQL_HOST}'{suffix}"
        for suffix in ("", " (using password: NO)")
    }
    del mariadb


def test_password_file(mariadb: MyObjects, tmp_path: Path) -> None:
    t = tag()
    user = f"scan{t}"
    mariadb.execute("CREATE USER %s@'%%' IDENTIFIED BY 'hunter2 secret'", (user,))
    mariadb.accounts.append((user, "%"))
    mariadb.execute("GRANT SELECT, INSERT ON *.* TO %s@'%%'", (user,))
    schema = mariadb.schema(f"m{t}_x", rows=20)
    secret = tmp_path / "mysql-password"
    secret.write_text(" hunter2 secret\n", encoding="utf-8")
    dsn = f"mysql://{user}@{MYSQL_HOST}:{MYSQL_PORT}/"

    items = scan({schema}, dsn=dsn, password_file=str(secret))

    assert measured(items) == {schema: (f"m{t}", mariadb.size(schema), 1)}

    secret.write_text("wrong\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"Access denied .* \(using password: YES\)"):
        scan({schema}, dsn=dsn, password_file=str(secret))
    secret.unlink()
    with pytest.raises(SourceError) as caught:
        scan({schema}, dsn=dsn, password_file=str(secret))
    assert str(caught.value) == f"cannot read password_file {secret}: No such file or directory"


def test_a_server_that_never_answers_times_out(silent_server: SilentServer) -> None:
    dsn = f"mysql://root:hunter2secret@127.0.0.1:{silent_server.port}/"
    with pytest.raises(SourceError) as caught:
        scan(set(), dsn=dsn, timeout="1s")
    assert str(caught.value) == (
        f"MySQL 127.0.0.1:{silent_server.port}: no connection within 1 s (timeout)"
    )


# Options


@pytest.mark.parametrize(
    ("options", "key", "problem"),
    [
        ({"dsn": "postgresql://root@db1/"}, "dsn", "must be a mysql:// URL"),
        ({"dsn": "mysql://root:hunter2secret@db1:x/"}, "dsn", "the port is not a number"),
        ({"dsn": "mysql://root:hunter2secret@db1/app"}, "dsn", "must not name a database"),
        ({"dsn": "mysql://db1/"}, "dsn", "needs a user name"),
        ({"dsn": "mysql://root@db1/?ssl=1"}, "dsn", "unknown parameter 'ssl'"),
        ({"dsn": "mysql://root:pw@db1/", "password_file": "pw"}, "password_file", "not both"),
        ({"member_from": "owner"}, "member_from", 'must be one of "prefix", "grants"'),
        ({"statistics": "fresh"}, "statistics", 'must be one of "analyze", "cached", "files"'),
        ({"datadir": "/var/lib/mysql"}, "datadir", 'only applies with statistics = "files"'),
        (
            {"admin_accounts": ["root"]},
            "admin_accounts",
            'only applies with member_from = "grants"',
        ),
        ({"members": {"db": "No"}}, "members.db", "must be a member name"),
        ({"timeout": "0"}, "timeout", "must be more than 0 seconds"),
        ({"timeout": "53w"}, "timeout", "must be at most 365d"),
        ({"tiemout": "5s"}, "tiemout", "unknown key"),
    ],
)
def test_option_errors_name_the_key(options: dict[str, object], key: str, problem: str) -> None:
    with pytest.raises(OptionError) as caught:
        MysqlScanner.from_options("my", {"dsn": "mysql://root@db1/", **options}, Path())
    assert caught.value.key == key
    assert problem in caught.value.problem
    assert "hunter2secret" not in str(caught.value)


def test_dsn_forms() -> None:
    def server(dsn: str) -> tuple[object, ...]:
        parsed = MysqlScanner.from_options("my", {"dsn": dsn}, Path()).server
        return (parsed.user, parsed.password, parsed.host, parsed.port, parsed.unix_socket)

    assert server("mysql://quotad@db1:3307/") == ("quotad", None, "db1", 3307, None)
    assert server("mysql://q%40x:p%2Fw%3A@db1") == ("q@x", "p/w:", "db1", 3306, None)
    assert server("mariadb://root@/?unix_socket=/run/mysqld/mysqld.sock") == (
        "root",
        None,
        "localhost",
        3306,
        "/run/mysqld/mysqld.sock",
    )


# Pieces


def test_grant_patterns_match_as_the_server_does() -> None:
    assert grant_matches("alice_blog", "alice_blog")
    assert grant_matches("alice_blog", "alice-blog")  # an unescaped "_" is a wildcard
    assert not grant_matches("alice\\_blog", "alice-blog")
    assert grant_matches("alice\\_%", "alice_anything")
    assert not grant_matches("alice\\_%", "alicex")
    assert not grant_matches("Alice", "alice")
    assert grant_matches("Alice", "alice", fold_case=True)
    assert grant_matches("a.b*c", "a.b*c")
    assert not grant_matches("a.b", "axb")
    assert grant_matches("100\\%", "100%")
    assert not grant_matches("100\\%", "1000")


def test_pieces() -> None:
    assert split_grantee("'alice'@'%'") == ("alice", "%")
    assert split_grantee("'role'@''") == ("role", "")
    assert split_grantee("'o'@'dd'@'host'") == ("o'@'dd", "host")
    assert quote("a`b") == "`a``b`"
    assert exact(Decimal("12345678901234567890.000")) == 12345678901234567890
    assert exact(7) == 7
    with pytest.raises(ValueError, match="not a whole number"):
        exact(Decimal("1.5"))
    with pytest.raises(ValueError, match="not a whole number"):
        exact(1.0)
