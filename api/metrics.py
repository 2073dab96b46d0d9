"""GET /metrics: Prometheus text exposition (format 0.0.4), written by hand.

Per source the age and status of its last scan, members per quota state (each
member counted once, in its worst scope's state), per scheduled job the outcome,
time and duration of its latest run (from the ledger, so every instance shows
what all of them ran), and per route template (never
the raw path, which would make a label per member name) request counts and a
latency histogram, fed by the request-id middleware (api/requestid.py), the
one place a request is timed.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response

from api.deps import ContextDep
from api.schemas.common import errors
from quotad.db import session_scope, utcnow
from quotad.jobs.repository import OUTCOMES as JOB_OUTCOMES
from quotad.jobs.repository import JobSummary
from quotad.jobs.service import job_summaries
from quotad.ledger.service import LedgerService
from quotad.quotas.service import QuotaService
from quotad.quotas.state import GRACE_EXPIRED, HARD, OK, SOFT

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Worst last: a member is counted in its worst scope's state.
STATES = (OK, SOFT, GRACE_EXPIRED, HARD)
SCAN_STATUSES = ("complete", "partial", "failed")
# A request that matched no route: one label, whatever the path.
UNMATCHED = "unmatched"


def escape(value: str) -> str:
    """A label value as the text format wants it: backslash, quote, newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def labels(**values: str) -> str:
    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in values.items()) + "}"


def number(value: float) -> str:
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


class RequestStats:
    """Counts and latencies per (method, route, status); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[tuple[str, str, str], int] = {}
        # Per (method, route): bucket counts (not cumulative), sum, count.
        self.latency: dict[tuple[str, str], tuple[list[int], float, int]] = {}

    def observe(self, method: str, route: str | None, status: int, seconds: float) -> None:
        """One answer; ROUTE None for a request that matched no route."""
        route = route or UNMATCHED
        with self._lock:
            key = (method, route, str(status))
            self.counts[key] = self.counts.get(key, 0) + 1
            buckets, total, count = self.latency.get((method, route), ([0] * len(BUCKETS), 0.0, 0))
            index = bisect.bisect_left(BUCKETS, seconds)
            if index < len(BUCKETS):
                buckets[index] += 1
            self.latency[(method, route)] = (buckets, total + seconds, count + 1)

    def lines(self) -> Iterable[str]:
        with self._lock:
            counts = sorted(self.counts.items())
            latency = sorted((k, (list(b), s, c)) for k, (b, s, c) in self.latency.items())
        yield "# HELP quotad_http_requests_total HTTP requests answered, per route template."
        yield "# TYPE quotad_http_requests_total counter"
        for (method, route, status), count in counts:
            tags = labels(method=method, route=route, status=status)
            yield f"quotad_http_requests_total{tags} {count}"
        yield "# HELP quotad_http_request_duration_seconds Time to answer, per route template."
        yield "# TYPE quotad_http_request_duration_seconds histogram"
        name = "quotad_http_request_duration_seconds"
        for (method, route), (buckets, total, count) in latency:
            cumulative = 0
            for bound, n in zip(BUCKETS, buckets, strict=True):
                cumulative += n
                le = labels(method=method, route=route, le=number(bound))
                yield f"{name}_bucket{le} {cumulative}"
            yield f"{name}_bucket{labels(method=method, route=route, le='+Inf')} {count}"
            yield f"{name}_sum{labels(method=method, route=route)} {number(total)}"
            yield f"{name}_count{labels(method=method, route=route)} {count}"


router = APIRouter(tags=["health"])


def ledger_lines(context: Any) -> Iterable[str]:
    now = utcnow()
    with session_scope(context.engine) as session:
        sources = LedgerService(session).source_status()
        report = QuotaService(session, context.settings, "api:metrics").report(now)
        jobs = job_summaries(session)
    yield "# HELP quotad_source_last_scan_age_seconds Seconds since the last scan finished."
    yield "# TYPE quotad_source_last_scan_age_seconds gauge"
    for s in sorted(sources, key=lambda s: s.source):
        age = max((now - s.finished_at).total_seconds(), 0.0)
        yield f"quotad_source_last_scan_age_seconds{labels(source=s.source)} {number(age)}"
    yield "# HELP quotad_source_last_scan_status The status of the source's last scan (1 = it)."
    yield "# TYPE quotad_source_last_scan_status gauge"
    for s in sorted(sources, key=lambda s: s.source):
        for status in SCAN_STATUSES:
            value = 1 if s.status == status else 0
            yield (
                f"quotad_source_last_scan_status{labels(source=s.source, status=status)} {value}"
            )
    counts = dict.fromkeys(STATES, 0)
    for usage in report:
        worst = max((STATES.index(q["state"]) for q in usage["quotas"]), default=0)
        counts[STATES[worst]] += 1
    yield "# HELP quotad_members Members per quota state, each in its worst scope's state."
    yield "# TYPE quotad_members gauge"
    for state in STATES:
        yield f"quotad_members{labels(state=state)} {counts[state]}"
    yield from job_lines(jobs)


def job_lines(jobs: Iterable[JobSummary]) -> Iterable[str]:
    """Scheduled jobs as every instance on the ledger ran them, read from job_runs."""
    jobs = list(jobs)
    yield "# HELP quotad_job_last_outcome The outcome of the job's latest slot (1 = it)."
    yield "# TYPE quotad_job_last_outcome gauge"
    for j in jobs:
        for outcome in JOB_OUTCOMES:
            value = 1 if j.outcome == outcome else 0
            yield f"quotad_job_last_outcome{labels(job=j.job, outcome=outcome)} {value}"
    yield "# HELP quotad_job_last_run_timestamp_seconds When the job's latest slot started."
    yield "# TYPE quotad_job_last_run_timestamp_seconds gauge"
    for j in jobs:
        stamp = number(j.started_at.timestamp())
        yield f"quotad_job_last_run_timestamp_seconds{labels(job=j.job)} {stamp}"
    yield "# HELP quotad_job_last_duration_seconds How long the job's latest finished run took."
    yield "# TYPE quotad_job_last_duration_seconds gauge"
    for j in jobs:
        if j.duration_us is not None:
            seconds = number(j.duration_us / 1_000_000)
            yield f"quotad_job_last_duration_seconds{labels(job=j.job)} {seconds}"
    yield "# HELP quotad_job_runs Runs of the job on record (retention prunes old ones)."
    yield "# TYPE quotad_job_runs gauge"
    for j in jobs:
        for outcome in JOB_OUTCOMES:
            count = j.runs.get(outcome, 0)
            yield f"quotad_job_runs{labels(job=j.job, outcome=outcome)} {count}"


@router.get(
    "/metrics",
    responses={200: {"content": {"text/plain": {}}}, **errors(503)},
    response_class=Response,
)
def metrics(request: Request, context: ContextDep) -> Response:
    context.ensure_ready()
    stats: RequestStats = request.app.state.request_stats
    lines = [*ledger_lines(context), *stats.lines()]
    return Response("\n".join(lines) + "\n", media_type=CONTENT_TYPE)


def install(app: FastAPI) -> RequestStats:
    """The /metrics route; the request middleware (api/requestid.py) feeds the stats."""
    stats = RequestStats()
    app.state.request_stats = stats
    app.include_router(router)
    return stats
