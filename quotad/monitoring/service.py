"""The health check's verdict, from facts read beforehand: no database, no clock.

The Monitoring Plugins Development Guidelines shape the result: a state
(0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN, the worst problem's), one status
line with performance data after a `|`, then one line per problem.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from quotad.enforcement.repository import PUSH_LIMIT, STARTED
from quotad.formatting import human_size
from quotad.jobs.repository import FAILED as JOB_FAILED
from quotad.ledger.service import FAILED as SCAN_FAILED
from quotad.monitoring.repository import (
    ActionFact,
    JobFact,
    MonitoringRepository,
    SourceFacts,
    Unattributed,
)
from quotad.timeutil import format_time

OK = 0
WARNING = 1
CRITICAL = 2
UNKNOWN = 3
STATE_NAMES = ("OK", "WARNING", "CRITICAL", "UNKNOWN")
SERVICE = "QUOTAD"

# A restrict or lift still `started` this long after its run began was cut
# short (runs take seconds to minutes); younger, it may be going on now.
INTERRUPTED_AFTER = 3600
# Names shown per kind of problem on the status line; the rest are counted.
SHOWN = 3
SUMMARY_TEXT = 60
LONG_TEXT = 300


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Seconds since a source's last good scan, and counts of unattributed resources.

    A count alerts when it is above its threshold (the guidelines' range
    `0:N`); no critical count means that count is never critical.
    """

    stale_warning: int
    stale_critical: int
    unattributed_warning: int = 0
    unattributed_critical: int | None = None


@dataclass(frozen=True, slots=True)
class Facts:
    sources: Sequence[SourceFacts]
    actions: Sequence[ActionFact]
    unattributed: Unattributed
    jobs: Sequence[JobFact]


@dataclass(frozen=True, slots=True)
class Perf:
    """One performance datum: 'label'=value[UOM];[warn];[crit];[min];[max]."""

    label: str
    value: int | None  # None: could not be determined (shown as U)
    uom: str = ""
    warn: str = ""
    crit: str = ""
    min: str = ""
    max: str = ""

    def __str__(self) -> str:
        # A label holds no quote or equals sign; source names never do.
        label = self.label.replace("'", "").replace("=", "")
        value = "U" if self.value is None else f"{self.value}{self.uom}"
        fields = [value, self.warn, self.crit, self.min, self.max]
        while fields[-1] == "":
            fields.pop()
        return f"'{label}'=" + ";".join(fields)


@dataclass(frozen=True, slots=True)
class Problem:
    state: int
    group: str  # which kind of problem: one part of the status line each
    item: str  # this problem on the status line, within its group's parentheses
    line: str  # this problem in full, for the long output


@dataclass(frozen=True, slots=True)
class CheckResult:
    state: int
    summary: str
    perfdata: tuple[Perf, ...] = ()
    long: tuple[str, ...] = field(default=())

    def render(self) -> str:
        """The plugin's output: the status line, then the long output."""
        first = f"{SERVICE} {STATE_NAMES[self.state]} - {one_line(self.summary)}"
        if self.perfdata:
            first += " | " + " ".join(str(p) for p in self.perfdata)
        return "\n".join([first, *(one_line(line) for line in self.long)]) + "\n"


def unknown(reason: str) -> CheckResult:
    """The check could not be made: a bad argument, the config, the ledger, a timeout."""
    return CheckResult(UNKNOWN, reason)


def one_line(text: str, limit: int | None = None) -> str:
    """TEXT on one line with no `|`, which would start the performance data."""
    flat = " ".join(text.replace("|", "/").split())
    if limit is not None and len(flat) > limit:
        flat = flat[: limit - 3].rstrip() + "..."
    return flat


def duration(seconds: float) -> str:
    """Whole units, the way quotad reads durations: 45s, 25m, 40h, 3d, 3d4h."""
    s = max(int(seconds), 0)
    if s < 60:  # noqa: PLR2004 - a minute
        return f"{s}s"
    if s < 3600:  # noqa: PLR2004 - an hour
        return f"{s // 60}m"
    if s < 2 * 86400:
        return f"{s // 3600}h"
    days, hours = divmod(s // 3600, 24)
    return f"{days}d{hours}h" if hours else f"{days}d"


def _plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n} {word if n == 1 else (words or word + 's')}"


# What each group is called on the status line, in the order groups are shown
# within a state.
GROUPS = {
    "never": ("source never scanned", "sources never scanned"),
    "stale": ("stale source", "stale sources"),
    "enforcement": ("failed enforcement action", "failed enforcement actions"),
    "failing": ("failing source", "failing sources"),
    "partial": ("partial scan", "partial scans"),
    "limits": ("failed native limit", "failed native limits"),
    "unattributed": ("", ""),  # says its own count
    "jobs": ("failed job", "failed jobs"),
}


def evaluate(facts: Facts, thresholds: Thresholds, now: dt.datetime) -> CheckResult:
    """The state, status line, performance data and long output for FACTS at NOW."""
    problems = [
        *_source_problems(facts.sources, thresholds, now),
        *_action_problems(facts.actions, now),
        *_unattributed_problems(facts.unattributed, thresholds),
        *_job_problems(facts.jobs),
    ]
    state = max((p.state for p in problems), default=OK)
    summary = _summary(problems) if problems else _all_well(facts, thresholds, now)
    ordered = sorted(problems, key=lambda p: -p.state)
    long = tuple(f"{STATE_NAMES[p.state]}: {p.line}" for p in ordered)
    return CheckResult(state, summary, _perfdata(facts, thresholds, problems, now), long)


def _age(scan_at: dt.datetime, now: dt.datetime) -> int:
    # An agent's clock may run a little ahead: a scan from the future is fresh.
    return max(int((now - scan_at).total_seconds()), 0)


def _source_problems(
    sources: Sequence[SourceFacts], thresholds: Thresholds, now: dt.datetime
) -> Iterator[Problem]:
    limits = (
        f"warning at {duration(thresholds.stale_warning)}, "
        f"critical at {duration(thresholds.stale_critical)}"
    )
    for source in sources:
        last, good = source.last, source.last_good
        if good is None:
            if last is None:
                line = f"source {source.name}: never scanned"
            else:
                line = (
                    f"source {source.name}: never scanned successfully; its last scan failed "
                    f"at {format_time(last.finished_at)}: {one_line(last.error or '?', LONG_TEXT)}"
                )
            yield Problem(CRITICAL, "never", source.name, line)
            continue
        age = _age(good.finished_at, now)
        if age >= thresholds.stale_warning:
            state = CRITICAL if age >= thresholds.stale_critical else WARNING
            yield Problem(
                state,
                "stale",
                f"{source.name}: last scan {duration(age)} ago",
                f"source {source.name}: last complete or partial scan "
                f"{format_time(good.finished_at)}, {duration(age)} ago ({limits})",
            )
        if last is not None and last.status == SCAN_FAILED:
            error = last.error or "?"
            yield Problem(
                WARNING,
                "failing",
                f"{source.name}: {one_line(error, SUMMARY_TEXT)}",
                f"source {source.name}: last scan failed at {format_time(last.finished_at)}: "
                f"{one_line(error, LONG_TEXT)}",
            )
        elif good.failures:
            failed = _plural(good.failures, "resource")
            yield Problem(
                WARNING,
                "partial",
                f"{source.name}: {failed} failed",
                f"source {source.name}: last scan at {format_time(good.finished_at)} was "
                f"partial: {failed} could not be measured and keep their earlier values",
            )


def _action_problems(actions: Sequence[ActionFact], now: dt.datetime) -> Iterator[Problem]:
    for a in actions:
        what = f"{a.action} {a.source}:{a.resource}"
        whose = f" (member {a.member})" if a.member else ""
        full = f"{a.action} of {a.source} {a.kind} {a.resource}{whose}"
        if a.status == STARTED:
            if _age(a.at, now) < INTERRUPTED_AFTER:
                continue  # an enforce run may be at it now
            yield Problem(
                CRITICAL,
                "enforcement",
                f"{what} interrupted",
                f"{full} started in the run of {format_time(a.at)} and never finished; "
                "the next `quotad enforce` retries it",
            )
            continue
        message = one_line(a.message or "?", LONG_TEXT)
        if a.action == PUSH_LIMIT:
            yield Problem(
                WARNING,
                "limits",
                f"{a.source}:{a.resource}",
                f"{full} failed in the run of {format_time(a.at)}: {message}",
            )
        else:
            yield Problem(
                CRITICAL,
                "enforcement",
                what,
                f"{full} failed in the run of {format_time(a.at)}: {message}",
            )


def _unattributed_problems(found: Unattributed, thresholds: Thresholds) -> Iterator[Problem]:
    critical = thresholds.unattributed_critical
    if critical is not None and found.count > critical:
        state = CRITICAL
    elif found.count > thresholds.unattributed_warning:
        state = WARNING
    else:
        return
    largest = ", ".join(f"{r.source}:{r.name} {human_size(r.bytes)}" for r in found.largest)
    what = _plural(found.count, "unattributed resource")
    yield Problem(
        state,
        "unattributed",
        f"{what} ({human_size(found.bytes)})",
        f"{what} ({human_size(found.bytes)}) measured but charged to no member"
        + (f"; largest: {largest}" if largest else ""),
    )


def _job_problems(jobs: Sequence[JobFact]) -> Iterator[Problem]:
    for job in jobs:
        if job.outcome != JOB_FAILED:
            continue
        ended = f" at {format_time(job.finished_at)}" if job.finished_at else ""
        yield Problem(
            WARNING,
            "jobs",
            job.job,
            f"job {job.job}: its latest run (slot {format_time(job.slot)}) failed{ended}: "
            f"{one_line(job.detail or '?', LONG_TEXT)}",
        )


def _summary(problems: Sequence[Problem]) -> str:
    """One part per group, worst state first: '1 stale source (mail: last scan 40h ago)'."""
    groups: dict[str, list[Problem]] = {}
    for p in problems:
        groups.setdefault(p.group, []).append(p)
    order = list(GROUPS)
    parts = []
    for group, members in sorted(
        groups.items(), key=lambda g: (-max(p.state for p in g[1]), order.index(g[0]))
    ):
        if group == "unattributed":
            parts.append(members[0].item)
            continue
        one, many = GROUPS[group]
        items = ", ".join(p.item for p in members[:SHOWN])
        if len(members) > SHOWN:
            items += f", {len(members) - SHOWN} more"
        parts.append(f"{len(members)} {one if len(members) == 1 else many} ({items})")
    return "; ".join(parts)


def _all_well(facts: Facts, thresholds: Thresholds, now: dt.datetime) -> str:
    if not facts.sources:
        parts = ["no sources to check"]
    else:
        oldest = max(
            (_age(s.last_good.finished_at, now) for s in facts.sources if s.last_good), default=0
        )
        sources = _plural(len(facts.sources), "source")
        within = duration(thresholds.stale_warning)
        parts = [f"{sources} scanned within {within} (oldest {duration(oldest)} ago)"]
    if facts.unattributed.count:
        parts.append(
            f"{_plural(facts.unattributed.count, 'unattributed resource')} "
            f"(up to {thresholds.unattributed_warning} accepted)"
        )
    parts.append("no failed enforcement or jobs")
    return "; ".join(parts)


def _perfdata(
    facts: Facts, thresholds: Thresholds, problems: Sequence[Problem], now: dt.datetime
) -> tuple[Perf, ...]:
    def count(*groups: str) -> int:
        return sum(1 for p in problems if p.group in groups)

    total = str(len(facts.sources))
    warn, crit = str(thresholds.stale_warning), str(thresholds.stale_critical)
    unattributed_crit = thresholds.unattributed_critical
    perf = [
        Perf("sources", len(facts.sources), min="0"),
        Perf("stale_sources", count("never", "stale"), warn="0", min="0", max=total),
        Perf("failing_sources", count("failing"), warn="0", min="0", max=total),
        Perf("partial_sources", count("partial"), warn="0", min="0", max=total),
        Perf("failed_enforcement", count("enforcement"), crit="0", min="0"),
        Perf("failed_limits", count("limits"), warn="0", min="0"),
        Perf(
            "unattributed",
            facts.unattributed.count,
            warn=str(thresholds.unattributed_warning),
            crit="" if unattributed_crit is None else str(unattributed_crit),
            min="0",
        ),
        Perf("unattributed_bytes", facts.unattributed.bytes, uom="B", min="0"),
        Perf("failed_jobs", count("jobs"), warn="0", min="0"),
    ]
    perf.extend(
        Perf(
            f"age_{s.name}",
            _age(s.last_good.finished_at, now) if s.last_good else None,
            uom="s",
            warn=warn,
            crit=crit,
            min="0",
        )
        for s in facts.sources
    )
    return tuple(perf)


def read_facts(repo: MonitoringRepository, sources: Sequence[str]) -> Facts:
    """What the check judges, read in one transaction."""
    return Facts(
        sources=repo.sources(sources),
        actions=repo.unfinished_actions(),
        unattributed=repo.unattributed(),
        jobs=repo.jobs(),
    )
