"""Per-member quota overrides of the default plan."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from quotad.db import Base, BigId, UTCDateTime


class QuotaOverride(Base):
    """One change of a member's limits for a scope; the newest row per scope wins.

    Rows are only ever added: a reset is a row with `cleared = True`, so the
    whole history of a member's plan stays readable.
    """

    __tablename__ = "quota_overrides"
    __table_args__ = (Index("ix_quota_overrides_member_scope", "member_id", "scope", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"))
    scope: Mapped[str] = mapped_column(String(32))
    cleared: Mapped[bool] = mapped_column(Boolean)
    soft_bytes: Mapped[int | None] = mapped_column(BigInteger)
    hard_bytes: Mapped[int | None] = mapped_column(BigInteger)
    grace_seconds: Mapped[int | None] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class QuotaStateRow(Base):
    """A member's quota state for a scope, recorded whenever it changes.

    The newest row per member and scope is the state in force; the rows
    before it are its history. `over_soft_since` is the grace timer's start.
    Limits are null for a scope that lost its limits.
    """

    __tablename__ = "quota_states"
    __table_args__ = (Index("ix_quota_states_member_scope", "member_id", "scope", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"))
    scope: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))
    used_bytes: Mapped[int] = mapped_column(BigInteger)
    soft_bytes: Mapped[int | None] = mapped_column(BigInteger)
    hard_bytes: Mapped[int | None] = mapped_column(BigInteger)
    grace_seconds: Mapped[int | None] = mapped_column(BigInteger)
    over_soft_since: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    grace_ends_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Stale or failed measurements kept the state from falling.
    held: Mapped[bool] = mapped_column(Boolean)
    run_id: Mapped[str] = mapped_column(String(36))
    recorded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
