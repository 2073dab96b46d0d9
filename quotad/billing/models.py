"""Finalized periods, their frozen statements, and adjustment lines: append-only."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from quotad.db import Base, BigId, UTCDateTime


class BillingPeriod(Base):
    """A month whose statements are final. Its row exists only once finalized."""

    __tablename__ = "billing_periods"

    # "YYYY-MM": the primary key is what makes two finalizations at once
    # collide instead of both writing statements.
    period: Mapped[str] = mapped_column(String(7), primary_key=True)
    finalized_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    finalized_by: Mapped[str] = mapped_column(Text)
    statements: Mapped[int] = mapped_column(Integer)


class Statement(Base):
    """A member's final statement for a period, exactly as it was served when frozen."""

    __tablename__ = "statements"
    __table_args__ = (Index("uq_statements_period_member", "period", "member_id", unique=True),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    period: Mapped[str] = mapped_column(ForeignKey("billing_periods.period"))
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"))
    # The JSON document itself, canonical (sorted keys, no spaces), so that
    # its bytes, and so its ETag, never change.
    body: Mapped[str] = mapped_column(Text)
    digest: Mapped[str] = mapped_column(String(64))


class Adjustment(Base):
    """A credit (negative) or debit (positive) added by an admin, with its reason.

    It shows in `period`, the first open period at or after the one it
    corrects when it was made; money as text, so no engine rounds it.
    """

    __tablename__ = "billing_adjustments"
    __table_args__ = (Index("ix_billing_adjustments_period", "period", "member_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"))
    period: Mapped[str] = mapped_column(String(7))
    corrects: Mapped[str] = mapped_column(String(7))
    amount: Mapped[str] = mapped_column(String(40))
    currency: Mapped[str] = mapped_column(String(3))
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
