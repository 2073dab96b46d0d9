"""The ledger: sources, resources, scans and the append-only usage samples."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from quotad.db import Base, BigId, UTCDateTime


class Source(Base):
    """A configured thing to measure, registered the first time one of its scans lands."""

    __tablename__ = "sources"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class Resource(Base):
    """One measured thing (a Maildir, a database, a volume) within a source.

    Who it belongs to is recorded per sample, since ownership can change.
    """

    __tablename__ = "resources"
    __table_args__ = (
        Index("uq_resources_source_kind_name", "source_id", "kind", "name", unique=True),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id"))
    kind: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class Scan(Base):
    """One run of one source: complete, partial (some resources failed) or failed."""

    __tablename__ = "scans"
    __table_args__ = (Index("ix_scans_source_finished", "source_id", "finished_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id"))
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    # sha256 of the scan's canonical content: a replay with the same id must
    # carry the same content, or it is a conflict.
    digest: Mapped[str] = mapped_column(String(64))
    measurements: Mapped[int] = mapped_column(Integer)
    failures: Mapped[int] = mapped_column(Integer)
    recorded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class UsageSample(Base):
    """A resource's size from one scan; never updated or deleted.

    `present = False` marks the zero written when a complete scan no longer
    finds the resource, so the step function needs nothing but these rows.
    """

    __tablename__ = "usage_samples"
    # Both cover what a member's history replay reads, so that reading a
    # year of it touches a few index pages rather than a table page per sample.
    __table_args__ = (
        Index(
            "ix_usage_samples_resource_at", "resource_id", "measured_at", "id", "member_id", "bytes"
        ),
        Index("ix_usage_samples_member_at", "member_id", "measured_at", "resource_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    scan_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("scans.id"), index=True)
    resource_id: Mapped[int] = mapped_column(ForeignKey("resources.id"))
    member_id: Mapped[int | None] = mapped_column(ForeignKey("members.id"))
    measured_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    bytes: Mapped[int] = mapped_column(BigInteger)
    files: Mapped[int] = mapped_column(BigInteger)
    present: Mapped[bool] = mapped_column(Boolean)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class MeasurementFailure(Base):
    """A resource a scan found but could not measure; its earlier value stands."""

    __tablename__ = "measurement_failures"
    __table_args__ = (Index("ix_measurement_failures_resource_at", "resource_id", "failed_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    scan_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("scans.id"), index=True)
    resource_id: Mapped[int] = mapped_column(ForeignKey("resources.id"))
    member_id: Mapped[int | None] = mapped_column(ForeignKey("members.id"))
    failed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    error: Mapped[str] = mapped_column(Text)


class CurrentUsage(Base):
    """The latest sample (and any newer failure) per resource.

    Derived from usage_samples and measurement_failures and rebuildable from
    them; kept so that reading usage never scans the history.
    """

    __tablename__ = "current_usage"
    __table_args__ = (
        Index("ix_current_usage_member", "member_id"),
        Index("ix_current_usage_source", "source_id"),
    )

    resource_id: Mapped[int] = mapped_column(ForeignKey("resources.id"), primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id"))
    member_id: Mapped[int | None] = mapped_column(ForeignKey("members.id"))
    # Null while the resource has only ever failed.
    measured_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    bytes: Mapped[int] = mapped_column(BigInteger)
    files: Mapped[int] = mapped_column(BigInteger)
    present: Mapped[bool] = mapped_column(Boolean)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    error_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
