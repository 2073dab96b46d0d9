"""Scheduled jobs: one row per run, unique per job and slot.

Revision ID: 4a7d2c9e1b58
Revises: 9ce9aa20400f
Create Date: 2026-11-30 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import quotad.db

revision: str = "4a7d2c9e1b58"
down_revision: str | None = "9ce9aa20400f"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_runs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("job", sa.String(length=128), nullable=False),
        sa.Column("slot", quotad.db.UTCDateTime(), nullable=False),
        sa.Column("instance", sa.String(length=255), nullable=False),
        sa.Column("started_at", quotad.db.UTCDateTime(), nullable=False),
        sa.Column("finished_at", quotad.db.UTCDateTime(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column(
            "duration_us", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_runs")),
    )
    with op.batch_alter_table("job_runs", schema=None) as batch_op:
        batch_op.create_index("ix_job_runs_started", ["started_at"], unique=False)
        batch_op.create_index("uq_job_runs_job_slot", ["job", "slot"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("job_runs", schema=None) as batch_op:
        batch_op.drop_index("uq_job_runs_job_slot")
        batch_op.drop_index("ix_job_runs_started")
    op.drop_table("job_runs")
