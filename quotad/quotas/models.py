"""Per-member quota overrides of the default plan."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from quotad.db import Base, UTCDateTime


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
