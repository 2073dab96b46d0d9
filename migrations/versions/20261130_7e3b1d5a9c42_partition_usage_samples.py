"""usage_samples partitioned by month on PostgreSQL

Revision ID: 7e3b1d5a9c42
Revises: 4a7d2c9e1b58
Create Date: 2026-11-30 17:00:00.000000

On PostgreSQL usage_samples becomes a table partitioned by RANGE
(measured_at), one partition per UTC month (usage_samples_yYYYYmMM) and a
DEFAULT partition (usage_samples_default) as a safety net for a sample whose
month has no partition yet; quotad.retention.repository.ensure_partitions
keeps months ahead created (run by `quotad db upgrade` and the retention job)
and moves rows out of the DEFAULT partition. A partitioned table's primary
key must hold the partition key, so it is (id, measured_at); nothing refers
to usage_samples.id. Ids still come from usage_samples_id_seq, now owned by
the new table's id. The SQL is written out here rather than imported, so
that this migration stays what it was when quotad's code moves on.

SQLite is untouched.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from alembic import op
from sqlalchemy import Connection, text

revision: str = "7e3b1d5a9c42"
down_revision: str | None = "4a7d2c9e1b58"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Months created beyond the current one, so that inserts never need the DEFAULT partition.
AHEAD = 3
COLUMNS = "id, scan_id, resource_id, member_id, measured_at, bytes, files, present, detail"
_TABLE = """
CREATE TABLE {name} (
    id BIGINT NOT NULL DEFAULT nextval('usage_samples_id_seq'::regclass),
    scan_id UUID NOT NULL,
    resource_id INTEGER NOT NULL,
    member_id INTEGER,
    measured_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    bytes BIGINT NOT NULL,
    files BIGINT NOT NULL,
    present BOOLEAN NOT NULL,
    detail JSON,
    CONSTRAINT pk_usage_samples PRIMARY KEY ({key}),
    CONSTRAINT fk_usage_samples_member_id_members
        FOREIGN KEY (member_id) REFERENCES members (id),
    CONSTRAINT fk_usage_samples_resource_id_resources
        FOREIGN KEY (resource_id) REFERENCES resources (id),
    CONSTRAINT fk_usage_samples_scan_id_scans FOREIGN KEY (scan_id) REFERENCES scans (id)
){partitioning}
"""
_INDEXES = (
    (
        "CREATE INDEX ix_usage_samples_resource_at ON usage_samples"
        " (resource_id, measured_at, id, member_id, bytes)"
    ),
    "CREATE INDEX ix_usage_samples_member_at ON usage_samples (member_id, measured_at, resource_id)",
    "CREATE INDEX ix_usage_samples_scan_id ON usage_samples (scan_id)",
)


def _month(value: dt.datetime | dt.date) -> dt.date:
    return dt.date(value.year, value.month, 1)


def _next(month: dt.date) -> dt.date:
    return dt.date(month.year + month.month // 12, month.month % 12 + 1, 1)


def _set_aside(conn: Connection, old: str) -> None:
    """Rename the table to OLD and free its constraint and index names."""
    conn.execute(text(f"ALTER TABLE usage_samples RENAME TO {old}"))
    for index in ("ix_usage_samples_resource_at", "ix_usage_samples_member_at"):
        conn.execute(text(f"DROP INDEX {index}"))
    conn.execute(text("DROP INDEX ix_usage_samples_scan_id"))
    for constraint in (
        "pk_usage_samples",
        "fk_usage_samples_member_id_members",
        "fk_usage_samples_resource_id_resources",
        "fk_usage_samples_scan_id_scans",
    ):
        conn.execute(text(f"ALTER TABLE {old} DROP CONSTRAINT {constraint}"))


def _take_over(conn: Connection, old: str) -> None:
    """Copy OLD's rows into usage_samples, give it the sequence and the indexes, drop OLD."""
    copy = f"INSERT INTO usage_samples ({COLUMNS}) SELECT {COLUMNS} FROM {old}"  # noqa: S608 - our own names
    conn.execute(text(copy))
    # Dropping OLD would drop a sequence it still owned.
    conn.execute(text("ALTER SEQUENCE usage_samples_id_seq OWNED BY usage_samples.id"))
    conn.execute(text(f"DROP TABLE {old}"))
    # Built after the copy: one sort per index instead of a row at a time.
    for statement in _INDEXES:
        conn.execute(text(statement))


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    conn.execute(text("LOCK TABLE usage_samples IN ACCESS EXCLUSIVE MODE"))
    months = {
        _month(at)
        for (at,) in conn.execute(
            text("SELECT DISTINCT date_trunc('month', measured_at) FROM usage_samples")
        )
    }
    month = _month(dt.datetime.now(dt.UTC))
    for _ in range(AHEAD + 1):
        months.add(month)
        month = _next(month)
    _set_aside(conn, "usage_samples_unpartitioned")
    conn.execute(
        text(
            _TABLE.format(
                name="usage_samples",
                key="id, measured_at",
                partitioning=" PARTITION BY RANGE (measured_at)",
            )
        )
    )
    for first in sorted(months):
        conn.execute(
            text(
                f"CREATE TABLE usage_samples_y{first.year:04d}m{first.month:02d}"
                " PARTITION OF usage_samples"
                f" FOR VALUES FROM ('{first.isoformat()}') TO ('{_next(first).isoformat()}')"
            )
        )
    conn.execute(text("CREATE TABLE usage_samples_default PARTITION OF usage_samples DEFAULT"))
    _take_over(conn, "usage_samples_unpartitioned")
    conn.execute(text("ANALYZE usage_samples"))


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    conn.execute(text("LOCK TABLE usage_samples IN ACCESS EXCLUSIVE MODE"))
    _set_aside(conn, "usage_samples_partitioned")
    conn.execute(text(_TABLE.format(name="usage_samples", key="id", partitioning="")))
    # Dropping the partitioned table drops its partitions with it.
    _take_over(conn, "usage_samples_partitioned")
    conn.execute(text("ANALYZE usage_samples"))
