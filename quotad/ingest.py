"""Scans sent by agents on other hosts: what is checked before the ledger records one.

The ledger's own checks (LedgerService.record) still apply; these are the
ones only a scan from elsewhere needs: the token's sources, the clock, and
the source's kind when the agent leaves it out.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Sequence

from sqlalchemy.orm import Session

from quotad.config import Settings
from quotad.db import utcnow
from quotad.errors import Conflict, Forbidden, InvalidInput, QuotadError
from quotad.ledger.repository import LedgerRepository
from quotad.ledger.service import LedgerService, RecordResult, ScanInput
from quotad.logs import log_context
from quotad.sources import RESOURCE_KINDS, SCANNERS
from scanners.base import Measurement, ResourceFailure

log = logging.getLogger(__name__)

# How far ahead of this server's clock an agent's clock may be.
MAX_CLOCK_SKEW = dt.timedelta(minutes=5)

# The source kind whose scanner yields each resource kind: tree -> tree, afs_volume -> afs, ...
SOURCE_KIND_OF = {cls.resource_kind: kind for kind, cls in SCANNERS.items()}


def check_times(started_at: dt.datetime, finished_at: dt.datetime, now: dt.datetime) -> None:
    for name, value in (("started_at", started_at), ("finished_at", finished_at)):
        if value.tzinfo is None:
            raise InvalidInput(f"{name} needs a time zone")
        if value > now + MAX_CLOCK_SKEW:
            raise InvalidInput(
                f"{name} is more than {int(MAX_CLOCK_SKEW.total_seconds() // 60)} minutes "
                "in the future; check the agent's clock"
            )


def source_kind(
    session: Session,
    settings: Settings,
    source: str,
    declared: str | None,
    resource_kinds: Sequence[str],
) -> str:
    """The kind of SOURCE: as sent, else as configured here, else as the ledger knows it,
    else the kind whose scanner yields the scan's resources."""
    configured = settings.source(source)
    stored = LedgerRepository(session).get_source(source)
    known = configured.kind if configured else (stored.kind if stored else None)
    if declared is not None:
        if declared not in SCANNERS:
            raise InvalidInput(
                f"unknown source_kind {declared!r} (known: {', '.join(sorted(SCANNERS))})"
            )
        if known is not None and declared != known:
            raise Conflict(f"source {source!r} is of kind {known!r}, not {declared!r}")
        return declared
    inferred = {SOURCE_KIND_OF[k] for k in resource_kinds if k in SOURCE_KIND_OF}
    if known is not None:
        if len(inferred) == 1 and known not in inferred:
            raise Conflict(
                f"source {source!r} is of kind {known!r}; these resources are of a "
                f"{inferred.pop()!r} source"
            )
        return known
    if not inferred:
        raise InvalidInput(
            f"source {source!r} is unknown here and the scan has no resources to tell its "
            "kind by: send source_kind"
        )
    if len(inferred) > 1:
        raise InvalidInput(f"the resources of one scan belong to one source kind, not {inferred}")
    return inferred.pop()


def check_resource_kinds(kind: str, resource_kinds: Sequence[str]) -> None:
    expected = SCANNERS[kind].resource_kind if kind in SCANNERS else None
    for resource_kind in resource_kinds:
        if resource_kind not in RESOURCE_KINDS:
            raise InvalidInput(
                f"unknown resource kind {resource_kind!r} "
                f"(known: {', '.join(sorted(RESOURCE_KINDS))})"
            )
        if expected is not None and resource_kind != expected:
            # A mail host's token cannot pass off database usage as its own source's.
            raise InvalidInput(
                f"a source of kind {kind!r} measures {expected} resources, not {resource_kind}"
            )


def ingest(
    session: Session,
    settings: Settings,
    *,
    scan_id: uuid.UUID,
    source: str,
    declared_kind: str | None,
    started_at: dt.datetime,
    finished_at: dt.datetime,
    measurements: Sequence[Measurement],
    failures: Sequence[ResourceFailure],
    error: str | None,
    actor: str,
    allowed_sources: frozenset[str] | None,
    now: dt.datetime | None = None,
) -> RecordResult:
    """Check and record one agent's scan in the caller's transaction.

    ALLOWED_SOURCES is what the sender may send scans of; None means any.
    """
    with log_context(scan_id=scan_id, source=source):
        try:
            if allowed_sources is not None and source not in allowed_sources:
                raise Forbidden(f"this token may not send scans of source {source!r}")
            check_times(started_at, finished_at, now or utcnow())
            resource_kinds = [m.kind for m in measurements] + [f.kind for f in failures]
            kind = source_kind(session, settings, source, declared_kind, resource_kinds)
            check_resource_kinds(kind, resource_kinds)
            scan = ScanInput(
                scan_id=scan_id,
                source=source,
                source_kind=kind,
                started_at=started_at,
                finished_at=finished_at,
                measurements=measurements,
                failures=failures,
                error=error,
            )
            service = LedgerService(
                session, actor=actor, auto_register=settings.members.auto_register
            )
            result = service.record(scan)
        except QuotadError as exc:
            # An agent sending what cannot be recorded is for the admin, not only the agent.
            log.warning("refused a scan of %s from %s: %s", source, actor, exc)
            raise
        log.info(
            "%s a scan of %s from %s: %s",
            "recorded" if result.created else "already had",
            source,
            actor,
            result.status,
        )
        return result
