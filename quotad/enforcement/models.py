"""What enforcement did: actions on resources and warning mail; rows are only added."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from quotad.db import Base, BigId, UTCDateTime


class EnforcementAction(Base):
    """One step of restricting or lifting one resource, or pushing a native limit.

    A restrict or lift is recorded as `started` (with the snapshot taken
    before acting) and then `done` or `failed`, so that a run killed in
    between leaves enough for the next run to finish or undo it. The newest
    row per resource tells whether it is restricted now.
    """

    __tablename__ = "enforcement_actions"
    __table_args__ = (
        Index("ix_enforcement_actions_resource", "source", "kind", "resource", "id"),
        Index("ix_enforcement_actions_member", "member_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[str] = mapped_column(String(36))
    member_id: Mapped[int | None] = mapped_column(ForeignKey("members.id"))
    source: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    resource: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    saved: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    reason: Mapped[str] = mapped_column(Text)
    message: Mapped[str | None] = mapped_column(Text)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class Notification(Base):
    """One warning mail (or the attempt at one) about a member's scope."""

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_member_scope", "member_id", "scope", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[str] = mapped_column(String(36))
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"))
    scope: Mapped[str] = mapped_column(String(32))
    event: Mapped[str] = mapped_column(String(16))
    # The notify_at fraction reached, as text ("0.9"), or null.
    level: Mapped[str | None] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    used_bytes: Mapped[int] = mapped_column(BigInteger)
    recipients: Mapped[str] = mapped_column(Text)
    subject: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
