"""Background work: each job run, and the scheduler's lease."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import DateTime, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import db
from app.models.base import enum_column, utcnow


class JobStatus(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class JobRun(db.Model):
    __tablename__ = "job_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    job: Mapped[str] = mapped_column(String(64), index=True)
    # Which process ran it ("host:pid:token").
    runner: Mapped[str] = mapped_column(String(128))
    status: Mapped[JobStatus] = mapped_column(enum_column(JobStatus, name="job_status"),
                                              default=JobStatus.RUNNING)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow,
                                                 index=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="")


class SchedulerLease(db.Model):
    """Leases by name, each with an expiry: who runs the jobs, used where no
    advisory lock exists (SQLite), with the heartbeat that ``/health`` reports
    everywhere; and the short leases of background work a request starts that must
    run once in the whole deployment (a site's nameserver check)."""

    __tablename__ = "scheduler_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
