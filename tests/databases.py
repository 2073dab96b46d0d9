"""The machine's PostgreSQL and MariaDB, with databases and accounts made for one test.

Each fixture hands out a helper that creates roles, accounts and databases
under names unique to the test and drops every one of them afterwards, even
when the test fails. Other tests' databases (the ledger's, say) live on the
same servers, so tests only ever look at the names they created.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pymysql
import pytest
from psycopg import sql

from tests.conftest import PG_ADMIN_DSN, need

MYSQL_HOST = os.environ.get("MYSQL_TEST_HOST", "127.0.0.1")
MYSQL_PORT = int(os.environ.get("MYSQL_TEST_PORT", "3306"))
MYSQL_DSN = f"mysql://root@{MYSQL_HOST}:{MYSQL_PORT}/"


def tag() -> str:
    """Eight fresh hex digits, to make a name unique to this test."""
    return uuid.uuid4().hex[:8]


class PgObjects:
    """Roles and databases made for one test on the real PostgreSQL."""

    def __init__(self, admin: psycopg.Connection[Any]) -> None:
        self.admin = admin
        self.roles: list[str] = []
        self.databases: list[str] = []

    def role(self, name: str, *options: str) -> str:
        """A new role NAME (LOGIN, no password: the server trusts loopback)."""
        extra = sql.SQL(" ").join(sql.SQL(o) for o in options)  # options are the test's own
        self.admin.execute(sql.SQL("CREATE ROLE {} LOGIN {}").format(sql.Identifier(name), extra))
        self.roles.append(name)
        return name

    def database(self, name: str, owner: str | None = None, rows: int = 0) -> str:
        """A new database NAME owned by OWNER, holding a table of ROWS rows of 100 bytes."""
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if owner is not None:
            query += sql.SQL(" OWNER {}").format(sql.Identifier(owner))
        self.admin.execute(query)
        self.databases.append(name)
        if rows:
            with psycopg.connect(self.dsn(name), autocommit=True) as conn:
                conn.execute(
                    "CREATE TABLE payload AS SELECT g, repeat('x', 100) AS v"
                    " FROM generate_series(1, %s) AS g",
                    (rows,),
                )
        return name

    def size(self, name: str) -> int:
        """The server's own pg_database_size() of NAME."""
        row = self.admin.execute("SELECT pg_database_size(%s::text)", (name,)).fetchone()
        assert row is not None
        return int(row[0])

    def drop(self, name: str) -> None:
        # A template cannot be dropped until it is one no more.
        ident = sql.Identifier(name)
        with contextlib.suppress(psycopg.errors.InvalidCatalogName):
            self.admin.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(ident))
        self.admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))

    def cleanup(self) -> None:
        for name in self.databases:
            self.drop(name)
        for role in self.roles:
            self.admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))

    @staticmethod
    def dsn(dbname: str = "test", **params: str | int) -> str:
        """The test server's DSN with another database and parameters."""
        return psycopg.conninfo.make_conninfo(PG_ADMIN_DSN, dbname=dbname, **params)


@pytest.fixture
def pg() -> Iterator[PgObjects]:
    try:
        admin = psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        need(
            "PostgreSQL at 127.0.0.1:5432",
            f"start it (pg_ctlcluster 15 main start) or set PG_TEST_DSN ({exc})",
        )
        raise AssertionError("unreachable") from exc
    objects = PgObjects(admin)
    try:
        yield objects
    finally:
        try:
            objects.cleanup()
        finally:
            admin.close()


class MyObjects:
    """Accounts and schemas made for one test on the real MariaDB."""

    def __init__(self, admin: Any) -> None:
        self.admin = admin
        self.schemas: list[str] = []
        self.accounts: list[tuple[str, str]] = []
        self.roles: list[str] = []

    def execute(self, query: str, args: object = None) -> list[tuple[Any, ...]]:
        with self.admin.cursor() as cursor:
            cursor.execute(query, args)
            return list(cursor.fetchall())

    def account(self, user: str, host: str = "%") -> str:
        self.execute("CREATE USER %s@%s", (user, host))
        self.accounts.append((user, host))
        return user

    def role(self, name: str) -> str:
        """A new MariaDB role NAME."""
        self.execute(f"CREATE ROLE {quote(name)}")
        self.roles.append(name)
        return name

    def grant(self, privileges: str, pattern: str, user: str, host: str = "%") -> None:
        """GRANT PRIVILEGES ON `PATTERN`.* (the test's own text) to USER@HOST."""
        on = quote(pattern).replace("%", "%%")  # the driver formats the rest with %
        self.execute(f"GRANT {privileges} ON {on}.* TO %s@%s", (user, host))

    def schema(self, name: str, rows: int = 0, width: int = 100) -> str:
        """A new schema NAME with an InnoDB table of ROWS rows of WIDTH bytes."""
        self.execute(f"CREATE DATABASE {quote(name)}")
        self.schemas.append(name)
        if rows:
            self.table(name, "payload", rows, width)
        return name

    def table(
        self, schema: str, table: str, rows: int, width: int = 100, engine: str = "InnoDB"
    ) -> None:
        self.execute(
            f"CREATE TABLE {quote(schema)}.{quote(table)}"
            f" (id INT AUTO_INCREMENT PRIMARY KEY, v TEXT) ENGINE={engine}"
        )
        self.insert(schema, table, rows, width)

    def insert(self, schema: str, table: str, rows: int, width: int = 100) -> None:
        into = f"{quote(schema)}.{quote(table)}".replace("%", "%%")  # the driver formats with %
        with self.admin.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {into} (v) VALUES (%s)",
                [("v" * width,)] * rows,
            )

    def analyze(self, schema: str) -> None:
        for (table,) in self.execute(
            "SELECT TABLE_NAME FROM information_schema.TABLES"
            " WHERE TABLE_SCHEMA = %s AND ENGINE = 'InnoDB' AND TABLE_TYPE = 'BASE TABLE'",
            (schema,),
        ):
            self.execute(f"ANALYZE TABLE {quote(schema)}.{quote(table)}")

    def table_names(self, schema: str) -> set[str]:
        """SCHEMA's tables (and sequences), views aside."""
        return {
            name
            for (name,) in self.execute(
                "SELECT TABLE_NAME FROM information_schema.TABLES"
                " WHERE TABLE_SCHEMA = %s AND TABLE_TYPE <> 'VIEW'",
                (schema,),
            )
        }

    def size(self, schema: str) -> int:
        """The server's own SUM(DATA_LENGTH + INDEX_LENGTH) of SCHEMA, as it stands."""
        ((total,),) = self.execute(
            "SELECT COALESCE(SUM(DATA_LENGTH + INDEX_LENGTH), 0) FROM information_schema.TABLES"
            " WHERE TABLE_SCHEMA = %s AND TABLE_TYPE <> 'VIEW'",
            (schema,),
        )
        return int(total)

    def datadir(self) -> str:
        ((path,),) = self.execute("SELECT @@datadir")
        return str(path)

    def cleanup(self) -> None:
        for name in self.schemas:
            self.execute(f"DROP DATABASE IF EXISTS {quote(name)}")
        for user, host in self.accounts:
            self.execute("DROP USER IF EXISTS %s@%s", (user, host))
        for role in self.roles:
            self.execute(f"DROP ROLE IF EXISTS {quote(role)}")


def quote(identifier: str) -> str:
    return "`" + identifier.replace("`", "``") + "`"


@pytest.fixture
def mariadb() -> Iterator[MyObjects]:
    try:
        admin = pymysql.connect(
            host=MYSQL_HOST,
            port=MYSQL_PORT,
            user="root",
            password="",
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=5,
        )
    except pymysql.err.MySQLError as exc:
        need(
            f"MariaDB at {MYSQL_HOST}:{MYSQL_PORT} (root, empty password)",
            f"install and start mariadb-server, or set MYSQL_TEST_HOST/PORT ({exc})",
        )
        raise AssertionError("unreachable") from exc
    objects = MyObjects(admin)
    try:
        yield objects
    finally:
        try:
            objects.cleanup()
        finally:
            admin.close()


class SilentServer:
    """A TCP port that accepts connections and never says a word: a hung server."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port: int = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    try:
        yield server
    finally:
        server.close()


class PasswordRefusingPostgres:
    """Speaks just enough of PostgreSQL's protocol to ask for a password and refuse it.

    The machine's server trusts loopback, so a wrong password never fails
    there; this shows what the scanner says when a real one is refused.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port: int = self.sock.getsockname()[1]
        self.passwords: list[bytes] = []
        # accept() wakes up now and then to see whether the test is over:
        # closing a socket does not interrupt another thread's accept().
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    self._session(conn)
                except OSError:
                    continue

    def _session(self, conn: socket.socket) -> None:
        while True:
            length = int.from_bytes(_read(conn, 4), "big")
            body = _read(conn, length - 4)
            if int.from_bytes(body[:4], "big") in {80877103, 80877104}:
                conn.sendall(b"N")  # no SSL, no GSS encryption: go on in plain text
                continue
            break
        conn.sendall(b"R" + (8).to_bytes(4, "big") + (3).to_bytes(4, "big"))  # cleartext, please
        kind = _read(conn, 1)
        length = int.from_bytes(_read(conn, 4), "big")
        payload = _read(conn, length - 4)
        if kind == b"p":
            self.passwords.append(payload.rstrip(b"\0"))
        fields = b'SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user "quotad"\0\0'
        conn.sendall(b"E" + (len(fields) + 4).to_bytes(4, "big") + fields)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def _read(conn: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = conn.recv(count - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


@pytest.fixture
def refusing_postgres() -> Iterator[PasswordRefusingPostgres]:
    server = PasswordRefusingPostgres()
    try:
        yield server
    finally:
        server.close()
