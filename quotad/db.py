"""Engine, sessions and the declarative base shared by every domain's models."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, DateTime, Engine, Integer, MetaData, Table, create_engine, event
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

# Alembic's "The Importance of Naming Constraints": stable names make
# migrations reproducible on every engine.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments an INTEGER PRIMARY KEY, not a BIGINT one.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every engine.

    SQLite keeps no zone; storing naive UTC and re-attaching it on the way out
    keeps comparisons and arithmetic identical on both ledgers.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:  # noqa: ARG002 - fixed signature
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger; use aware UTC times")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(
        self,
        value: dt.datetime | None,
        dialect: Dialect,  # noqa: ARG002 - fixed signature
    ) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def table_of(model: type[Base]) -> Table:
    """MODEL's table, for bulk writes that bypass the ORM's per-row bookkeeping."""
    table = model.__table__
    if not isinstance(table, Table):  # pragma: no cover - every model maps one table
        raise TypeError(f"{model.__name__} is not mapped to a single table")
    return table


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def make_engine(database_url: str, **kwargs: Any) -> Engine:
    """An engine for the ledger; SQLite gets WAL, foreign keys and real transactions."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        # No ping before each checkout: it costs every request a round trip.
        # A connection the server dropped (a restart) fails its next
        # statement; SQLAlchemy then recycles every pooled connection, so one
        # request per worker sees "ledger unavailable" (503) and the next
        # ones reconnect.
        return create_engine(url, **kwargs)
    if url.database:
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from pysqlite so that BEGIN is ours
        # (SQLAlchemy's documented recipe); otherwise reads before the first
        # write run outside the transaction.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A writer takes the lock up front: a deferred transaction that reads
        # and then writes can fail with SQLITE_BUSY once another writer won.
        mode = "IMMEDIATE" if conn.get_execution_options().get("quotad_write") else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(engine: Engine, *, write: bool = False) -> Iterator[Session]:
    """One unit of work: commit when the block succeeds, roll back when it raises."""
    bind = engine.execution_options(quotad_write=True) if write else engine
    session = Session(bind=bind, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
