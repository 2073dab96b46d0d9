"""API tokens: who may call the HTTP API, in which role."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, CheckConstraint, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from quotad.db import Base, BigId, UTCDateTime


class ApiToken(Base):
    """One issued token. Only its hash is kept; revoked tokens stay, for the record."""

    __tablename__ = "api_tokens"
    __table_args__ = (
        CheckConstraint("role IN ('member', 'portal', 'admin', 'scanner')", name="role"),
        # A member token is bound to its member; no other role is.
        CheckConstraint("(role = 'member') = (member_id IS NOT NULL)", name="member"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    member_id: Mapped[int | None] = mapped_column(ForeignKey("members.id"))
    # Scanner tokens: the source names it may send scans of; NULL means any.
    sources: Mapped[list[str] | None] = mapped_column(JSON)
    label: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(255))
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    revoked_by: Mapped[str | None] = mapped_column(String(255))
