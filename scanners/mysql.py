"""The `mysql` kind: every schema (database) of a MariaDB or MySQL server.

`bytes` depends on `statistics`:

- "analyze" (the default): `ANALYZE TABLE` on every InnoDB table, then the
  sum of `DATA_LENGTH + INDEX_LENGTH` over the schema's tables in
  `information_schema.TABLES`: the pages allocated to each table's data and
  indexes, as of that moment.
- "cached": the same sum without the `ANALYZE`. InnoDB's figures are
  statistics it refreshes on its own only after about 10% of a table's rows
  changed, at most every 10 s, so they can lag behind for good.
- "files": the sum of `st_size` over the regular files in the schema's
  folder under the server's data directory, exactly as a `tree` counts
  them; quotad must then run on the database host.

MyISAM and Aria report their files' lengths, which are always current.
`files` is the number of tables (base tables and sequences; views take no
space). A table the server cannot open (a damaged definition, a missing
engine) makes its schema's measurement fail, naming the table: the sum
without it would under-charge.
"""

from __future__ import annotations

import errno
import re
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Self

import pymysql

from scanners.base import (
    DetailValue,
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
from scanners.paths import display_path
from scanners.tree import UnreadableDirectory, measure_tree

DEFAULT_PORT = 3306
# The server's own schemas: nobody's data, and never a member's to drop.
SYSTEM_SCHEMAS = frozenset({"information_schema", "performance_schema", "mysql", "sys"})
STATISTICS = ("analyze", "cached", "files")

_MAX_TIMEOUT = 365 * 86400

# Tables per ANALYZE statement: one round trip for many, while a statement
# still finishes well within the timeout.
_ANALYZE_BATCH = 50

# The server's error codes: a privilege missing on a table, and a statement
# stopped by max_statement_time.
_ACCESS_DENIED_FOR_TABLE = 1142
_STATEMENT_TIMEOUT = 1969
# What PyMySQL says when a socket read or connect times out.
_TIMED_OUT = "timed out"

_LIST_SCHEMAS_SQL = "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA"
_VISIBILITY_SQL = "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'mysql'"
_FOLDERS_SQL = (
    "SELECT SCHEMA_NAME, CAST(CONVERT(SCHEMA_NAME USING filename) AS BINARY)"
    " FROM information_schema.SCHEMATA"
)
# Only InnoDB estimates; ANALYZE on MyISAM or Aria would read whole indexes
# to learn what their files' lengths already say.
_INNODB_TABLES_SQL = (
    "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES"
    " WHERE ENGINE = 'InnoDB' AND TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED')"
)
_TABLES_SQL = (
    "SELECT TABLE_SCHEMA, TABLE_NAME, DATA_LENGTH, INDEX_LENGTH, TABLE_COMMENT"
    " FROM information_schema.TABLES WHERE TABLE_TYPE <> 'VIEW'"
)
_TABLE_NAMES_SQL = (
    "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES WHERE TABLE_TYPE <> 'VIEW'"
)
_SCHEMA_GRANTS_SQL = (
    "SELECT DISTINCT GRANTEE, TABLE_SCHEMA FROM information_schema.SCHEMA_PRIVILEGES"
)
_GLOBAL_GRANTEES_SQL = (
    "SELECT DISTINCT GRANTEE FROM information_schema.USER_PRIVILEGES"
    " WHERE PRIVILEGE_TYPE <> 'USAGE'"
)


@dataclass(frozen=True, slots=True)
class Server:
    """How to reach the server; the password, if any, comes from the DSN or a file."""

    user: str
    host: str = "localhost"
    port: int = DEFAULT_PORT
    unix_socket: str | None = None
    password: str | None = None
    password_file: Path | None = None

    @property
    def label(self) -> str:
        where = self.unix_socket or f"{self.host}:{self.port}"
        return f"MySQL {where}"


@dataclass(slots=True)
class _Schema:
    """What the server says about one schema."""

    name: str
    size: int = 0
    tables: set[str] = field(default_factory=set)
    # Table -> why its size is unknown.
    broken: dict[str, str] = field(default_factory=dict)
    # Its folder's name under the data directory, in the server's encoding.
    folder: str | None = None


@dataclass(frozen=True, slots=True)
class _Grants:
    """Schema-level grants of every account, and who counts as an administrator."""

    # (user, host, schema pattern) for each account's schema-level grant.
    schema: tuple[tuple[str, str, str], ...]
    admins: frozenset[str]
    fold_case: bool


class MysqlScanner(Scanner):
    """One `mysql_database` resource per schema of the server."""

    kind = "mysql"
    resource_kind = "mysql_database"

    def __init__(
        self,
        name: str,
        server: Server,
        *,
        member_rule: str = "prefix",
        members: Mapping[str, str | None] | None = None,
        exclude: Sequence[str] = (),
        admin_accounts: Sequence[str] = (),
        statistics: str = "analyze",
        datadir: Path | None = None,
        timeout: int = 30,
    ) -> None:
        super().__init__(name)
        self.server = server
        self.member_rule = member_rule
        self.members = dict(members or {})
        self.exclude = frozenset(exclude)
        self.admin_accounts = frozenset(admin_accounts)
        self.statistics = statistics
        self.datadir = datadir
        self.timeout = timeout

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, object], base_dir: Path) -> Self:
        """Options: `dsn`, `password_file`; `member_from` ("prefix" or "grants"), `members`,

        `exclude`, `admin_accounts`, `statistics` ("analyze", "cached" or
        "files"), `datadir` (with "files") and `timeout`.
        """
        reader = Options(options)
        server = parse_dsn(reader.string("dsn", required=True))
        if reader.has("password_file"):
            if server.password is not None:
                raise OptionError("password_file", "give the password in the dsn or here, not both")
            path = reader.path("password_file", base_dir)
            server = Server(server.user, server.host, server.port, server.unix_socket, None, path)
        rule = member_from(reader, ("prefix", "grants"), "prefix")
        members = members_table(reader)
        exclude = reader.string_list("exclude")
        admin_accounts = reader.string_list("admin_accounts")
        if admin_accounts and rule != "grants":
            raise OptionError("admin_accounts", 'only applies with member_from = "grants"')
        statistics = reader.string("statistics", "analyze")
        if statistics not in STATISTICS:
            listed = ", ".join(f'"{s}"' for s in STATISTICS)
            raise OptionError("statistics", f"must be one of {listed}, got {statistics!r}")
        datadir = reader.path("datadir", base_dir) if reader.has("datadir") else None
        if datadir is not None and statistics != "files":
            raise OptionError("datadir", 'only applies with statistics = "files"')
        seconds = timeout(reader)
        if seconds > _MAX_TIMEOUT:
            raise OptionError("timeout", "must be at most 365d")  # PyMySQL's own limit
        reader.finish()
        return cls(
            name,
            server,
            member_rule=rule,
            members=members,
            exclude=exclude,
            admin_accounts=admin_accounts,
            statistics=statistics,
            datadir=datadir,
            timeout=seconds,
        )

    def scan(
        self, progress: Progress | None = None, context: ScanContext | None = None
    ) -> Iterator[ScanItem]:
        """Measure every schema; SourceError if the server cannot be reached or read."""
        del context  # the ledger is never on MySQL
        items = self._measure()
        for done, item in enumerate(items, 1):
            yield item
            if progress is not None:
                progress(item.name, done, len(items))

    def attribute(self, schema: str, grants: _Grants | None = None) -> Attribution:
        """Whose SCHEMA is: the `members` table, then the rule."""
        exception = by_exception(schema, self.members)
        if exception is not None:
            return exception
        if self.member_rule == "prefix" or grants is None:
            return by_prefix(schema)
        holders = self.holders(schema, grants)
        if not holders:
            return Attribution(None, "no account but administrators holds privileges on it")
        if len(holders) > 1:
            return Attribution(
                None, f"several accounts hold privileges on it: {', '.join(sorted(holders))}"
            )
        (holder,) = holders
        if not is_member_name(holder):
            return Attribution(None, f"the account {holder!r} is not a member name")
        return Attribution(holder)

    def holders(self, schema: str, grants: _Grants) -> set[str]:
        """The user names, administrators aside, with a schema-level grant covering SCHEMA."""
        found = set()
        for user, host, pattern in grants.schema:
            # An empty host is a MariaDB role, not an account; an empty user
            # is the anonymous account, nobody in particular.
            if not user or not host or user in grants.admins or user in self.admin_accounts:
                continue
            if grant_matches(pattern, schema, fold_case=grants.fold_case):
                found.add(user)
        return found

    def _measure(self) -> list[ScanItem]:
        conn, password = self._connect()
        try:
            session = _Session(conn, self.server.label, password, self.timeout)
            names = self._schemas(session)
            schemas = {name: _Schema(name) for name in names}
            if self.statistics == "files":
                self._read_files(session, schemas)
            else:
                failed = self._analyze(session, names) if self.statistics == "analyze" else {}
                self._read_statistics(session, schemas, failed)
            grants = self._grants(session) if self.member_rule == "grants" else None
            gone = self._measure_folders(session, schemas) if self.statistics == "files" else set()
        finally:
            conn.close()
        items: list[ScanItem] = []
        for schema in sorted(schemas.values(), key=lambda s: s.name):
            if schema.name in gone:
                continue
            who = self.attribute(schema.name, grants)
            if schema.broken:
                table, why = min(schema.broken.items())
                error = f"table {table!r} cannot be measured: {why}"
                if len(schema.broken) > 1:
                    error += f" (and {len(schema.broken) - 1} more)"
                items.append(ResourceFailure(who.member, self.resource_kind, schema.name, error))
                continue
            detail: dict[str, DetailValue] = dict(who.detail())
            if schema.folder is not None:
                detail["folder"] = schema.folder
            items.append(
                Measurement(
                    who.member,
                    self.resource_kind,
                    schema.name,
                    schema.size,
                    len(schema.tables),
                    detail,
                )
            )
        return items

    def _connect(self) -> tuple[Any, str | None]:
        """An open connection, and the password it used (to keep it out of messages)."""
        return connect(self.server, self.timeout)

    def _schemas(self, session: _Session) -> list[str]:
        if "MariaDB" in session.conn.get_server_info():
            # The server stops work the client no longer waits for.
            session.query(
                "setting up the session", "SET SESSION max_statement_time = %s", (self.timeout,)
            )
        # information_schema leaves out, without a word, whatever the account
        # has no privilege on, which would under-charge. An account that sees
        # the mysql schema's tables holds SELECT on *.* (or a role with it).
        ((visible,),) = session.query("checking the account's privileges", _VISIBILITY_SQL)
        if not visible:
            raise SourceError(
                f"{self.server.label}: the account cannot see every table, so sizes would be "
                "too small: grant it SELECT ON *.*"
            )
        rows = session.query("listing the schemas", _LIST_SCHEMAS_SQL)
        return sorted(
            name for (name,) in rows if name not in SYSTEM_SCHEMAS and name not in self.exclude
        )

    def _analyze(self, session: _Session, names: Sequence[str]) -> dict[str, dict[str, str]]:
        """ANALYZE every InnoDB table of NAMES; schema -> table -> error, for those that failed."""
        wanted = set(names)
        by_schema: dict[str, list[str]] = {}
        for schema, table in session.query("listing InnoDB tables", _INNODB_TABLES_SQL):
            if schema in wanted:
                by_schema.setdefault(schema, []).append(table)
        failed: dict[str, dict[str, str]] = {}
        for schema, unsorted in sorted(by_schema.items()):
            tables = sorted(unsorted)
            for start in range(0, len(tables), _ANALYZE_BATCH):
                batch = tables[start : start + _ANALYZE_BATCH]
                # Identifiers cannot be parameters: each is quoted as the
                # server reads it, a backquote doubled; nothing else is special.
                names_sql = ", ".join(f"{quote(schema)}.{quote(table)}" for table in batch)
                rows = session.query(
                    f"ANALYZE TABLE in schema {schema!r}",
                    f"ANALYZE LOCAL TABLE {names_sql}",
                    denied=(
                        "ANALYZE TABLE needs the SELECT and INSERT privileges on every table; "
                        'grant them to the scanner\'s account, or set statistics = "cached"'
                    ),
                )
                for label, _op, kind, text in rows:
                    if str(kind).lower() == "error":
                        table = str(label).removeprefix(f"{schema}.")
                        failed.setdefault(schema, {}).setdefault(table, str(text))
        return failed

    def _read_statistics(
        self,
        session: _Session,
        schemas: dict[str, _Schema],
        failed: Mapping[str, Mapping[str, str]],
    ) -> None:
        rows = session.query("reading the table statistics", _TABLES_SQL)
        for schema_name, table, data, index, comment in rows:
            schema = schemas.get(schema_name)
            if schema is None:
                continue
            schema.tables.add(table)
            if data is None:
                # The server could not open the table; it says why here.
                schema.broken[table] = comment or "the server gives no size"
                continue
            schema.size += exact(data) + exact(index or 0)
        # A table ANALYZE failed on, which still exists, may report any age
        # of statistics; one that is gone since was dropped meanwhile.
        for schema_name, tables in failed.items():
            schema = schemas[schema_name]
            for table, why in tables.items():
                if table in schema.tables:
                    schema.broken.setdefault(table, f"ANALYZE TABLE failed: {why}")

    def _read_files(self, session: _Session, schemas: dict[str, _Schema]) -> None:
        for schema_name, table in session.query("listing the tables", _TABLE_NAMES_SQL):
            if schema_name in schemas:
                schemas[schema_name].tables.add(table)
        # The server's own mapping from a schema name to its folder name
        # ("a-b" is "a@002db"), so quotad never has to reimplement it.
        for schema_name, folder in session.query("mapping schemas to folders", _FOLDERS_SQL):
            if schema_name in schemas:
                # Pure ASCII: the encoding escapes everything else as @XXXX.
                schemas[schema_name].folder = bytes(folder).decode("ascii", "replace")

    def _measure_folders(self, session: _Session, schemas: dict[str, _Schema]) -> set[str]:
        """Size each schema's folder; return the schemas dropped since the listing."""
        datadir = self.datadir
        if datadir is None:
            ((text,),) = session.query("reading the data directory", "SELECT @@datadir")
            datadir = Path(text)
        if not datadir.is_dir():
            raise SourceError(
                f'{self.server.label}: statistics = "files" reads the server\'s files, but '
                f"{display_path(datadir)} is no folder here: run quotad on the database host, "
                "or set datadir"
            )
        missing: list[_Schema] = []
        for schema in schemas.values():
            if schema.folder is None:
                missing.append(schema)
                continue
            try:
                schema.size, _files = measure_tree(datadir / schema.folder)
            except UnreadableDirectory as exc:
                if exc.errno == errno.ENOENT:
                    missing.append(schema)
                else:
                    schema.broken["(folder)"] = str(exc)
        if not missing:
            return set()
        still_there = {name for (name,) in session.query("listing the schemas", _LIST_SCHEMAS_SQL)}
        gone = set()
        for schema in missing:
            if schema.name not in still_there:
                gone.add(schema.name)
                continue
            schema.broken["(folder)"] = (
                f"no folder {display_path(datadir / (schema.folder or '?'))}; "
                "is datadir the server's?"
            )
        return gone

    def _grants(self, session: _Session) -> _Grants:
        # information_schema shows an account only its own grants unless it
        # may read the mysql schema: fail rather than see too few holders.
        session.query(
            "reading grants",
            "SELECT 1 FROM mysql.db LIMIT 0",
            denied='member_from = "grants" needs SELECT on the mysql schema, to see every grant',
        )
        ((lower,),) = session.query("reading grants", "SELECT @@lower_case_table_names")
        admins = {
            split_grantee(grantee)[0]
            for (grantee,) in session.query("reading global grants", _GLOBAL_GRANTEES_SQL)
        }
        schema = [
            (*split_grantee(grantee), pattern)
            for grantee, pattern in session.query("reading schema grants", _SCHEMA_GRANTS_SQL)
        ]
        return _Grants(tuple(sorted(set(schema))), frozenset(admins), int(lower) != 0)


class _Session:
    """One connection's queries, every driver error turned into a SourceError."""

    def __init__(self, conn: Any, label: str, password: str | None, timeout: int) -> None:
        self.conn = conn
        self.label = label
        self.password = password
        self.timeout = timeout

    def query(
        self,
        what: str,
        sql: str,
        args: Sequence[object] | None = None,
        *,
        denied: str | None = None,
    ) -> list[tuple[Any, ...]]:
        """Every row of SQL; DENIED is the advice when the account lacks a privilege."""
        try:
            with self.conn.cursor() as cursor:
                cursor.execute(sql, args)
                return list(cursor.fetchall())
        except pymysql.err.MySQLError as exc:
            message = redact(error_message(exc), self.password)
            label = self.label
            if _TIMED_OUT in message or error_code(exc) == _STATEMENT_TIMEOUT:
                raise SourceError(
                    f"{label}: {what}: no answer within {self.timeout} s (timeout)"
                ) from None
            if denied is not None and error_code(exc) == _ACCESS_DENIED_FOR_TABLE:
                raise SourceError(f"{label}: {what}: {message}: {denied}") from None
            raise SourceError(f"{label}: {what}: {message}") from None


def quote(identifier: str) -> str:
    """IDENTIFIER as a quoted MySQL identifier: in backquotes, each backquote doubled."""
    return "`" + identifier.replace("`", "``") + "`"


def exact(value: object) -> int:
    """A size the driver returned (int, or Decimal for sums) as an int, refusing fractions."""
    if isinstance(value, bool):
        raise TypeError("a size cannot be a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return int(value)
    raise ValueError(f"not a whole number of bytes: {value!r}")


def grant_matches(pattern: str, schema: str, *, fold_case: bool = False) -> bool:
    """Whether a schema-level grant on PATTERN covers SCHEMA, as the server decides.

    `%` and `_` are wildcards in such grants (`GRANT ... ON alice_blog.*`
    covers `alice-blog` too) and a backslash makes the next one literal.
    """
    if fold_case:
        pattern, schema = pattern.lower(), schema.lower()
    return _grant_regex(pattern).fullmatch(schema) is not None


def _grant_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    chars = iter(pattern)
    for char in chars:
        if char == "\\":
            parts.append(re.escape(next(chars, "\\")))
        elif char == "%":
            parts.append(".*")
        elif char == "_":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.DOTALL)


def split_grantee(grantee: str) -> tuple[str, str]:
    """("alice", "%") from information_schema's "'alice'@'%'"."""
    at = grantee.rfind("'@'")
    if not (grantee.startswith("'") and grantee.endswith("'")) or at < 0:
        return grantee, ""
    return grantee[1:at], grantee[at + 3 : -1]


def connect(server: Server, timeout: int) -> tuple[Any, str | None]:
    """An open connection to SERVER, and the password it used (to keep it out of messages).

    SourceError if it cannot be had within TIMEOUT seconds.
    """
    password = server.password
    if server.password_file is not None:
        password = _read_password(server.password_file)
    try:
        conn = pymysql.connect(
            host=server.host,
            port=server.port,
            unix_socket=server.unix_socket,
            user=server.user,
            password=password or "",
            charset="utf8mb4",
            connect_timeout=timeout,
            read_timeout=timeout,
            write_timeout=timeout,
            autocommit=True,
            # No LOAD DATA LOCAL: quotad never sends a file.
            local_infile=False,
        )
    except pymysql.err.MySQLError as exc:
        message = redact(error_message(exc), password)
        if _TIMED_OUT in message:
            raise SourceError(
                f"{server.label}: no connection within {timeout} s (timeout)"
            ) from None
        raise SourceError(f"{server.label}: cannot connect: {message}") from None
    except OSError as exc:
        # A unix socket path that is not one, say.
        raise SourceError(f"{server.label}: cannot connect: {exc.strerror or exc}") from None
    return conn, password


def parse_dsn(text: str) -> Server:
    """A Server from "mysql://user[:password]@host[:port]/[?unix_socket=PATH]"."""
    # Never quote TEXT in an error: it may hold the password.
    example = 'such as "mysql://quotad@db1:3306/"'
    parts = urllib.parse.urlsplit(text.strip())
    if parts.scheme not in {"mysql", "mariadb"}:
        raise OptionError("dsn", f"must be a mysql:// URL {example}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise OptionError("dsn", f"the port is not a number (expected a URL {example})") from None
    if parts.path not in {"", "/"} or parts.fragment:
        raise OptionError("dsn", f"must not name a database or fragment (a URL {example})")
    if not parts.username:
        raise OptionError("dsn", f"needs a user name (a URL {example})")
    unix_socket = None
    for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if key != "unix_socket" or not value:
            raise OptionError("dsn", f"unknown parameter {key!r} (only unix_socket=PATH)")
        unix_socket = value
    if not parts.hostname and unix_socket is None:
        raise OptionError("dsn", f"needs a host, or ?unix_socket=PATH (a URL {example})")
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    return Server(
        user=urllib.parse.unquote(parts.username),
        host=parts.hostname or "localhost",
        port=port,
        unix_socket=unix_socket,
        password=password,
    )


def _read_password(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        problem = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise SourceError(f"cannot read password_file {display_path(path)}: {problem}") from exc


def error_code(exc: pymysql.err.MySQLError) -> int | None:
    code = exc.args[0] if exc.args else None
    return code if isinstance(code, int) else None


def error_message(exc: pymysql.err.MySQLError) -> str:
    """The server's or the driver's sentence, without the error code."""
    text = exc.args[1] if len(exc.args) > 1 else str(exc)
    return one_line(str(text)) or type(exc).__name__
