"""The `postgres` kind: every database of a PostgreSQL server, sized with `pg_database_size()`.

`bytes` is what `pg_database_size(oid)` returns: every file of the
database's own directory in each tablespace (tables, indexes, TOAST, free
space and visibility maps, unlogged and not-yet-vacuumed space), which is
what the database takes on disk; the cluster's shared catalogs and WAL are
nobody's. `files` is 0: a database's files are the server's business, not
something a member manages.

Templates are never measured. A database that does not allow connections is
measured all the same, since sizing it needs no connection. The list of
databases is read first, then all of them are sized in one statement; when
that statement fails (a database dropped in between, as seen by a role that
is not a superuser, or one the scanner may not size), each is sized on its
own so that only the culprit is affected: a dropped one is gone, any other
fails alone and keeps its earlier value.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

from scanners.base import (
    Measurement,
    OptionError,
    Progress,
    ResourceFailure,
    ScanContext,
    ScanItem,
    Scanner,
    SourceError,
    is_member_name,
)
from scanners.databases import (
    Attribution,
    by_exception,
    by_prefix,
    member_from,
    members_table,
    one_line,
    redact,
    timeout,
)
from scanners.options import Options

DEFAULT_PORT = 5432
DEFAULT_EXCLUDE = ("postgres",)

# Templates hold nobody's data and template0 cannot even be connected to;
# the excluded names come as one array parameter, never spliced into SQL.
_LIST_SQL = """
SELECT d.oid, d.datname, r.rolname, r.rolsuper
FROM pg_catalog.pg_database AS d
JOIN pg_catalog.pg_roles AS r ON r.oid = d.datdba
WHERE NOT d.datistemplate AND d.datname <> ALL(%s::text[])
ORDER BY d.datname
"""

# NULL for a database dropped since the listing: the superuser's path in
# pg_database_size() finds no directory and reports "no size".
_SIZE_ALL_SQL = "SELECT o, pg_catalog.pg_database_size(o) FROM unnest(%s::oid[]) AS o"
_SIZE_ONE_SQL = "SELECT pg_catalog.pg_database_size(%s::oid)"


@dataclass(frozen=True, slots=True)
class _Database:
    oid: int
    name: str
    owner: str
    owner_is_superuser: bool


@dataclass(frozen=True, slots=True)
class _Ledger:
    """Where the ledger's own PostgreSQL database is, from its SQLAlchemy URL."""

    host: str | None
    port: int
    dbname: str


class PostgresScanner(Scanner):
    """One `postgres_database` resource per database of the server."""

    kind = "postgres"
    resource_kind = "postgres_database"

    def __init__(
        self,
        name: str,
        dsn: str,
        *,
        member_rule: str = "owner",
        members: Mapping[str, str | None] | None = None,
        exclude: Sequence[str] = DEFAULT_EXCLUDE,
        timeout: int = 30,
    ) -> None:
        super().__init__(name)
        self.dsn = dsn
        self.member_rule = member_rule
        self.members = dict(members or {})
        self.exclude = tuple(exclude)
        self.timeout = timeout
        params = conninfo_to_dict(dsn)
        self._password = _text(params.get("password"))
        self.label = _label(params)

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, object], base_dir: Path) -> Self:
        """Options: `dsn`; `member_from` ("owner" or "prefix"), `members`, `exclude`, `timeout`."""
        del base_dir  # a libpq DSN names its own files (passfile, sslrootcert)
        reader = Options(options)
        dsn = reader.string("dsn", required=True)
        try:
            conninfo_to_dict(dsn)
        except psycopg.ProgrammingError:
            # libpq's message quotes the text around the fault, which may be
            # the password: say what is expected instead.
            raise OptionError(
                "dsn",
                'not a libpq connection string ("host=db1 user=quotad dbname=postgres") '
                'or URI ("postgresql://quotad@db1/postgres"); not shown, as it may hold a password',
            ) from None
        rule = member_from(reader, ("owner", "prefix"), "owner")
        members = members_table(reader)
        exclude = reader.string_list("exclude", DEFAULT_EXCLUDE)
        seconds = timeout(reader)
        reader.finish()
        return cls(name, dsn, member_rule=rule, members=members, exclude=exclude, timeout=seconds)

    def scan(
        self, progress: Progress | None = None, context: ScanContext | None = None
    ) -> Iterator[ScanItem]:
        """Measure every database; SourceError if the server cannot be reached or read."""
        ledger = _ledger(context.ledger_url if context is not None else None)
        items = self._measure(ledger)
        for done, item in enumerate(items, 1):
            yield item
            if progress is not None:
                progress(item.name, done, len(items))

    def attribute(self, database: str, owner: str, owner_is_superuser: bool) -> Attribution:
        """Whose DATABASE (owned by role OWNER) is: the `members` table, then the rule."""
        exception = by_exception(database, self.members)
        if exception is not None:
            return exception
        if self.member_rule == "prefix":
            return by_prefix(database)
        if owner_is_superuser:
            # The superuser owns what the administrators made (the ledger,
            # `postgres`, tools' databases); charging a member "postgres"
            # would only register one.
            return Attribution(None, f"the owner {owner!r} is a superuser")
        if not is_member_name(owner):
            return Attribution(None, f"the owner {owner!r} is not a member name")
        return Attribution(owner)

    def _measure(self, ledger: _Ledger | None) -> list[ScanItem]:
        with self._connect() as conn:
            exclude = list(self.exclude)
            if ledger is not None and ledger.dbname not in exclude and _same_server(conn, ledger):
                exclude.append(ledger.dbname)
            databases = self._run(conn, "listing the databases", _LIST_SQL, (exclude,))
            listed = [
                _Database(int(oid), name, owner, bool(s)) for oid, name, owner, s in databases
            ]
            sizes = self._sizes(conn, listed)
        items: list[ScanItem] = []
        for database in listed:
            size = sizes.get(database.oid)
            if size is None:
                continue  # dropped since the listing
            who = self.attribute(database.name, database.owner, database.owner_is_superuser)
            if isinstance(size, str):
                items.append(ResourceFailure(who.member, self.resource_kind, database.name, size))
                continue
            detail = {"owner": database.owner, **who.detail()}
            items.append(
                Measurement(who.member, self.resource_kind, database.name, size, 0, detail)
            )
        return items

    def _sizes(
        self, conn: psycopg.Connection[TupleRow], databases: list[_Database]
    ) -> dict[int, int | str]:
        """OID -> bytes, or why it could not be sized; a dropped database is left out."""
        oids = [d.oid for d in databases]
        if not oids:
            return {}
        try:
            rows = conn.execute(_SIZE_ALL_SQL, (oids,)).fetchall()
        except psycopg.Error as exc:
            self._raise_if_fatal(conn, exc, "sizing the databases")
        else:
            return {int(oid): int(size) for oid, size in rows if size is not None}
        # One database spoiled the statement: size each alone, so that the
        # others still count. Autocommit makes each its own transaction.
        result: dict[int, int | str] = {}
        for database in databases:
            try:
                row = conn.execute(_SIZE_ONE_SQL, (database.oid,)).fetchone()
            except pg_errors.InvalidCatalogName:
                continue  # "database with OID n does not exist": dropped meanwhile
            except psycopg.Error as exc:
                self._raise_if_fatal(conn, exc, f"sizing database {database.name!r}")
                result[database.oid] = self._failure(database, exc)
                continue
            if row is not None and row[0] is not None:
                result[database.oid] = int(row[0])
        return result

    def _failure(self, database: _Database, exc: psycopg.Error) -> str:
        message = redact(one_line(str(exc)), self._password)
        if isinstance(exc, pg_errors.InsufficientPrivilege):
            message += " (grant the scanner's role pg_read_all_stats, or CONNECT on the database)"
        return f"cannot size database {database.name!r}: {message}"

    def _connect(self) -> psycopg.Connection[TupleRow]:
        params = conninfo_to_dict(self.dsn)
        extra: dict[str, str | int] = {"connect_timeout": self.timeout}
        if "application_name" not in params:
            extra["application_name"] = f"quotad scanner {self.name}"
        try:
            conn = psycopg.connect(make_conninfo(self.dsn, **extra), autocommit=True)
        except psycopg.errors.ConnectionTimeout:
            raise SourceError(
                f"{self.label}: no connection within {max(self.timeout, 2)} s (timeout)"
            ) from None
        except psycopg.Error as exc:
            message = redact(one_line(str(exc)), self._password)
            raise SourceError(f"{self.label}: cannot connect: {message}") from None
        try:
            # Each statement gets the same budget as the connection; the
            # scanner only reads, so a read-only session costs nothing.
            conn.execute(
                "SELECT pg_catalog.set_config('statement_timeout', %s, false),"
                " pg_catalog.set_config('default_transaction_read_only', 'on', false)",
                (f"{self.timeout}s",),
            )
        except psycopg.Error as exc:
            message = redact(one_line(str(exc)), self._password)
            conn.close()
            raise SourceError(f"{self.label}: setting up the session: {message}") from None
        return conn

    def _run(
        self, conn: psycopg.Connection[TupleRow], what: str, query: str, params: Sequence[object]
    ) -> list[tuple[Any, ...]]:
        try:
            return conn.execute(query, params).fetchall()
        except psycopg.Error as exc:
            self._raise_if_fatal(conn, exc, what)
            message = redact(one_line(str(exc)), self._password)
            raise SourceError(f"{self.label}: {what}: {message}") from None

    def _raise_if_fatal(
        self, conn: psycopg.Connection[TupleRow], exc: psycopg.Error, what: str
    ) -> None:
        """SourceError if EXC ends the whole scan: a timeout or a lost connection."""
        if isinstance(exc, pg_errors.QueryCanceled):
            raise SourceError(
                f"{self.label}: {what} took more than {self.timeout} s (timeout)"
            ) from None
        if conn.closed or conn.broken:
            message = redact(one_line(str(exc)), self._password)
            raise SourceError(f"{self.label}: connection lost while {what}: {message}") from None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _label(params: Mapping[str, object]) -> str:
    """Where the server is, for messages: host, port and database, never the password."""
    host = _text(params.get("host")) or "the local socket"
    port = _text(params.get("port"))
    dbname = _text(params.get("dbname"))
    where = f"{host}:{port}" if port else host
    return f"PostgreSQL {where}" + (f"/{dbname}" if dbname else "")


def _ledger(url: str | None) -> _Ledger | None:
    """The ledger's host, port and database when it is on PostgreSQL."""
    if not url:
        return None
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme.startswith(("postgresql", "postgres")):
        return None
    query = urllib.parse.parse_qs(parts.query)
    host = parts.hostname or next(iter(query.get("host", [])), None)
    try:
        port = parts.port or int(next(iter(query.get("port", [])), DEFAULT_PORT))
    except ValueError:
        return None
    dbname = urllib.parse.unquote(parts.path.lstrip("/"))
    if not dbname:
        return None
    return _Ledger(host, port, dbname)


def _same_server(conn: psycopg.Connection[TupleRow], ledger: _Ledger) -> bool:
    """Whether CONN's server is the ledger's: same port and the same host after normalising.

    Loopback addresses, `localhost` and socket folders are all this host;
    other names match when one of the ledger host's addresses is the one
    the scanner is connected to.
    """
    info = conn.info
    if info.port != ledger.port:
        return False
    ours, theirs = info.host or "", ledger.host or ""
    ours_local, theirs_local = _is_local(ours, info.hostaddr), _is_local(theirs, None)
    if ours_local or theirs_local:
        return ours_local and theirs_local
    return ours.lower() == theirs.lower() or info.hostaddr in _addresses(theirs, ledger.port)


def _addresses(host: str, port: int) -> set[str]:
    """HOST's addresses; none when it does not resolve."""
    try:
        return {str(a[4][0]) for a in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except OSError:
        return set()


def _is_local(host: str, hostaddr: str | None) -> bool:
    if not host or host.startswith("/") or host.lower() == "localhost":
        return True
    for candidate in (hostaddr, host):
        if candidate:
            try:
                if ipaddress.ip_address(candidate).is_loopback:
                    return True
            except ValueError:
                continue
    return False
