"""Running configured scanners and recording what they found, one source at a time."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine

from quotad.config import Settings, SourceSettings
from quotad.db import session_scope, utcnow
from quotad.errors import InvalidInput
from quotad.ledger.service import LedgerService, RecordResult, ScanInput
from quotad.logs import log_context
from quotad.members.service import MemberService
from scanners.base import Measurement, Progress, ResourceFailure, ScanContext, SourceError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SourceOutcome:
    scan: ScanInput
    result: RecordResult | None  # None when recording itself failed
    record_error: str | None = None

    @property
    def failed(self) -> bool:
        return self.scan.error is not None or self.result is None


def measure(
    source: SourceSettings, progress: Progress | None = None, context: ScanContext | None = None
) -> ScanInput:
    """Run one source's scanner; any failure of the source as a whole becomes its error."""
    scan_id = uuid.uuid4()
    # Whole seconds: what people read in reports, and plenty for billing.
    started = utcnow().replace(microsecond=0)
    measurements: list[Measurement] = []
    failures: list[ResourceFailure] = []
    error: str | None = None
    # Everything logged while measuring, the scanner's own lines included, names the scan.
    with log_context(scan_id=scan_id, source=source.name):
        log.debug("scanning source %s (%s)", source.name, source.kind)
        try:
            for item in source.scanner.scan(progress, context):
                if isinstance(item, Measurement):
                    measurements.append(item)
                else:
                    failures.append(item)
        except SourceError as exc:
            error = str(exc) or type(exc).__name__
        except Exception as exc:
            # A scanner bug fails its own source, never the others; the log keeps the trace.
            log.exception("scanner of source %s crashed", source.name)
            error = f"internal error in the {source.kind} scanner: {type(exc).__name__}: {exc}"
        if error is not None:
            measurements, failures = [], []
        # INFO even when it failed: the caller (the CLI, a job) reports failures as its own.
        outcome = f"{len(measurements)} resources measured, {len(failures)} failed"
        log.info("scanned source %s: %s", source.name, outcome if error is None else error)
    return ScanInput(
        scan_id=scan_id,
        source=source.name,
        source_kind=source.kind,
        started_at=started,
        finished_at=utcnow().replace(microsecond=0),
        measurements=measurements,
        failures=failures,
        error=error,
    )


def record(engine: Engine, settings: Settings, scan: ScanInput, actor: str) -> RecordResult:
    """Record one scan in its own transaction."""
    with log_context(scan_id=scan.scan_id, source=scan.source):
        with session_scope(engine, write=True) as session:
            service = LedgerService(
                session, actor=actor, auto_register=settings.members.auto_register
            )
            result = service.record(scan)
        log.info("recorded scan of %s: %s, %d zeroed", scan.source, result.status, result.zeroed)
    return result


def select_sources(settings: Settings, names: Sequence[str]) -> list[SourceSettings]:
    if not names:
        return list(settings.sources)
    unknown = [n for n in names if settings.source(n) is None]
    if unknown:
        known = ", ".join(s.name for s in settings.sources) or "none configured"
        raise InvalidInput(f"unknown source {', '.join(map(repr, unknown))} (known: {known})")
    return [s for s in settings.sources if s.name in set(names)]


def context_for(
    settings: Settings,
    source: SourceSettings,
    *,
    full: bool,
    emails: Mapping[str, str] | None = None,
) -> ScanContext:
    """What SOURCE's scanner is told for one run; an agent, which sees no ledger, has no EMAILS."""
    return ScanContext(
        full=full,
        state_dir=settings.cache_dir / source.name,
        member_emails=emails or {},
        ledger_url=settings.database_url,
    )


def scan_and_record(
    engine: Engine,
    settings: Settings,
    sources: Sequence[SourceSettings],
    actor: str,
    progress_for: Callable[[SourceSettings], Progress | None] | None = None,
    *,
    full: bool = False,
) -> list[SourceOutcome]:
    """Measure and record each source; one source's failure never stops the others.

    FULL makes scanners that keep a cache read everything again.
    """
    outcomes = []
    with session_scope(engine) as session:
        emails = MemberService(session, actor).emails()
    for source in sources:
        context = context_for(settings, source, full=full, emails=emails)
        scan = measure(source, progress_for(source) if progress_for else None, context)
        try:
            result = record(engine, settings, scan, actor)
        except Exception as exc:
            with log_context(scan_id=scan.scan_id, source=source.name):
                log.exception("recording the scan of %s failed", source.name)
            outcomes.append(SourceOutcome(scan, None, f"{type(exc).__name__}: {exc}"))
            continue
        outcomes.append(SourceOutcome(scan, result))
    return outcomes
