"""Billing: finalized periods, their frozen statements, adjustment lines (append-only).

Revision ID: 9ce9aa20400f
Revises: 32158690d1b9
Create Date: 2026-11-30 13:16:30.412971
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import quotad.db

revision: str = "9ce9aa20400f"
down_revision: str | None = "32158690d1b9"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "billing_periods",
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("finalized_at", quotad.db.UTCDateTime(), nullable=False),
        sa.Column("finalized_by", sa.Text(), nullable=False),
        sa.Column("statements", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("period", name=op.f("pk_billing_periods")),
    )
    op.create_table(
        "billing_adjustments",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("corrects", sa.String(length=7), nullable=False),
        sa.Column("amount", sa.String(length=40), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("created_at", quotad.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name=op.f("fk_billing_adjustments_member_id_members")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_adjustments")),
    )
    with op.batch_alter_table("billing_adjustments", schema=None) as batch_op:
        batch_op.create_index(
            "ix_billing_adjustments_period", ["period", "member_id"], unique=False
        )

    op.create_table(
        "statements",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name=op.f("fk_statements_member_id_members")
        ),
        sa.ForeignKeyConstraint(
            ["period"],
            ["billing_periods.period"],
            name=op.f("fk_statements_period_billing_periods"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_statements")),
    )
    with op.batch_alter_table("statements", schema=None) as batch_op:
        batch_op.create_index("uq_statements_period_member", ["period", "member_id"], unique=True)


def downgrade() -> None:

    with op.batch_alter_table("statements", schema=None) as batch_op:
        batch_op.drop_index("uq_statements_period_member")

    op.drop_table("statements")
    with op.batch_alter_table("billing_adjustments", schema=None) as batch_op:
        batch_op.drop_index("ix_billing_adjustments_period")

    op.drop_table("billing_adjustments")
    op.drop_table("billing_periods")
