"""The `postgres` enforcer: an over-quota database is handed to a holding role.

A read-only setting cannot hold a member: `default_transaction_read_only`
is overridden with one SET, and an owner may GRANT itself anything back.
So restrict takes ownership away, in one transaction on the database:

* the database, its schemas, tables, materialized views and large objects
  owned by any role that is not a superuser go to a NOLOGIN role quotad
  makes per member (`quotad_hold_<member>`), which nobody is a member of;
* nobody keeps INSERT or UPDATE on the tables, CREATE on the schemas,
  CREATE or TEMPORARY on the database, UPDATE on the large objects, nor
  EXECUTE on the functions that create large objects (which need no other
  privilege);
* each former owner gets back, of what it had, only SELECT, DELETE and
  TRUNCATE on its tables, SELECT on its materialized views and large
  objects, USAGE on its schemas and CONNECT on the database, so that it can
  still clean up.

Privileges are checked on every statement, so sessions already open are
held too. The snapshot records the owner and the exact ACL (NULL included)
of every object restrict touches; lift gives each its owner back, puts the
missing grants back through GRANT (as their grantor), and where GRANT
cannot write the saved bytes (a NULL ACL, another order of entries) writes
the saved ACL into the catalog once the privileges already match.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from quotad.enforcers.base import Enforcer, EnforcerError, Saved, Target
from scanners.base import OptionError, Scanner
from scanners.databases import one_line, redact
from scanners.options import Options
from scanners.postgres import PostgresScanner

HOLD_PREFIX = "quotad_hold_"
# PostgreSQL truncates longer identifiers, which could make two members share a role.
_MAX_IDENTIFIER = 63
# A retried GRANT/REVOKE chain (grant options handed on) settles within a few rounds.
_ROUNDS = 5
_SAVED_VERSION = 1

# Creating a large object needs no privilege but EXECUTE on these.
_LO_CREATORS = (
    "pg_catalog.lo_create(oid)",
    "pg_catalog.lo_creat(integer)",
    "pg_catalog.lo_from_bytea(oid,bytea)",
)


@dataclass(frozen=True, slots=True)
class _Kind:
    """How one kind of object is named in SQL and what the restriction does to it."""

    acl_type: str  # acldefault()'s letter: the privileges a NULL ACL stands for
    grant_on: str  # GRANT ... ON <grant_on> name
    alter: str | None  # ALTER <alter> name OWNER TO; None: ownership is left alone
    keep: frozenset[str]  # what a former owner gets back, of what it had
    strip: frozenset[str]  # what nobody but the owner keeps
    catalog: str
    acl_column: str


_KINDS: dict[str, _Kind] = {
    "database": _Kind(
        "d",
        "DATABASE",
        "DATABASE",
        frozenset({"CONNECT"}),
        frozenset({"CREATE", "TEMPORARY"}),
        "pg_database",
        "datacl",
    ),
    "schema": _Kind(
        "n",
        "SCHEMA",
        "SCHEMA",
        frozenset({"USAGE"}),
        frozenset({"CREATE"}),
        "pg_namespace",
        "nspacl",
    ),
    "table": _Kind(
        "r",
        "TABLE",
        "TABLE",
        frozenset({"SELECT", "DELETE", "TRUNCATE"}),
        frozenset({"INSERT", "UPDATE"}),
        "pg_class",
        "relacl",
    ),
    "materialized view": _Kind(
        "r",
        "TABLE",
        "MATERIALIZED VIEW",
        frozenset({"SELECT"}),
        frozenset(),
        "pg_class",
        "relacl",
    ),
    # A view writes with its owner's rights, a superuser's too: nobody
    # keeps INSERT or UPDATE on one. Its owner keeps it, as it could only
    # write through it what it may write itself.
    "view": _Kind(
        "r",
        "TABLE",
        None,
        frozenset(),
        frozenset({"INSERT", "UPDATE"}),
        "pg_class",
        "relacl",
    ),
    # A sequence of a serial or identity column follows its table's owner.
    "sequence": _Kind("s", "SEQUENCE", None, frozenset(), frozenset(), "pg_class", "relacl"),
    # Column grants go with the table: REVOKE on the table revokes them too.
    "column": _Kind("c", "TABLE", None, frozenset(), frozenset(), "pg_attribute", "attacl"),
    "large object": _Kind(
        "L",
        "LARGE OBJECT",
        "LARGE OBJECT",
        frozenset({"SELECT"}),
        frozenset({"UPDATE"}),
        "pg_largeobject_metadata",
        "lomacl",
    ),
    "function": _Kind(
        "f", "FUNCTION", None, frozenset(), frozenset({"EXECUTE"}), "pg_proc", "proacl"
    ),
}

# Users cannot make schemas named pg_*: those and information_schema are the
# system's. Each query lists one kind: oid, sub-id (a column's number), name parts,
# owner, whether the owner is a superuser, ACL as text. Columns count only
# with an ACL of their own, except when one saved is looked up again.
_LISTINGS: dict[str, str] = {
    "database": """
        SELECT d.oid, 0, ARRAY[d.datname], r.rolname, r.rolsuper, d.datacl::text
        FROM pg_catalog.pg_database AS d JOIN pg_catalog.pg_roles AS r ON r.oid = d.datdba
        WHERE d.datname = pg_catalog.current_database()""",
    "schema": """
        SELECT n.oid, 0, ARRAY[n.nspname], r.rolname, r.rolsuper, n.nspacl::text
        FROM pg_catalog.pg_namespace AS n JOIN pg_catalog.pg_roles AS r ON r.oid = n.nspowner
        WHERE n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'""",
    "table": """
        SELECT c.oid, 0, ARRAY[n.nspname, c.relname], r.rolname, r.rolsuper, c.relacl::text
        FROM pg_catalog.pg_class AS c
        JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
        JOIN pg_catalog.pg_roles AS r ON r.oid = c.relowner
        WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
          AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'""",
    "view": """
        SELECT c.oid, 0, ARRAY[n.nspname, c.relname], r.rolname, r.rolsuper, c.relacl::text
        FROM pg_catalog.pg_class AS c
        JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
        JOIN pg_catalog.pg_roles AS r ON r.oid = c.relowner
        WHERE c.relkind IN ('v', 'f')
          AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'""",
    "materialized view": """
        SELECT c.oid, 0, ARRAY[n.nspname, c.relname], r.rolname, r.rolsuper, c.relacl::text
        FROM pg_catalog.pg_class AS c
        JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
        JOIN pg_catalog.pg_roles AS r ON r.oid = c.relowner
        WHERE c.relkind = 'm'
          AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'""",
    "sequence": """
        SELECT c.oid, 0, ARRAY[n.nspname, c.relname], r.rolname, r.rolsuper, c.relacl::text
        FROM pg_catalog.pg_class AS c
        JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
        JOIN pg_catalog.pg_roles AS r ON r.oid = c.relowner
        WHERE c.relkind = 'S' AND c.relpersistence <> 't'
          AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
          AND EXISTS (
            SELECT FROM pg_catalog.pg_depend AS d
            WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
              AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.deptype IN ('a', 'i'))""",
    "column": """
        SELECT c.oid, a.attnum, ARRAY[n.nspname, c.relname, a.attname], r.rolname,
               r.rolsuper, a.attacl::text
        FROM pg_catalog.pg_attribute AS a
        JOIN pg_catalog.pg_class AS c ON c.oid = a.attrelid
        JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
        JOIN pg_catalog.pg_roles AS r ON r.oid = c.relowner
        WHERE c.relkind IN ('r', 'p', 'm', 'v', 'f') AND c.relpersistence <> 't'
          AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
          AND a.attnum > 0 AND NOT a.attisdropped""",
    "large object": """
        SELECT m.oid, 0, ARRAY[m.oid::text], r.rolname, r.rolsuper, m.lomacl::text
        FROM pg_catalog.pg_largeobject_metadata AS m
        JOIN pg_catalog.pg_roles AS r ON r.oid = m.lomowner""",
    "function": """
        SELECT p.oid, 0, ARRAY[p.oid::regprocedure::text], r.rolname, r.rolsuper, p.proacl::text
        FROM pg_catalog.pg_proc AS p JOIN pg_catalog.pg_roles AS r ON r.oid = p.proowner
        WHERE p.oid = ANY(%s::regprocedure[])""",
}

# (grantor, grantee or None for PUBLIC, privilege, grantable) of an ACL, a
# NULL one read as the defaults its owner stands for.
_EXPLODE_SQL = """
SELECT g.rolname, CASE WHEN e.grantee = 0 THEN NULL ELSE t.rolname END,
       e.privilege_type, e.is_grantable
FROM pg_catalog.aclexplode(COALESCE(%(acl)s::aclitem[], pg_catalog.acldefault(
    %(type)s::"char", (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = %(owner)s)))) AS e
LEFT JOIN pg_catalog.pg_roles AS g ON g.oid = e.grantor
LEFT JOIN pg_catalog.pg_roles AS t ON t.oid = e.grantee
"""

# Roles through which a role could undo the restriction: a superuser, one
# that may grant itself the holding role, one that writes everywhere.
_POWERS_SQL = """
SELECT r.rolname FROM pg_catalog.pg_roles AS r
WHERE pg_catalog.pg_has_role(%s::name, r.oid, 'MEMBER')
  AND (r.rolsuper OR r.rolcreaterole OR r.rolname = 'pg_write_all_data')
ORDER BY r.rolname
"""

Item = tuple[str, str | None, str, bool]
Key = tuple[str, int, int]


@dataclass(frozen=True, slots=True)
class _Object:
    """One object as the catalog shows it now (or as the snapshot saved it)."""

    kind: str
    oid: int
    sub: int
    parts: tuple[str, ...]
    owner: str
    owner_is_superuser: bool
    acl: str | None

    @property
    def key(self) -> Key:
        return (self.kind, self.oid, self.sub)

    @property
    def label(self) -> str:
        return f"{self.kind} {'.'.join(self.parts)}"

    def saved(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "oid": self.oid,
            "sub": self.sub,
            "name": list(self.parts),
            "owner": self.owner,
            "owner_is_superuser": self.owner_is_superuser,
            "acl": self.acl,
        }

    @classmethod
    def from_saved(cls, raw: Mapping[str, Any]) -> _Object:
        return cls(
            str(raw["kind"]),
            int(raw["oid"]),
            int(raw["sub"]),
            tuple(str(p) for p in raw["name"]),
            str(raw["owner"]),
            bool(raw["owner_is_superuser"]),
            None if raw["acl"] is None else str(raw["acl"]),
        )

    def moves(self) -> bool:
        """Whether restrict hands this object to the holding role."""
        # pg_database_owner owns `public`: it becomes the holding role with the database.
        return (
            _KINDS[self.kind].alter is not None
            and not self.owner_is_superuser
            and self.owner != "pg_database_owner"
        )

    def target_sql(self) -> sql.Composable:
        """The object's name as GRANT and ALTER take it."""
        if self.kind == "large object":
            return sql.SQL(str(self.oid))
        if self.kind == "function":
            return sql.SQL(self.parts[0])  # the server's own quoting, from regprocedure
        if self.kind == "column":
            return sql.Identifier(*self.parts[:2])
        return sql.Identifier(*self.parts)


def hold_role(member: str) -> str:
    """The NOLOGIN role that holds MEMBER's restricted databases."""
    name = HOLD_PREFIX + member
    if len(name.encode()) <= _MAX_IDENTIFIER:
        return name
    digest = hashlib.sha256(member.encode()).hexdigest()[:8]
    return f"{name.encode()[: _MAX_IDENTIFIER - 9].decode(errors='ignore')}_{digest}"


class PostgresEnforcer(Enforcer):
    """Hands an over-quota database to a holding role; its former owners keep read and delete."""

    source_kind = "postgres"
    OPTIONS = frozenset({"enforce_dsn"})

    def __init__(self, scanner: PostgresScanner, enforce_dsn: str | None = None) -> None:
        super().__init__(scanner)
        self.pg = scanner
        self.dsn = enforce_dsn if enforce_dsn is not None else scanner.dsn
        params = conninfo_to_dict(self.dsn)
        password = params.get("password")
        self._password = password if isinstance(password, str) and password else None
        self._params = params

    @classmethod
    def from_options(cls, scanner: Scanner, options: Mapping[str, object], base_dir: Path) -> Self:
        """Options: `enforce_dsn`, a libpq DSN for a superuser (default: the scanner's `dsn`)."""
        del base_dir  # a libpq DSN names its own files
        if not isinstance(scanner, PostgresScanner):
            raise TypeError(f"the postgres enforcer needs a PostgresScanner, not {scanner!r}")
        reader = Options(options)
        dsn = reader.optional_string("enforce_dsn")
        if dsn is not None and not dsn.strip():
            raise OptionError("enforce_dsn", "must not be empty (leave it out to use `dsn`)")
        if dsn is not None:
            try:
                conninfo_to_dict(dsn)
            except psycopg.ProgrammingError:
                # libpq quotes the text around the fault, which may be the password.
                raise OptionError(
                    "enforce_dsn",
                    'not a libpq connection string ("host=db1 user=postgres dbname=postgres")'
                    " or URI; not shown, as it may hold a password",
                ) from None
        reader.finish()
        return cls(scanner, dsn)

    # -- the interface -------------------------------------------------------

    def snapshot(self, target: Target) -> Saved:
        """Owner and ACL of the database and of every object restrict will touch."""
        with self._transaction(target, "taking the snapshot") as cur:
            objects = _listing(cur)
        database = objects[0]
        if database.owner.startswith(HOLD_PREFIX):
            raise EnforcerError(
                f"{self._label(target)}: owned by {database.owner!r}, so already restricted;"
                " lift it with the state saved when it was restricted"
            )
        return {
            "version": _SAVED_VERSION,
            "database": target.name,
            "oid": database.oid,
            "hold": hold_role(target.member),
            "objects": [o.saved() for o in objects],
        }

    def restrict(self, target: Target, saved: Saved) -> str:
        """Hand the database's objects to the holding role; former owners keep read and delete."""
        self._check_saved(target, saved)
        hold = str(saved["hold"])
        prior = {o.key: o for o in map(_Object.from_saved, saved["objects"])}
        with self._transaction(target, "restricting") as cur:
            self._same_database(cur, target, saved)
            created = _ensure_hold(cur, hold)
            objects = _listing(cur)
            moving = [o for o in objects if o.moves() and o.owner != hold]
            roles = {o.owner for o in moving} | {target.member}
            self._check_roles(cur, target, {r for r in roles if _role_exists(cur, r)})
            for obj in moving:
                _alter_owner(cur, obj, hold)
            objects = _listing(cur)
            stripped = sum(_strip(cur, o, hold) for o in objects)
            # A former owner gets back only part of what the snapshot shows it
            # had; an object moved just now (made after the snapshot) has its
            # owner of a moment ago as the former one.
            formers = {o.key: o for o in moving}
            formers.update((k, o) for k, o in prior.items() if o.moves())
            current = {o.key: o for o in objects}
            for key, former in formers.items():
                now = current.get(key)
                if now is not None and former.owner not in {hold, now.owner}:
                    _grant_back(cur, now, former)
            # With this server setting nobody's large objects are checked at all.
            row = cur.execute(
                "SELECT pg_catalog.current_setting('lo_compat_privileges')::bool"
                " AND EXISTS (SELECT FROM pg_catalog.pg_largeobject_metadata)"
            ).fetchone()
            unchecked = row is not None and bool(row[0])
        parts = []
        if moving:
            parts.append(f"{len(moving)} object(s) handed to {hold}")
        if stripped:
            parts.append(f"{stripped} write grant(s) revoked")
        if created:
            parts.append(f"role {hold} created")
        if unchecked:
            parts.append("large objects stay writable: lo_compat_privileges is on")
        return f"database {target.name!r} restricted: " + (", ".join(parts) or "already held")

    def lift(self, target: Target, saved: Saved) -> str:
        """Give every object its saved owner and ACL back, byte for byte."""
        self._check_saved(target, saved)
        hold = str(saved["hold"])
        wanted = [_Object.from_saved(raw) for raw in saved["objects"]]
        try:
            with self._transaction(target, "lifting") as cur:
                if self._oid(cur) != int(saved["oid"]):
                    done = f"database {target.name!r} was dropped and made anew: nothing to restore"
                else:
                    restored, gone = _restore(cur, wanted, hold)
                    done = ""
        except _DatabaseGone:
            done = f"database {target.name!r} no longer exists: nothing to restore"
        dropped = self._drop_hold(target, hold)
        if done:
            return done + (f", role {hold} dropped" if dropped else "")
        parts = [f"{restored} object(s) given back their owner"]
        if gone:
            parts.append(f"{gone} no longer exist")
        if dropped:
            parts.append(f"role {hold} dropped")
        return f"database {target.name!r} lifted: " + ", ".join(parts)

    # -- connections ---------------------------------------------------------

    def _label(self, target: Target) -> str:
        host = self._params.get("host") or "the local socket"
        port = self._params.get("port")
        where = f"{host}:{port}" if port else str(host)
        return f"PostgreSQL {where}/{target.name}"

    def _error(self, target: Target, what: str, exc: BaseException) -> EnforcerError:
        message = redact(one_line(str(exc)), self._password)
        if isinstance(exc, pg_errors.LockNotAvailable):
            message += " (a session holds a lock on it; tried again on the next run)"
        elif isinstance(exc, pg_errors.QueryCanceled):
            message += f" (more than {2 * self.pg.timeout} s; timeout)"
        return EnforcerError(f"{self._label(target)}: {what}: {message}")

    @contextlib.contextmanager
    def _transaction(self, target: Target, what: str) -> Iterator[psycopg.Cursor[Any]]:
        """A cursor in one transaction on TARGET's database, committed when the block succeeds."""
        extra: dict[str, str | int] = {
            "dbname": target.name,
            "connect_timeout": self.pg.timeout,
        }
        if "application_name" not in self._params:
            extra["application_name"] = f"quotad enforcer {self.pg.name}"
        try:
            conn = psycopg.connect(make_conninfo(self.dsn, **extra))
        except psycopg.Error as exc:
            # libpq reports a missing database only in the server's words
            # (which may be translated): ask the catalog instead.
            if self._missing(target):
                raise _DatabaseGone(f"{self._label(target)}: no such database") from None
            raise self._error(target, "cannot connect", exc) from None
        try:
            with conn, conn.cursor() as cur:
                # Waiting for a member's lock would stall every other member's
                # run; the lock gives up first, so that the message says why.
                cur.execute(
                    "SELECT pg_catalog.set_config('statement_timeout', %s, true),"
                    " pg_catalog.set_config('lock_timeout', %s, true)",
                    (f"{2 * self.pg.timeout}s", f"{self.pg.timeout}s"),
                )
                yield cur
        except psycopg.Error as exc:
            raise self._error(target, what, exc) from None
        finally:
            conn.close()

    def _missing(self, target: Target) -> bool:
        """Whether the server, reached through the DSN's own database, lacks TARGET's."""
        try:
            with psycopg.connect(self.dsn, connect_timeout=self.pg.timeout) as conn:
                row = conn.execute(
                    "SELECT FROM pg_catalog.pg_database WHERE datname = %s", (target.name,)
                ).fetchone()
        except psycopg.Error:
            return False
        return row is None

    def _oid(self, cur: psycopg.Cursor[Any]) -> int:
        row = cur.execute(
            "SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()"
        ).fetchone()
        assert row is not None
        return int(row[0])

    def _check_saved(self, target: Target, saved: Saved) -> None:
        if saved.get("version") != _SAVED_VERSION or saved.get("database") != target.name:
            raise EnforcerError(
                f"{self._label(target)}: the saved state is not a snapshot of this database"
                f" by this version of the enforcer (version {saved.get('version')!r})"
            )

    def _same_database(self, cur: psycopg.Cursor[Any], target: Target, saved: Saved) -> None:
        if self._oid(cur) != int(saved["oid"]):
            raise EnforcerError(
                f"{self._label(target)}: the database was dropped and made anew since the"
                " snapshot; take a new one"
            )

    def _check_roles(self, cur: psycopg.Cursor[Any], target: Target, roles: set[str]) -> None:
        for role in sorted(roles):
            powers = [row[0] for row in cur.execute(_POWERS_SQL, (role,)).fetchall()]
            if powers:
                raise EnforcerError(
                    f"{self._label(target)}: role {role!r} could undo the restriction"
                    f" through {', '.join(map(repr, powers))} (superuser, CREATEROLE or"
                    " pg_write_all_data)"
                )

    def _drop_hold(self, target: Target, hold: str) -> bool:
        """Drop the holding role once nothing anywhere refers to it."""
        extra: dict[str, str | int] = {"connect_timeout": self.pg.timeout}
        try:
            with psycopg.connect(make_conninfo(self.dsn, **extra), autocommit=True) as conn:
                exists = conn.execute(
                    "SELECT FROM pg_catalog.pg_roles WHERE rolname = %s", (hold,)
                ).fetchone()
                if exists is None:
                    return False
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(hold)))
        except pg_errors.DependentObjectsStillExist:
            return False  # it still holds another of the member's databases
        except psycopg.Error as exc:
            raise self._error(target, f"dropping role {hold!r}", exc) from None
        return True


class _DatabaseGone(EnforcerError):
    """The target database does not exist (any more): an error but for lift."""


def _listing(cur: psycopg.Cursor[Any]) -> list[_Object]:
    """Every object restrict may touch, the database first."""
    objects: list[_Object] = []
    for kind in _LISTINGS:
        where = sql.SQL("WHERE acl IS NOT NULL" if kind == "column" else "")
        objects.extend(_select(cur, kind, where, ()))
    return objects


def _select(
    cur: psycopg.Cursor[Any], kind: str, where: sql.Composable, params: tuple[object, ...]
) -> list[_Object]:
    query = sql.SQL(
        "SELECT * FROM ({}) AS l(oid, sub, parts, owner, super, acl) {} ORDER BY oid, sub"
    ).format(sql.SQL(_LISTINGS[kind]), where)  # our own constants
    if kind == "function":
        params = (list(_LO_CREATORS), *params)
    return [
        _Object(kind, int(oid), int(sub), tuple(parts), owner, bool(is_super), acl)
        for oid, sub, parts, owner, is_super, acl in cur.execute(query, params).fetchall()
    ]


def _ensure_hold(cur: psycopg.Cursor[Any], hold: str) -> bool:
    """Make the holding role, or check that the one there cannot be used to write."""
    row = cur.execute(
        "SELECT r.rolcanlogin OR r.rolsuper OR r.rolcreaterole OR r.rolbypassrls,"
        " EXISTS (SELECT FROM pg_catalog.pg_auth_members AS m WHERE m.roleid = r.oid)"
        " FROM pg_catalog.pg_roles AS r WHERE r.rolname = %s",
        (hold,),
    ).fetchone()
    if row is None:
        cur.execute(sql.SQL("CREATE ROLE {} NOLOGIN NOINHERIT").format(sql.Identifier(hold)))
        cur.execute(
            sql.SQL("COMMENT ON ROLE {} IS {}").format(
                sql.Identifier(hold),
                sql.Literal("quotad: holds over-quota databases; dropped on lift"),
            )
        )
        return True
    powers, has_members = row
    if powers or has_members:
        raise EnforcerError(
            f"role {hold!r} exists but can log in, has members or special rights;"
            " it cannot be used to hold a database"
        )
    return False


def _alter_owner(cur: psycopg.Cursor[Any], obj: _Object, owner: str) -> None:
    alter = _KINDS[obj.kind].alter
    assert alter is not None
    cur.execute(
        sql.SQL("ALTER {} {} OWNER TO {}").format(
            sql.SQL(alter), obj.target_sql(), sql.Identifier(owner)
        )
    )


def _items(cur: psycopg.Cursor[Any], obj: _Object) -> set[Item]:
    """OBJ's privileges; a saved entry naming a role dropped since then is left out."""
    acl = _readable_acl(cur, obj.acl)
    rows = cur.execute(
        _EXPLODE_SQL,
        {"acl": acl, "type": _KINDS[obj.kind].acl_type, "owner": obj.owner},
    ).fetchall()
    return {(str(g), e, str(p), bool(grantable)) for g, e, p, grantable in rows}


def _readable_acl(cur: psycopg.Cursor[Any], acl: str | None) -> str | None:
    """ACL as the server can read it now: without entries for roles that no longer exist."""
    if acl is None or _is_readable(cur, acl):
        return acl
    # A role that had only grants restrict revoked may have been dropped meanwhile.
    rows = cur.execute("SELECT pg_catalog.unnest(%s::text[])", (acl,)).fetchall()
    kept = [item for (item,) in rows if _is_readable(cur, "{" + _quote_element(item) + "}")]
    return "{" + ",".join(_quote_element(item) for item in kept) + "}"


def _is_readable(cur: psycopg.Cursor[Any], acl: str) -> bool:
    try:
        with cur.connection.transaction():
            cur.execute("SELECT %s::aclitem[]", (acl,))
    except pg_errors.UndefinedObject:
        return False
    return True


def _quote_element(item: str) -> str:
    """ITEM as one element of an array literal."""
    return '"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _grantee(name: str | None) -> sql.Composable:
    return sql.SQL("PUBLIC") if name is None else sql.Identifier(name)


def _on(obj: _Object) -> sql.Composable:
    return sql.SQL("ON {} {}").format(sql.SQL(_KINDS[obj.kind].grant_on), obj.target_sql())


def _privilege(obj: _Object, privilege: str) -> sql.Composable:
    if obj.kind == "column":
        return sql.SQL("{} ({})").format(sql.SQL(privilege), sql.Identifier(obj.parts[2]))
    return sql.SQL(privilege)


@contextlib.contextmanager
def _as_role(cur: psycopg.Cursor[Any], role: str, owner: str) -> Iterator[None]:
    """Act as ROLE, so that a grant it made is revoked or made with it as grantor."""
    if role == owner:
        # A superuser's GRANT and REVOKE act as the owner already.
        yield
        return
    cur.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
    try:
        yield
    finally:
        cur.execute("RESET ROLE")


def _strip(cur: psycopg.Cursor[Any], obj: _Object, hold: str) -> int:
    """Revoke the kind's write privileges from everyone but the owner; how many went.

    The holding role loses them too: a rule's actions (ON DELETE DO ALSO
    INSERT ...) run with the rights of the table's owner, so a member's
    DELETE would otherwise write as the holding role.
    """
    strip = _KINDS[obj.kind].strip
    if not strip:
        return 0
    count = 0
    for _ in range(_ROUNDS):
        current = _refresh(cur, obj)
        if current is None:
            return count
        items = _items(cur, current)
        if current.kind in {"table", "view"}:
            items |= _column_items(cur, current)
        left = [i for i in items if i[2] in strip and (i[1] != current.owner or i[1] == hold)]
        if not left:
            return count
        count += len(left)
        # CASCADE also takes the grants others made with a grant option.
        by_grantor: dict[str, set[str | None]] = {}
        for grantor, grantee, _privilege_name, _ in left:
            by_grantor.setdefault(grantor, set()).add(grantee)
        for grantor, grantees in sorted(by_grantor.items()):
            with _as_role(cur, grantor, current.owner):
                cur.execute(
                    sql.SQL("REVOKE {} {} FROM {} CASCADE").format(
                        sql.SQL(", ").join(sql.SQL(p) for p in sorted(strip)),
                        _on(current),
                        sql.SQL(", ").join(_grantee(g) for g in sorted(grantees, key=str)),
                    )
                )
    raise EnforcerError(f"{obj.label}: write grants remain after {_ROUNDS} rounds of REVOKE")


def _column_items(cur: psycopg.Cursor[Any], table: _Object) -> set[Item]:
    rows = cur.execute(
        "SELECT attnum, attname, attacl::text FROM pg_catalog.pg_attribute"
        " WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped AND attacl IS NOT NULL",
        (table.oid,),
    ).fetchall()
    items: set[Item] = set()
    for attnum, attname, acl in rows:
        column = _Object(
            "column",
            table.oid,
            int(attnum),
            (*table.parts, attname),
            table.owner,
            owner_is_superuser=False,
            acl=acl,
        )
        items |= _items(cur, column)
    return items


def _grant_back(cur: psycopg.Cursor[Any], obj: _Object, former: _Object) -> None:
    """Give FORMER's owner back the kind's cleanup privileges it had."""
    had = {p for _, grantee, p, _ in _items(cur, former) if grantee == former.owner}
    privileges = sorted(_KINDS[obj.kind].keep & had)
    if not privileges or not _role_exists(cur, former.owner):
        return
    cur.execute(
        sql.SQL("GRANT {} {} TO {}").format(
            sql.SQL(", ").join(sql.SQL(p) for p in privileges),
            _on(obj),
            sql.Identifier(former.owner),
        )
    )


def _role_exists(cur: psycopg.Cursor[Any], role: str) -> bool:
    row = cur.execute("SELECT FROM pg_catalog.pg_roles WHERE rolname = %s", (role,)).fetchone()
    return row is not None


def _refresh(cur: psycopg.Cursor[Any], obj: _Object) -> _Object | None:
    """OBJ as the catalog shows it now; None when it is gone."""
    found = _select(cur, obj.kind, sql.SQL("WHERE oid = %s AND sub = %s"), (obj.oid, obj.sub))
    return found[0] if found else None


def _restore(cur: psycopg.Cursor[Any], wanted: list[_Object], hold: str) -> tuple[int, int]:
    """Put back every owner, then every ACL; (owners given back, objects gone)."""
    restored = gone = 0
    database_owner = next(o.owner for o in wanted if o.kind == "database")
    current = {o.key: o for o in _listing(cur)}
    for want in wanted:
        now = current.get(want.key) or _refresh(cur, want)
        if now is None:
            gone += 1
            continue
        if want.moves() and now.owner != want.owner and _role_exists(cur, want.owner):
            _alter_owner(cur, now, want.owner)
            restored += 1
    # What the snapshot does not show (made after it, and held by a retried
    # restrict) goes to the database's owner, the only former owner known
    # for it, with the owner's own rights that restrict took.
    saved_keys = {w.key for w in wanted}
    for now in current.values():
        if now.key not in saved_keys and now.owner == hold and now.moves():
            _alter_owner(cur, now, database_owner)
            strip = _KINDS[now.kind].strip
            if strip:
                cur.execute(
                    sql.SQL("GRANT {} {} TO {}").format(
                        sql.SQL(", ").join(sql.SQL(p) for p in sorted(strip)),
                        _on(now),
                        sql.Identifier(database_owner),
                    )
                )
            restored += 1
    for want in wanted:
        _restore_acl(cur, want)
    # A column whose grants were all revoked keeps an empty ACL, not the NULL it had.
    for now in _listing(cur):
        if now.kind == "column" and now.key not in saved_keys and not _items(cur, now):
            _write_acl(cur, now, None)
    return restored, gone


def _restore_acl(cur: psycopg.Cursor[Any], want: _Object) -> None:
    """Grant and revoke until OBJ's privileges are WANT's, then make the bytes match."""
    wanted = _items(cur, want)
    for _ in range(_ROUNDS):
        now = _refresh(cur, want)
        if now is None:
            return
        have = _items(cur, now)
        if have == wanted:
            if now.acl != want.acl and _readable_acl(cur, want.acl) == want.acl:
                # GRANT cannot write a NULL ACL back, nor put entries in their
                # old order: the privileges match, only the bytes are left.
                _write_acl(cur, now, want.acl)
            return
        missing = sorted(wanted - have, key=lambda i: (i[0] != now.owner, _grant_order(i)))
        for grantor, grantee, privilege, grantable in missing:
            if grantor is None or not _role_exists(cur, grantor):
                continue
            with _as_role(cur, grantor, now.owner):
                cur.execute(
                    sql.SQL("GRANT {} {} TO {}{}").format(
                        _privilege(now, privilege),
                        _on(now),
                        _grantee(grantee),
                        sql.SQL(" WITH GRANT OPTION" if grantable else ""),
                    )
                )
        for grantor, grantee, privilege, grantable in sorted(have - wanted, key=_grant_order):
            if (grantor, grantee, privilege, not grantable) in wanted and not grantable:
                continue  # the GRANT ... WITH GRANT OPTION above took care of it
            option = sql.SQL(
                "GRANT OPTION FOR " if (grantor, grantee, privilege, False) in wanted else ""
            )
            with _as_role(cur, grantor, now.owner):
                cur.execute(
                    sql.SQL("REVOKE {}{} {} FROM {} CASCADE").format(
                        option, _privilege(now, privilege), _on(now), _grantee(grantee)
                    )
                )
    raise EnforcerError(f"{want.label}: privileges differ from the saved ones after restoring")


def _grant_order(item: Item) -> tuple[str, str, str]:
    return (item[0], item[1] or "", item[2])


def _write_acl(cur: psycopg.Cursor[Any], obj: _Object, acl: str | None) -> None:
    kind = _KINDS[obj.kind]
    if obj.kind == "column":
        where = sql.SQL("attrelid = %s AND attnum = %s")
        params: tuple[object, ...] = (acl, obj.oid, obj.sub)
    else:
        where = sql.SQL("oid = %s")
        params = (acl, obj.oid)
    cur.execute(
        sql.SQL("UPDATE pg_catalog.{} SET {} = %s::aclitem[] WHERE {}").format(
            sql.Identifier(kind.catalog), sql.Identifier(kind.acl_column), where
        ),
        params,
    )
