"""usage_samples partitioned by month on PostgreSQL (migration 7e3b1d5a9c42)."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from alembic import command
from sqlalchemy import Engine, text

from quotad import migrate
from quotad.db import make_engine, session_scope
from quotad.ledger.service import LedgerService, ScanInput
from quotad.retention.repository import PartitionRepository
from scanners.base import Measurement
from tests.conftest import PG_ADMIN_DSN, need

BEFORE = "4a7d2c9e1b58"
NOW = dt.datetime(2026, 11, 30, 12, tzinfo=dt.UTC)


@pytest.fixture
def scratch() -> Iterator[Engine]:
    """An empty PostgreSQL database of this test's own (it migrates up and down)."""
    name = f"quotad_test_part_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        admin = psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        need("PostgreSQL at 127.0.0.1:5432", f"start it or set PG_TEST_DSN ({exc})")
        raise AssertionError("unreachable") from exc
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
        try:
            yield engine
        finally:
            engine.dispose()
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def at(text_: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text_).replace(tzinfo=dt.UTC)


def record(engine: Engine, when: dt.datetime, sizes: dict[str, int]) -> None:
    item = ScanInput(
        scan_id=uuid.uuid4(),
        source="homes",
        source_kind="tree",
        started_at=when - dt.timedelta(seconds=5),
        finished_at=when,
        measurements=[
            Measurement(member="ann", kind="tree", name=name, bytes=size, files=1)
            for name, size in sizes.items()
        ],
    )
    with session_scope(engine, write=True) as session:
        LedgerService(session, actor="test").record(item)


def rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT id, scan_id, resource_id, member_id, measured_at, bytes, files,"
                    " present, detail::text FROM usage_samples ORDER BY id"
                )
            )
        )


def where(engine: Engine) -> dict[int, str]:
    """Each sample's partition (or the table itself, unpartitioned)."""
    with engine.connect() as conn:
        found = conn.execute(text("SELECT id, tableoid::regclass::text FROM usage_samples"))
        return dict(found.tuples().all())


def relkind(engine: Engine) -> str:
    with engine.connect() as conn:
        return str(
            conn.scalar(text("SELECT relkind FROM pg_class WHERE relname = 'usage_samples'"))
        )


def partitions(engine: Engine) -> list[str]:
    with session_scope(engine) as session:
        return PartitionRepository(session).partitions()


def this_month() -> str:
    today = dt.datetime.now(dt.UTC)
    return f"usage_samples_y{today.year:04d}m{today.month:02d}"


def test_the_migration_moves_every_sample_into_monthly_partitions(scratch: Engine) -> None:
    migrate.upgrade_engine(scratch, BEFORE)
    record(scratch, at("2025-03-04T05:06:07.123456"), {"r1": 10, "r2": 20})
    record(scratch, at("2025-03-31T23:59:59.999999"), {"r1": 11})  # r2 zeroed
    record(scratch, at("2026-07-01T00:00:00"), {"r1": 12, "r2": 22})
    before = rows(scratch)
    assert relkind(scratch) == "r"
    migrate.upgrade_engine(scratch)
    assert relkind(scratch) == "p"
    assert rows(scratch) == before
    assert {"usage_samples_y2025m03", "usage_samples_y2026m07", this_month()} <= set(
        partitions(scratch)
    )
    assert "usage_samples_default" in partitions(scratch)
    placed = where(scratch)
    assert {placed[r.id] for r in before if r.measured_at.month == 3} == {"usage_samples_y2025m03"}
    assert {placed[r.id] for r in before if r.measured_at.year == 2026} == {
        "usage_samples_y2026m07"
    }
    migrate.check_engine(scratch)
    # New samples go on from the same sequence, into their month's partition.
    record(scratch, at("2026-07-15T10:00:00"), {"r1": 13})
    after = rows(scratch)
    assert after[: len(before)] == before
    assert after[-1].id > before[-1].id
    assert where(scratch)[after[-1].id] == "usage_samples_y2026m07"
    with scratch.connect() as conn:
        indexes = set(
            conn.scalars(text("SELECT indexname FROM pg_indexes WHERE tablename = 'usage_samples'"))
        )
    assert {
        "ix_usage_samples_resource_at",
        "ix_usage_samples_member_at",
        "ix_usage_samples_scan_id",
        "pk_usage_samples",
    } <= indexes


def test_ensure_partitions_moves_rows_out_of_the_default_partition(scratch: Engine) -> None:
    migrate.upgrade_engine(scratch)
    record(scratch, at("2031-05-06T07:00:00"), {"r1": 1, "r2": 2})
    record(scratch, at("2031-06-01T00:00:00"), {"r1": 3})
    before = rows(scratch)
    assert set(where(scratch).values()) == {"usage_samples_default"}
    with session_scope(scratch, write=True) as session:
        created = PartitionRepository(session).ensure_partitions(NOW, ahead=1)
    assert "usage_samples_y2031m05" in created
    assert "usage_samples_y2031m06" in created
    assert rows(scratch) == before
    placed = where(scratch)
    assert sorted(placed.values()) == [
        "usage_samples_y2031m05",
        "usage_samples_y2031m05",
        "usage_samples_y2031m06",  # r1, and r2's zero: the scan no longer found it
        "usage_samples_y2031m06",
    ]
    with session_scope(scratch, write=True) as session:
        assert PartitionRepository(session).ensure_partitions(NOW, ahead=1) == []
    migrate.check_engine(scratch)


def test_ensure_partitions_keeps_months_ahead(scratch: Engine) -> None:
    migrate.upgrade_engine(scratch)
    later = at("2030-01-15T00:00:00")
    with session_scope(scratch, write=True) as session:
        created = PartitionRepository(session).ensure_partitions(later, ahead=3)
    assert created == [
        "usage_samples_y2030m01",
        "usage_samples_y2030m02",
        "usage_samples_y2030m03",
        "usage_samples_y2030m04",
    ]
    record(scratch, at("2030-04-30T23:00:00"), {"r1": 1})
    assert set(where(scratch).values()) == {"usage_samples_y2030m04"}


def test_the_migration_downgrades_with_its_rows(scratch: Engine) -> None:
    migrate.upgrade_engine(scratch)
    record(scratch, at("2026-10-04T05:00:00"), {"r1": 10, "r2": 20})
    record(scratch, at("2032-01-01T00:00:00"), {"r1": 11})  # in the DEFAULT partition
    before = rows(scratch)
    cfg = migrate.alembic_config()
    with scratch.begin() as connection:
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, BEFORE)
    assert relkind(scratch) == "r"
    assert rows(scratch) == before
    record(scratch, at("2026-10-05T05:00:00"), {"r1": 12})
    assert rows(scratch)[-1].id > before[-1].id
    migrate.upgrade_engine(scratch)
    assert relkind(scratch) == "p"
    assert len(rows(scratch)) == len(before) + 1
    assert "usage_samples_y2032m01" in partitions(scratch)
    migrate.check_engine(scratch)
