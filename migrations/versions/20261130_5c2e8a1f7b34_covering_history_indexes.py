"""covering indexes for reading a member's history

Revision ID: 5c2e8a1f7b34
Revises: 0d1b590d85f5
Create Date: 2026-11-30 10:05:00.000000

Reading a member's usage replays the history of each resource the member
has been charged for whenever the member is over a soft limit. With these
two indexes both steps read only the index: the member's resources from
(member_id, measured_at, resource_id), then their samples from
(resource_id, measured_at, id, member_id, bytes), instead of one table page
per sample (a year of daily samples is spread over as many pages).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "5c2e8a1f7b34"
down_revision: str | None = "0d1b590d85f5"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("usage_samples", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_samples_member_at")
        batch_op.drop_index("ix_usage_samples_resource_at")
        batch_op.create_index(
            "ix_usage_samples_member_at", ["member_id", "measured_at", "resource_id"], unique=False
        )
        batch_op.create_index(
            "ix_usage_samples_resource_at",
            ["resource_id", "measured_at", "id", "member_id", "bytes"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("usage_samples", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_samples_resource_at")
        batch_op.drop_index("ix_usage_samples_member_at")
        batch_op.create_index(
            "ix_usage_samples_member_at", ["member_id", "measured_at"], unique=False
        )
        batch_op.create_index(
            "ix_usage_samples_resource_at", ["resource_id", "measured_at"], unique=False
        )
