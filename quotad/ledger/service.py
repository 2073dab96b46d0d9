"""Recording scans in the ledger, and reading current usage back."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from quotad.billing.guard import refuse_if_finalized
from quotad.db import utcnow
from quotad.errors import Conflict, InvalidInput
from quotad.ledger.models import Scan
from quotad.ledger.repository import CurrentRow, LedgerRepository, SamplePoint
from quotad.members.service import MemberService
from quotad.timeutil import format_time
from scanners.base import Measurement, ResourceFailure, is_member_name

COMPLETE = "complete"
PARTIAL = "partial"
FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ScanInput:
    """A finished scan of one source, from this host or from an agent."""

    scan_id: uuid.UUID
    source: str
    source_kind: str
    started_at: dt.datetime
    finished_at: dt.datetime
    measurements: Sequence[Measurement] = ()
    failures: Sequence[ResourceFailure] = ()
    error: str | None = None

    @property
    def status(self) -> str:
        if self.error is not None:
            return FAILED
        return PARTIAL if self.failures else COMPLETE

    def digest(self) -> str:
        """A fingerprint of the content, order-insensitive, to tell a replay from a conflict."""
        content = {
            "source": self.source,
            "source_kind": self.source_kind,
            "started_at": format_time(self.started_at),
            "finished_at": format_time(self.finished_at),
            "error": self.error,
            "measurements": sorted(
                [m.kind, m.name, m.member, m.bytes, m.files, dict(sorted(m.detail.items()))]
                for m in self.measurements
            ),
            "failures": sorted([f.kind, f.name, f.member, f.error] for f in self.failures),
        }
        text = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class RecordResult:
    scan_id: uuid.UUID
    status: str
    created: bool  # False when this exact scan had been recorded before
    measurements: int
    failures: int
    zeroed: int = 0  # resources a complete scan no longer found


@dataclass(frozen=True, slots=True)
class SourceStatus:
    source: str
    kind: str
    scan_id: uuid.UUID
    status: str
    finished_at: dt.datetime
    error: str | None


@dataclass(slots=True)
class _Plan:
    """What one scan writes, gathered before any row is sent."""

    samples: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)


def validate(scan: ScanInput) -> None:
    """Reject a scan that cannot be recorded faithfully, before touching the ledger."""
    for name, value in (("started_at", scan.started_at), ("finished_at", scan.finished_at)):
        if value.tzinfo is None:
            raise InvalidInput(f"{name} needs a time zone")
    if scan.finished_at < scan.started_at:
        raise InvalidInput("finished_at is before started_at")
    keys: set[tuple[str, str]] = set()
    items: list[Measurement | ResourceFailure] = [*scan.measurements, *scan.failures]
    for item in items:
        key = (item.kind, item.name)
        if key in keys:
            raise InvalidInput(f"resource {item.kind} {item.name!r} appears twice in one scan")
        keys.add(key)
        if item.member is not None and not is_member_name(item.member):
            raise InvalidInput(f"invalid member name {item.member!r} for {item.kind} {item.name!r}")
        if not item.name or len(item.name) > 255:  # noqa: PLR2004 - the column's width
            raise InvalidInput(f"resource name of {item.kind} must be 1 to 255 characters")
    if scan.error is not None and items:
        raise InvalidInput("a failed scan carries no measurements")


class LedgerService:
    def __init__(
        self, session: Session, *, actor: str = "quotad", auto_register: bool = True
    ) -> None:
        self.session = session
        self.repo = LedgerRepository(session)
        self.members = MemberService(session, actor)
        self.auto_register = auto_register

    def record(self, scan: ScanInput) -> RecordResult:
        """Write one scan; the caller's transaction makes it all or nothing.

        Idempotent on scan_id: the same content again changes nothing, other
        content under a known id is a Conflict.
        """
        validate(scan)
        digest = scan.digest()
        existing = self.repo.get_scan(scan.scan_id)
        if existing is not None:
            if existing.digest != digest:
                raise Conflict(f"scan {scan.scan_id} was already recorded with other content")
            return RecordResult(
                scan.scan_id,
                existing.status,
                created=False,
                measurements=existing.measurements,
                failures=existing.failures,
                zeroed=self.repo.zeroed_by(scan.scan_id),
            )
        refuse_if_finalized(self.session, scan.finished_at, f"scan {scan.scan_id}")
        now = utcnow()
        source = self.repo.get_source(scan.source)
        if source is None:
            source = self.repo.add_source(scan.source, scan.source_kind, now)
        elif source.kind != scan.source_kind:
            raise Conflict(
                f"source {scan.source!r} is of kind {source.kind!r}, not {scan.source_kind!r}"
            )
        self.repo.add_scan(
            Scan(
                id=scan.scan_id,
                source_id=source.id,
                started_at=scan.started_at,
                finished_at=scan.finished_at,
                status=scan.status,
                error=scan.error,
                digest=digest,
                measurements=len(scan.measurements),
                failures=len(scan.failures),
                recorded_at=now,
            )
        )
        if scan.error is not None:
            # A source that failed as a whole leaves every earlier value as it was.
            return RecordResult(scan.scan_id, FAILED, created=True, measurements=0, failures=0)

        plan = self._plan(scan, source.id, now)
        zeros = self._vanished(scan, source.id, plan.seen)
        self.repo.insert_samples(plan.samples + zeros)
        self.repo.insert_failures(plan.failures)
        self.repo.apply_scan_to_current(scan.scan_id, source.id, plan.samples + zeros)
        self.repo.apply_failures_to_current(
            [
                {
                    "resource_id": f["resource_id"],
                    "source_id": source.id,
                    "member_id": f["member_id"],
                    "measured_at": None,
                    "bytes": 0,
                    "files": 0,
                    "present": True,
                    "detail": None,
                    "error": f["error"],
                    "error_at": f["failed_at"],
                }
                for f in plan.failures
            ]
        )
        return RecordResult(
            scan.scan_id,
            scan.status,
            created=True,
            measurements=len(plan.samples),
            failures=len(plan.failures),
            zeroed=len(zeros),
        )

    def _plan(self, scan: ScanInput, source_id: int, now: dt.datetime) -> _Plan:
        items: list[Measurement | ResourceFailure] = [*scan.measurements, *scan.failures]
        names = {i.member for i in items if i.member is not None}
        member_ids = self.members.resolve(
            names, auto_register=self.auto_register, source=scan.source
        )
        resource_ids = self.repo.resource_ids(source_id)
        missing = [(i.kind, i.name) for i in items if (i.kind, i.name) not in resource_ids]
        resource_ids.update(self.repo.create_resources(source_id, missing, now))

        plan = _Plan()
        for m in scan.measurements:
            rid = resource_ids[(m.kind, m.name)]
            plan.seen.add(rid)
            plan.samples.append(
                {
                    "scan_id": scan.scan_id,
                    "resource_id": rid,
                    "member_id": member_ids.get(m.member) if m.member else None,
                    "measured_at": scan.finished_at,
                    "bytes": m.bytes,
                    "files": m.files,
                    "present": True,
                    "detail": dict(m.detail) or None,
                }
            )
        for f in scan.failures:
            rid = resource_ids[(f.kind, f.name)]
            plan.seen.add(rid)
            plan.failures.append(
                {
                    "scan_id": scan.scan_id,
                    "resource_id": rid,
                    "member_id": member_ids.get(f.member) if f.member else None,
                    "failed_at": scan.finished_at,
                    "error": f.error,
                }
            )
        return plan

    def _vanished(self, scan: ScanInput, source_id: int, seen: set[int]) -> list[dict[str, Any]]:
        """Zero samples for resources this scan no longer found: it is authoritative."""
        return [
            {
                "scan_id": scan.scan_id,
                "resource_id": rid,
                "member_id": None,
                "measured_at": scan.finished_at,
                "bytes": 0,
                "files": 0,
                "present": False,
                "detail": None,
            }
            # A scan arriving late never erases what a newer scan found; one
            # in the same second as the last is recorded after it, so it is newer.
            for rid in self.repo.present_in_source(source_id, scan.finished_at)
            if rid not in seen
        ]

    def rebuild_current_usage(self) -> int:
        """Derive current_usage again from the samples and failures alone."""
        self.repo.clear_current()
        latest = {
            sample.resource_id: (sample, source_id, recorded_at)
            for sample, source_id, recorded_at in self.repo.latest_samples()
        }
        self.repo.apply_samples_to_current(
            [
                {
                    "resource_id": s.resource_id,
                    "source_id": source_id,
                    "member_id": s.member_id,
                    "measured_at": s.measured_at,
                    "bytes": s.bytes,
                    "files": s.files,
                    "present": s.present,
                    "detail": s.detail,
                }
                for s, source_id, _ in latest.values()
            ]
        )
        failures = []
        for failure, source_id, recorded_at in self.repo.latest_failures():
            sample, _, sample_recorded_at = latest.get(failure.resource_id, (None, 0, None))
            if sample is not None and (
                sample.measured_at > failure.failed_at
                or (sample.measured_at == failure.failed_at and sample_recorded_at > recorded_at)
            ):
                continue  # measured again since: as recording it live left it
            failures.append(
                {
                    "resource_id": failure.resource_id,
                    "source_id": source_id,
                    "member_id": sample.member_id if sample else failure.member_id,
                    "measured_at": None,
                    "bytes": 0,
                    "files": 0,
                    "present": True,
                    "detail": None,
                    "error": failure.error,
                    "error_at": failure.failed_at,
                }
            )
        self.repo.apply_failures_to_current(failures)
        return len(latest)

    def current(
        self, member_id: int | None = None, *, unattributed: bool = False
    ) -> list[CurrentRow]:
        """Current usage rows; resources that are gone are left out."""
        return [
            r for r in self.repo.current_rows(member_id, unattributed=unattributed) if r.present
        ]

    def source_status(self) -> list[SourceStatus]:
        return [
            SourceStatus(name, kind, scan.id, scan.status, scan.finished_at, scan.error)
            for name, kind, scan in self.repo.last_scans()
        ]

    def member_history(
        self, member_id: int, kinds: Sequence[str] | None = None
    ) -> list[SamplePoint]:
        return self.repo.member_history(member_id, kinds)

    def over_since(
        self, member_id: int, limit: int, kinds: Sequence[str] | None = None
    ) -> dt.datetime | None:
        """over_since(member_history(member_id, kinds), member_id, limit), in the database.

        A member over a limit is asked this on every read of its usage: the
        database replays the history where it is kept, instead of sending a
        year of samples to be replayed here.
        """
        return self.repo.over_since(member_id, limit, kinds)


def over_since(
    points: Sequence[SamplePoint],
    member_id: int,
    limit: int,
    kinds: Mapping[str, bool] | None = None,
) -> dt.datetime | None:
    """When the member's usage last went above `limit` and has stayed above since.

    Replays the step function of the member's resources: a resource counts
    for the member while its latest sample is attributed to them. None when
    usage is not above the limit now.
    """
    values: dict[int, int] = {}
    since: dt.datetime | None = None
    total = 0
    index = 0
    while index < len(points):
        at = points[index].measured_at
        # Samples of one instant form one step, so a scan's rows apply together.
        while index < len(points) and points[index].measured_at == at:
            p = points[index]
            if kinds is None or kinds.get(p.kind, False):
                total -= values.get(p.resource_id, 0)
                values[p.resource_id] = p.bytes if p.member_id == member_id else 0
                total += values[p.resource_id]
            index += 1
        since = (since or at) if total > limit else None
    return since
