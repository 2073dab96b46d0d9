"""The `mysql` enforcer: a schema's accounts lose the privileges that add data, and get them back.

restrict takes from every account and role holding privileges on the schema
(administrators aside) the privileges in RESTRICTED, at every level where it
holds them: its schema-level grant, its grants on the schema's tables and on
their columns. SELECT, DELETE, DROP and the rest stay, so the member can
still read, delete rows, truncate and drop tables. lift grants back exactly
what restrict took, so that `SHOW GRANTS` is what it was.

A grant on a pattern (`alice\\_%`) also covers other schemas, so it is never
changed. MariaDB takes a schema's privileges from the single most specific
`mysql.db` row of an account that matches it, not from all of them: restrict
adds a row for exactly this schema holding what the pattern grants minus
RESTRICTED, which overrides the pattern here and nowhere else, and lift
removes that row again.

A session whose current schema is the restricted one keeps the privileges it
had when it entered the schema (MariaDB caches them per session until the
next `USE`), so restrict ends such sessions unless `kill_sessions = false`.

MariaDB 10.4 or later: the accounts are read from `mysql.global_priv`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import pymysql

from quotad.enforcers.base import Enforcer, EnforcerError, Saved, Target
from scanners.base import OptionError, Scanner, SourceError
from scanners.databases import redact
from scanners.mysql import (
    MysqlScanner,
    Server,
    connect,
    error_code,
    error_message,
    grant_matches,
    parse_dsn,
    quote,
)
from scanners.options import Options

# What a restricted account may no longer do on the schema: each of these
# adds data or objects. Kept: SELECT, DELETE, DROP (TRUNCATE and DROP TABLE
# free space), DELETE HISTORY, LOCK TABLES (mysqldump takes a backup with
# it), SHOW VIEW, EXECUTE, REFERENCES (unused by MariaDB), GRANT OPTION, and
# ALTER ROUTINE, TRIGGER and EVENT: the same privilege that makes a routine,
# trigger or event is the one that drops it, and it runs with its definer's
# privileges, which are restricted too.
RESTRICTED = (
    "INSERT",
    "UPDATE",
    "CREATE",
    "ALTER",
    "INDEX",
    "CREATE TEMPORARY TABLES",
    "CREATE VIEW",
    "CREATE ROUTINE",
)
_RESTRICTED = frozenset(RESTRICTED)

# mysql.db's columns and the privilege each stands for, in GRANT's order.
_DB_COLUMNS = {
    "Select_priv": "SELECT",
    "Insert_priv": "INSERT",
    "Update_priv": "UPDATE",
    "Delete_priv": "DELETE",
    "Create_priv": "CREATE",
    "Drop_priv": "DROP",
    "Grant_priv": "GRANT OPTION",
    "References_priv": "REFERENCES",
    "Index_priv": "INDEX",
    "Alter_priv": "ALTER",
    "Create_tmp_table_priv": "CREATE TEMPORARY TABLES",
    "Lock_tables_priv": "LOCK TABLES",
    "Create_view_priv": "CREATE VIEW",
    "Show_view_priv": "SHOW VIEW",
    "Create_routine_priv": "CREATE ROUTINE",
    "Alter_routine_priv": "ALTER ROUTINE",
    "Execute_priv": "EXECUTE",
    "Event_priv": "EVENT",
    "Trigger_priv": "TRIGGER",
    "Delete_history_priv": "DELETE HISTORY",
}
_ORDER = {name: i for i, name in enumerate(_DB_COLUMNS.values())}
# Members of the SET columns of mysql.tables_priv and mysql.columns_priv.
_TABLE_SET = {
    "Select": "SELECT",
    "Insert": "INSERT",
    "Update": "UPDATE",
    "Delete": "DELETE",
    "Create": "CREATE",
    "Drop": "DROP",
    "Grant": "GRANT OPTION",
    "References": "REFERENCES",
    "Index": "INDEX",
    "Alter": "ALTER",
    "Create View": "CREATE VIEW",
    "Show view": "SHOW VIEW",
    "Trigger": "TRIGGER",
    "Delete versioning rows": "DELETE HISTORY",
}
# Global privileges that restricting one schema cannot take away.
_GLOBAL_WRITE_COLUMNS = [c for c, p in _DB_COLUMNS.items() if p in _RESTRICTED]

# The server's own accounts; never touched, whatever they hold.
SYSTEM_ACCOUNTS = frozenset({"root", "mariadb.sys", "mysql"})

# Server errors: no such table, no such column, no such grant, no such thread.
_NO_SUCH_TABLE = 1146
_NO_SUCH_COLUMN = 1054
_NO_SUCH_GRANT = (1141, 1147)
_NO_SUCH_THREAD = 1094

_ACCOUNTS_SQL = (
    "SELECT User, Host, CAST(JSON_VALUE(Priv, '$.access') AS UNSIGNED),"
    " COALESCE(JSON_VALUE(Priv, '$.is_role'), '0') IN ('1', 'true')"
    " FROM mysql.global_priv"
)
_GLOBAL_WRITES_SQL = f"SELECT User, Host, {', '.join(_GLOBAL_WRITE_COLUMNS)} FROM mysql.user"  # noqa: S608 - our own column names
_DB_SQL = f"SELECT User, Host, Db, {', '.join(_DB_COLUMNS)} FROM mysql.db"  # noqa: S608 - our own column names
_TABLES_SQL = "SELECT User, Host, Table_name, Table_priv FROM mysql.tables_priv WHERE Db = %s"
_COLUMNS_SQL = (
    "SELECT User, Host, Table_name, Column_name, Column_priv FROM mysql.columns_priv WHERE Db = %s"
)
_SCHEMA_SQL = "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s"
_SESSIONS_SQL = (
    "SELECT ID, USER FROM information_schema.PROCESSLIST"
    " WHERE DB = %s AND ID <> CONNECTION_ID() AND COMMAND <> 'Daemon'"
)


@dataclass(frozen=True, slots=True, order=True)
class Grantee:
    """An account (user@host) or a role (host "")."""

    user: str
    host: str
    role: bool = False

    @property
    def label(self) -> str:
        return f"role '{self.user}'" if self.role else f"'{self.user}'@'{self.host}'"

    def json(self) -> dict[str, Any]:
        return {"user": self.user, "host": self.host, "role": self.role}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Grantee:
        return cls(str(value["user"]), str(value["host"]), bool(value["role"]))


@dataclass(slots=True)
class _Account:
    role: bool
    admin: bool
    global_writes: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _State:
    """The grants on one schema as the server holds them now."""

    accounts: dict[tuple[str, str], _Account]
    # (user, host, Db pattern) -> privileges, for the rows covering the schema.
    schema: dict[tuple[str, str, str], list[str]]
    # (user, host, table) -> privileges.
    tables: dict[tuple[str, str, str], list[str]]
    # (user, host, table, column) -> privileges.
    columns: dict[tuple[str, str, str, str], list[str]]


def escape_pattern(schema: str) -> str:
    """SCHEMA as a grant pattern that covers it alone: wildcards and backslashes escaped."""
    return "".join("\\" + c if c in "\\%_" else c for c in schema)


def is_pattern(db: str) -> bool:
    """Whether a grant's Db has an unescaped wildcard, so it may cover other schemas."""
    chars = iter(db)
    for char in chars:
        if char == "\\":
            next(chars, None)
        elif char in "%_":
            return True
    return False


def _ordered(privileges: Iterable[str]) -> list[str]:
    return sorted(set(privileges), key=lambda p: _ORDER.get(p, len(_ORDER)))


def _set_members(value: object) -> list[str]:
    """Privileges from a SET column ("Select,Insert"); PyMySQL may hand it over as a set."""
    if isinstance(value, (set, frozenset)):
        members: Iterable[object] = value
    else:
        members = str(value or "").split(",")
    return _ordered(_TABLE_SET[str(m)] for m in members if str(m) in _TABLE_SET)


class _Connection:
    """One connection; every driver error becomes a one-line EnforcerError."""

    def __init__(self, conn: Any, label: str, password: str | None) -> None:
        self.conn = conn
        self.label = label
        self.password = password

    def query(self, sql: str, args: Sequence[object] | None = None) -> list[tuple[Any, ...]]:
        try:
            with self.conn.cursor() as cursor:
                cursor.execute(sql, args)
                return list(cursor.fetchall())
        except pymysql.err.MySQLError as exc:
            raise self.error(exc, sql) from None

    def run(self, sql: str, ignore: Iterable[int] = ()) -> bool:
        """Execute SQL (no parameters); False if it failed with an error code in IGNORE."""
        try:
            with self.conn.cursor() as cursor:
                cursor.execute(sql)
        except pymysql.err.MySQLError as exc:
            if error_code(exc) in set(ignore):
                return False
            raise self.error(exc, sql) from None
        return True

    def error(self, exc: pymysql.err.MySQLError, sql: str) -> EnforcerError:
        # The whole statement: it names the account and the privileges, and
        # never holds a password (quotad never sets one).
        statement = " ".join(sql.split())
        message = redact(error_message(exc), self.password)
        return EnforcerError(f"{self.label}: {statement}: {message}")

    def literal(self, text: str) -> str:
        return str(self.conn.escape(text))

    def grantee(self, grantee: Grantee) -> str:
        if grantee.role:
            return self.literal(grantee.user)
        return f"{self.literal(grantee.user)}@{self.literal(grantee.host)}"

    def close(self) -> None:
        self.conn.close()


class MysqlEnforcer(Enforcer):
    """Restricts `mysql_database` resources: one schema each, named by `target.name`."""

    source_kind = "mysql"
    OPTIONS = frozenset(
        {"enforce_dsn", "enforce_password_file", "kill_sessions", "exempt_accounts"}
    )

    def __init__(
        self,
        scanner: MysqlScanner,
        *,
        server: Server | None = None,
        kill_sessions: bool = True,
        exempt_accounts: Sequence[str] = (),
    ) -> None:
        super().__init__(scanner)
        self.mysql = scanner
        self.server = server or scanner.server
        self.kill_sessions = kill_sessions
        # User names never restricted: the source's administrators too.
        self.exempt = frozenset(exempt_accounts) | scanner.admin_accounts

    @classmethod
    def from_options(cls, scanner: Scanner, options: Mapping[str, object], base_dir: Path) -> Self:
        """Options: `enforce_dsn` and `enforce_password_file` (the scanner's account by default),

        `kill_sessions` (true), `exempt_accounts` (user names never restricted).
        """
        if not isinstance(scanner, MysqlScanner):
            raise TypeError(
                f"the mysql enforcer needs a mysql scanner, got {type(scanner).__name__}"
            )
        reader = Options(options)
        server = None
        if reader.has("enforce_dsn"):
            try:
                server = parse_dsn(reader.string("enforce_dsn"))
            except OptionError as exc:
                raise OptionError("enforce_dsn", exc.problem) from None
        if reader.has("enforce_password_file"):
            if server is None:
                raise OptionError("enforce_password_file", "only applies with enforce_dsn")
            if server.password is not None:
                raise OptionError(
                    "enforce_password_file", "give the password in enforce_dsn or here, not both"
                )
            path = reader.path("enforce_password_file", base_dir)
            server = Server(server.user, server.host, server.port, server.unix_socket, None, path)
        kill_sessions = reader.boolean("kill_sessions", default=True)
        exempt = reader.string_list("exempt_accounts")
        reader.finish()
        return cls(scanner, server=server, kill_sessions=kill_sessions, exempt_accounts=exempt)

    @classmethod
    def available(cls, scanner: Scanner) -> str | None:
        if not isinstance(scanner, MysqlScanner):
            return f"the mysql enforcer needs a mysql source, not {scanner.kind!r}"
        return None

    def snapshot(self, target: Target) -> Saved:
        schema = target.name
        with self._session() as session:
            if not session.query(_SCHEMA_SQL, (schema,)):
                raise EnforcerError(f"{self.server.label}: schema {schema!r} does not exist")
            state = self._read(session, schema)
            changes: list[dict[str, Any]] = []
            concerned: set[Grantee] = set()
            for grantee, rows in self._schema_rows(state, target).items():
                changes.extend(self._schema_changes(grantee, schema, rows))
                concerned.add(grantee)
            changes.extend(self._object_changes(state, target, concerned))
            grants = [
                {"grantee": g.json(), "show_grants": self._show_grants(session, g)}
                for g in sorted(concerned)
            ]
        return {"schema": schema, "grants": grants, "changes": changes}

    def restrict(self, target: Target, saved: Saved) -> str:
        schema = str(saved["schema"])
        changes = list(saved["changes"])
        with self._session() as session:
            state = self._read(session, schema)
            self._refuse_global_writers(state, target, changes)
            done: list[str] = []
            cached = False
            for change in changes:
                note = self._apply(session, state, schema, change)
                if note:
                    done.append(note)
                    # Table and column grants are checked afresh on every
                    # statement; schema-level ones as of the session's USE.
                    cached = cached or change["on"] in {"schema", "exception"}
            ended = 0
            if cached and self.kill_sessions:
                ended = self._end_sessions(session, state, target, schema)
        if not done:
            return f"schema {schema!r}: already restricted (nothing left to revoke)"
        if ended:
            done.append(f"ended {ended} open session{'s' if ended > 1 else ''} in it")
        return f"schema {schema!r}: " + "; ".join(done)

    def lift(self, target: Target, saved: Saved) -> str:  # noqa: ARG002 - SAVED names the schema
        schema = str(saved["schema"])
        with self._session() as session:
            state = self._read(session, schema)
            done: list[str] = []
            for change in reversed(list(saved["changes"])):
                note = self._undo(session, state, schema, change)
                if note:
                    done.append(note)
        if not done:
            return f"schema {schema!r}: nothing to restore"
        return f"schema {schema!r}: " + "; ".join(done)

    # Reading

    @contextlib.contextmanager
    def _session(self) -> Iterator[_Connection]:
        session = self._open()
        try:
            yield session
        finally:
            session.close()

    def _open(self) -> _Connection:
        try:
            conn, password = connect(self.server, self.mysql.timeout)
        except SourceError as exc:
            raise EnforcerError(str(exc)) from None
        session = _Connection(conn, self.server.label, password)
        if "MariaDB" not in conn.get_server_info():
            session.close()
            raise EnforcerError(
                f"{self.server.label}: the mysql enforcer needs MariaDB 10.4 or later"
            )
        session.query("SET SESSION max_statement_time = %s", (self.mysql.timeout,))
        return session

    def _read(self, session: _Connection, schema: str) -> _State:
        ((lower,),) = session.query("SELECT @@lower_case_table_names")
        fold = int(lower) != 0
        accounts = {
            (str(user), str(host)): _Account(bool(role), int(access or 0) != 0)
            for user, host, access, role in session.query(_ACCOUNTS_SQL)
        }
        for user, host, *flags in session.query(_GLOBAL_WRITES_SQL):
            account = accounts.get((str(user), str(host)))
            if account is not None:
                account.global_writes = [
                    _DB_COLUMNS[c]
                    for c, flag in zip(_GLOBAL_WRITE_COLUMNS, flags, strict=True)
                    if flag == "Y"
                ]
        rows: dict[tuple[str, str, str], list[str]] = {}
        for user, host, db, *flags in session.query(_DB_SQL):
            if grant_matches(str(db), schema, fold_case=fold):
                held = [
                    p for p, flag in zip(_DB_COLUMNS.values(), flags, strict=True) if flag == "Y"
                ]
                rows[(str(user), str(host), str(db))] = held
        tables = {
            (str(user), str(host), str(table)): _set_members(privileges)
            for user, host, table, privileges in session.query(_TABLES_SQL, (schema,))
        }
        columns = {
            (str(user), str(host), str(table), str(column)): _set_members(privileges)
            for user, host, table, column, privileges in session.query(_COLUMNS_SQL, (schema,))
        }
        return _State(accounts, rows, tables, columns)

    def _grantee(self, state: _State, target: Target, user: str, host: str) -> Grantee | None:
        """The grantee of a row, or None for the untouchable and for rows of no account."""
        account = state.accounts.get((user, host))
        if account is None:
            return None
        if user in SYSTEM_ACCOUNTS or user in self.exempt or user == self.server.user:
            return None
        # An administrator keeps its grants, unless it is the member's own
        # account: restrict then refuses if its global privileges make any
        # restriction pointless.
        if account.admin and user != target.member:
            return None
        return Grantee(user, host, account.role)

    def _schema_rows(self, state: _State, target: Target) -> dict[Grantee, dict[str, list[str]]]:
        by_grantee: dict[Grantee, dict[str, list[str]]] = {}
        for (user, host, db), privileges in sorted(state.schema.items()):
            grantee = self._grantee(state, target, user, host)
            if grantee is not None:
                by_grantee.setdefault(grantee, {})[db] = privileges
        return by_grantee

    def _schema_changes(
        self, grantee: Grantee, schema: str, rows: Mapping[str, list[str]]
    ) -> list[dict[str, Any]]:
        """What to change so that GRANTEE's schema-level privileges on SCHEMA lose RESTRICTED."""
        exact = {db: p for db, p in rows.items() if not is_pattern(db)}
        if exact:
            # The server takes an exact row over any pattern: only those count here.
            changes = []
            for db, privileges in sorted(exact.items()):
                revoke = [p for p in privileges if p in _RESTRICTED]
                if revoke:
                    kept = [p for p in privileges if p not in _RESTRICTED]
                    changes.append(
                        {"on": "schema", "grantee": grantee.json(), "db": db, "revoke": revoke}
                        | {"kept": kept}
                    )
            return changes
        held = [set(p) for p in rows.values()]
        if not set().union(*held) & _RESTRICTED:
            return []
        # Which pattern the server picks among several is its own business:
        # what they all hold is never more than the one it picks.
        common = _ordered(set.intersection(*held) - _RESTRICTED)
        patterns = sorted(rows)
        if not [p for p in common if p != "GRANT OPTION"]:
            raise EnforcerError(
                f"cannot restrict schema {schema!r} for {grantee.label} without restricting other "
                f"schemas: its grant on {', '.join(patterns)} holds only privileges that write; "
                "grant them per schema instead"
            )
        exception = {"on": "exception", "grantee": grantee.json(), "db": escape_pattern(schema)}
        return [exception | {"grant": common, "over": patterns}]

    def _object_changes(
        self, state: _State, target: Target, concerned: set[Grantee]
    ) -> list[dict[str, Any]]:
        """What to revoke on the schema's tables and columns; adds their grantees to CONCERNED."""
        objects: list[tuple[str, str, dict[str, str], list[str]]] = [
            (user, host, {"on": "table", "table": table}, privileges)
            for (user, host, table), privileges in sorted(state.tables.items())
        ]
        objects += [
            (user, host, {"on": "column", "table": table, "column": column}, privileges)
            for (user, host, table, column), privileges in sorted(state.columns.items())
        ]
        changes: list[dict[str, Any]] = []
        for user, host, what, privileges in objects:
            grantee = self._grantee(state, target, user, host)
            if grantee is None:
                continue
            concerned.add(grantee)
            revoke = [p for p in privileges if p in _RESTRICTED]
            if revoke:
                kept = [p for p in privileges if p not in _RESTRICTED]
                changes.append(what | {"grantee": grantee.json(), "revoke": revoke, "kept": kept})
        return changes

    def _show_grants(self, session: _Connection, grantee: Grantee) -> list[str]:
        rows = session.query(f"SHOW GRANTS FOR {session.grantee(grantee)}")
        return [str(line) for (line,) in rows]

    # Acting

    def _refuse_global_writers(
        self, state: _State, target: Target, changes: Iterable[Mapping[str, Any]]
    ) -> None:
        """Refuse before acting when an account of the member writes everywhere anyway."""
        concerned = {Grantee.from_json(c["grantee"]) for c in changes}
        for (user, host), member_account in sorted(state.accounts.items()):
            if user == target.member and user not in self.exempt and not member_account.role:
                concerned.add(Grantee(user, host))
        for grantee in sorted(concerned):
            account = state.accounts.get((grantee.user, grantee.host))
            if account is not None and account.global_writes:
                raise EnforcerError(
                    f"{grantee.label} holds {', '.join(account.global_writes)} on *.* (global "
                    "privileges cannot be restricted per schema): revoke them, or list the "
                    "account in exempt_accounts"
                )

    def _apply(
        self, session: _Connection, state: _State, schema: str, change: Mapping[str, Any]
    ) -> str | None:
        grantee = Grantee.from_json(change["grantee"])
        if (grantee.user, grantee.host) not in state.accounts:
            return None
        kind = change["on"]
        if kind == "exception":
            return self._apply_exception(session, state, grantee, change)
        to = session.grantee(grantee)
        wanted = set(change["revoke"])
        on, current = self._object(state, schema, change)
        held = [p for p in (current or []) if p in wanted]
        if not held:
            return None
        column = f" ({quote(str(change['column']))})" if kind == "column" else ""
        listed = ", ".join(p + column for p in held)
        session.run(f"REVOKE {listed} ON {on} FROM {to}", (*_NO_SUCH_GRANT, _NO_SUCH_TABLE))
        return f"revoked {', '.join(held)} on {_describe(change)} from {grantee.label}"

    def _undo(
        self, session: _Connection, state: _State, schema: str, change: Mapping[str, Any]
    ) -> str | None:
        grantee = Grantee.from_json(change["grantee"])
        if (grantee.user, grantee.host) not in state.accounts:
            return None
        if change["on"] == "exception":
            return self._undo_exception(session, state, grantee, change)
        to = session.grantee(grantee)
        on, current = self._object(state, schema, change)
        if current is None and change["kept"]:
            # The grant restrict left in place is gone: an administrator
            # removed it meanwhile, and restoring part of it would be a new grant.
            return None
        missing = [p for p in change["revoke"] if p not in (current or [])]
        if not missing:
            return None
        column = f" ({quote(str(change['column']))})" if change["on"] == "column" else ""
        listed = ", ".join(p + column for p in missing)
        if not session.run(f"GRANT {listed} ON {on} TO {to}", (_NO_SUCH_TABLE, _NO_SUCH_COLUMN)):
            return f"{_describe(change)} no longer exists: nothing to restore for {grantee.label}"
        return f"granted {', '.join(missing)} on {_describe(change)} back to {grantee.label}"

    def _apply_exception(
        self, session: _Connection, state: _State, grantee: Grantee, change: Mapping[str, Any]
    ) -> str | None:
        db = str(change["db"])
        to = session.grantee(grantee)
        current = state.schema.get((grantee.user, grantee.host, db))
        if current is None:
            privileges = list(change["grant"])
            session.run(_grant_sql(privileges, f"{quote(db)}.*", to))
            over = ", ".join(change["over"])
            return f"granted {grantee.label} only {', '.join(privileges)} on {db}.* (over {over})"
        # Made by an earlier attempt: it may only lose what writes.
        held = [p for p in current if p in _RESTRICTED]
        if not held:
            return None
        session.run(f"REVOKE {', '.join(held)} ON {quote(db)}.* FROM {to}", _NO_SUCH_GRANT)
        return f"revoked {', '.join(held)} on {db}.* from {grantee.label}"

    def _undo_exception(
        self, session: _Connection, state: _State, grantee: Grantee, change: Mapping[str, Any]
    ) -> str | None:
        db = str(change["db"])
        current = state.schema.get((grantee.user, grantee.host, db))
        held = [p for p in (current or []) if p in set(change["grant"])]
        if not held:
            return None
        to = session.grantee(grantee)
        session.run(f"REVOKE {', '.join(held)} ON {quote(db)}.* FROM {to}", _NO_SUCH_GRANT)
        over = ", ".join(change["over"])
        return f"removed {db}.* of {grantee.label}: {over} applies again"

    def _object(
        self, state: _State, schema: str, change: Mapping[str, Any]
    ) -> tuple[str, list[str] | None]:
        """The SQL name of a change's object, and what its grantee holds on it now."""
        grantee = Grantee.from_json(change["grantee"])
        user, host = grantee.user, grantee.host
        if change["on"] == "schema":
            db = str(change["db"])
            return f"{quote(db)}.*", state.schema.get((user, host, db))
        table = str(change["table"])
        on = f"{quote(schema)}.{quote(table)}"
        if change["on"] == "table":
            return on, state.tables.get((user, host, table))
        return on, state.columns.get((user, host, table, str(change["column"])))

    def _end_sessions(
        self, session: _Connection, state: _State, target: Target, schema: str
    ) -> int:
        """KILL every session in SCHEMA but administrators': it still holds the old privileges."""
        ended = 0
        for thread, user in session.query(_SESSIONS_SQL, (schema,)):
            hosts = [h for (u, h) in state.accounts if u == user]
            if not hosts or any(self._grantee(state, target, str(user), h) is None for h in hosts):
                continue
            if session.run(f"KILL CONNECTION {int(thread)}", (_NO_SUCH_THREAD,)):
                ended += 1
        return ended


def _describe(change: Mapping[str, Any]) -> str:
    if change["on"] == "schema":
        return f"{change['db']}.*"
    if change["on"] == "table":
        return f"table {change['table']}"
    return f"column {change['table']}.{change['column']}"


def _grant_sql(privileges: Sequence[str], on: str, to: str) -> str:
    plain = [p for p in privileges if p != "GRANT OPTION"]
    option = " WITH GRANT OPTION" if "GRANT OPTION" in privileges else ""
    return f"GRANT {', '.join(plain)} ON {on} TO {to}{option}"
