"""One row per run of a scheduled job, claimed for its slot before it starts."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from quotad.db import Base, BigId, UTCDateTime


class JobRun(Base):
    """A job's run for one slot (the scheduled time it stands for).

    The unique (job, slot) is what lets several schedulers share a ledger:
    whichever inserts the row first runs the slot, the others see the
    conflict and skip it. The row is written when the run is claimed and
    once more when it ends; it is operational history, not the ledger, and
    retention removes old rows.
    """

    __tablename__ = "job_runs"
    __table_args__ = (
        Index("uq_job_runs_job_slot", "job", "slot", unique=True),
        Index("ix_job_runs_started", "started_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job: Mapped[str] = mapped_column(String(128))
    slot: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    instance: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # running, ok, failed
    outcome: Mapped[str] = mapped_column(String(16))
    # Microseconds, so that a duration is an exact integer.
    duration_us: Mapped[int | None] = mapped_column(BigId)
    detail: Mapped[str | None] = mapped_column(Text)
