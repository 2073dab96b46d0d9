"""What the pages show, read from the same services the JSON API answers from.

Each figure on a page comes from the call that serves it as JSON (usage from
QuotaService.usage, history from usage_history, statements from
BillingService, the forecast from forecast()), so a page and the API cannot
disagree. Only the wording and the drawing are made here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from sqlalchemy.orm import Session

from api.pages.chart import Limit, usage_chart
from quotad.billing.arithmetic import Period
from quotad.billing.service import BillingService
from quotad.config import Settings
from quotad.enforcement.repository import EnforcementRepository
from quotad.errors import NotFound
from quotad.formatting import human_size
from quotad.monitoring.repository import MonitoringRepository
from quotad.monitoring.service import duration
from quotad.quotas.forecast import forecast
from quotad.quotas.history import usage_history
from quotad.quotas.service import QuotaService
from quotad.timeutil import MONTHS, day_words

HISTORY_DAYS = 90
PAST_STATEMENTS = 6
RECENT_ACTIONS = 25
UNATTRIBUTED_SHOWN = 20
# A bar is drawn in thousandths of its width: integer arithmetic, and finer
# than any screen's pixels.
BAR = 1000

# Worst first: the order of the admin page's "over quota" list.
SEVERITY = {"hard": 3, "grace_expired": 2, "soft": 1, "ok": 0}
STATE_LABELS = {
    "ok": "within limits",
    "soft": "over soft limit, in grace",
    "grace_expired": "grace period over",
    "hard": "over hard limit",
}


def when_words(at: dt.datetime) -> str:
    """A moment for a person: "14 January 2027, 03:00 UTC"."""
    return f"{day_words(at)}, {at:%H:%M} UTC"


def short_when(at: dt.datetime) -> str:
    """A moment in a table cell, where room is short: "14 Jan 2027, 03:00 UTC"."""
    return f"{at.day} {MONTHS[at.month - 1][:3]} {at.year}, {at:%H:%M} UTC"


def parse_time(text: str | None) -> dt.datetime | None:
    return None if text is None else dt.datetime.fromisoformat(text)


def state_words(quota: Mapping[str, Any], *, own: bool) -> str:
    """The state of one quota scope as a sentence, to the member (OWN) or about them."""
    you, your = ("You are", "your") if own else ("This member is", "their")
    grace_end = parse_time(quota["grace_ends_at"])
    state = quota["state"]
    if state == "ok":
        return f"{you} within {your} limits."
    if state == "soft":
        until = f" until {when_words(grace_end)}" if grace_end else ""
        return (
            f"{you} over {your} soft limit. Nothing is restricted{until}; "
            f"after that, writes are refused until usage is back under the soft limit."
        )
    if state == "grace_expired":
        ended = f" on {when_words(grace_end)}" if grace_end else ""
        return (
            f"{you} over {your} soft limit and the grace period ended{ended}: "
            f"writes are refused until usage is back under the soft limit."
        )
    return f"{you} over {your} hard limit: writes are refused until usage is back under it."


@dataclass(frozen=True, slots=True)
class Bar:
    """One usage bar: where its fill and limit marks fall, in thousandths."""

    used: int
    soft: int
    hard: int

    @classmethod
    def of(cls, used: int, soft: int, hard: int) -> Bar:
        # The bar spans the hard limit, or the usage when it is above it, so
        # both marks and the fill always fit.
        scale = max(used, hard, soft, 1)
        return cls(used * BAR // scale, soft * BAR // scale, hard * BAR // scale)


def percent(part: int, whole: int) -> int:
    """PART of WHOLE in whole percent, rounded down: it never overstates room left."""
    return part * 100 // whole if whole > 0 else 0


def quota_view(quota: Mapping[str, Any], *, own: bool) -> dict[str, Any]:
    used, soft, hard = quota["used_bytes"], quota["soft_bytes"], quota["hard_bytes"]
    return {
        **quota,
        "title": "All storage" if quota["scope"] == "total" else f"{quota['scope']} storage",
        "used_text": human_size(used),
        "soft_text": human_size(soft),
        "hard_text": human_size(hard),
        "soft_percent": percent(used, soft),
        "bar": Bar.of(used, soft, hard),
        "label": STATE_LABELS.get(quota["state"], quota["state"]),
        "words": state_words(quota, own=own),
        "grace_text": human_duration(quota["grace_seconds"]),
    }


def human_duration(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    if rest == 0 and days:
        return f"{days} day" + ("" if days == 1 else "s")
    return duration(seconds)


def growth_words(per_day: int | None) -> str | None:
    if per_day is None:
        return None
    if per_day == 0:
        return "no change a day"
    return f"{'+' if per_day > 0 else '-'}{human_size(abs(per_day))} a day"


def resource_view(resource: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
    measured = parse_time(resource["measured_at"])
    return {
        **resource,
        "error": resource.get("error"),  # only failing resources carry one
        "bytes_text": human_size(resource["bytes"]),
        "measured_text": short_when(measured) if measured else "never",
        "age_text": f"{duration(int((now - measured).total_seconds()))} ago" if measured else "",
    }


def statement_view(doc: Mapping[str, Any]) -> dict[str, Any]:
    # The statement keeps GiB-months exact; a person reads two places (the
    # amount, computed from the exact figure, is the one that counts).
    gib_months = Decimal(str(doc["billable_gib_months"]))
    return {
        **doc,
        "gib_months_text": str(gib_months.quantize(Decimal("0.01"), ROUND_HALF_EVEN)),
        "average_text": human_size(int(doc["average_bytes"])),
        "free_text": human_size(int(doc["free_bytes"])),
        "month_text": month_words(str(doc["period"])),
    }


def month_words(period: str) -> str:
    month = Period.parse(period)
    return f"{month.start:%B} {month.start.year}"


def member_page(
    session: Session, settings: Settings, name: str, now: dt.datetime, *, own: bool
) -> dict[str, Any]:
    """Everything the member page shows for NAME (NotFound if no such member).

    OWN: the member is looking at their own page (addressed as "you").
    """
    usage = QuotaService(session, settings).usage(name, now)
    quotas = [quota_view(q, own=own) for q in usage["quotas"]]
    total = next((q for q in usage["quotas"] if q["scope"] == "total"), None)
    points = usage_history(
        session, name, start=now - dt.timedelta(days=HISTORY_DAYS), end=now, step="day", now=now
    )
    limits = []
    if total is not None:
        limits = [
            Limit("soft limit", total["soft_bytes"], "soft"),
            Limit("hard limit", total["hard_bytes"], "hard"),
        ]
    title = f"Storage used by {name}, last {HISTORY_DAYS} days"
    # Two drawings of one chart, the stylesheet showing the one that suits
    # the screen: an SVG scales its text with its width, so a wide chart
    # shrunk to a phone would have unreadable labels.
    chart = usage_chart(points, limits, title=title, id_prefix="usage")
    narrow = usage_chart(points, limits, title=title, id_prefix="usage-narrow", width=360)
    outlook = forecast(session, settings, name, now)
    return {
        "narrow_chart": narrow,
        "window_days": outlook["window_days"],
        "member": name,
        "total_text": human_size(usage["total"]["bytes"]),
        "total": usage["total"],
        "quotas": quotas,
        "resources": [resource_view(r, now) for r in usage["resources"]],
        "chart": chart,
        "history_days": HISTORY_DAYS,
        "forecasts": [
            {
                **f,
                "title": "All storage" if f["scope"] == "total" else f"{f['scope']} storage",
                "growth_text": growth_words(f["growth_bytes_per_day"]),
            }
            for f in outlook["forecasts"]
        ],
        **statements(session, settings, name, now),
        "now_text": when_words(now),
        "own": own,
    }


def statements(session: Session, settings: Settings, name: str, now: dt.datetime) -> dict[str, Any]:
    """This month's draft and up to PAST_STATEMENTS earlier ones, newest first."""
    billing = BillingService(session, settings.billing, now=now)
    month = Period.containing(now)
    current = None
    # Not a member this month (left before it): no draft to show.
    with contextlib.suppress(NotFound):
        current = statement_view(billing.statement(name, month).body)
    past: list[dict[str, Any]] = []
    period = month.previous()
    for _ in range(PAST_STATEMENTS):
        try:
            past.append(statement_view(billing.statement(name, period).body))
        except NotFound:
            break  # not yet a member then: nothing earlier either
        period = period.previous()
    return {"current": current, "past": past}


# -- the admin page -----------------------------------------------------------

SORTS = {
    "name": lambda m: m["member"],
    "bytes": lambda m: m["total"]["bytes"],
    "files": lambda m: m["total"]["files"],
    "state": lambda m: (m["severity"], m["total"]["bytes"]),
    "limit": lambda m: m["soft_bytes"] if m["soft_bytes"] is not None else -1,
}


def admin_page(
    session: Session, settings: Settings, now: dt.datetime, sort: str, order: str
) -> dict[str, Any]:
    quota_service = QuotaService(session, settings)
    members = [member_row(u, now) for u in quota_service.report(now)]
    over = sorted(
        (m for m in members if m["severity"] > 0),
        key=lambda m: (-m["severity"], -m["total"]["bytes"], m["member"]),
    )
    ordered = sorted(members, key=SORTS[sort], reverse=order == "desc")
    monitoring = MonitoringRepository(session)
    unattributed = monitoring.unattributed(UNATTRIBUTED_SHOWN)
    return {
        "members": ordered,
        "over": over,
        "sort": sort,
        "order": order,
        "sources": source_rows(monitoring, settings, now),
        "unattributed": {
            "count": unattributed.count,
            "bytes_text": human_size(unattributed.bytes),
            "largest": [
                {**dataclasses.asdict(r), "bytes_text": human_size(r.bytes)}
                for r in unattributed.largest
            ],
        },
        "actions": action_rows(session),
        "now_text": when_words(now),
        "total_text": human_size(sum(m["total"]["bytes"] for m in members)),
    }


def member_row(usage: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
    quotas = usage["quotas"]
    worst = max(quotas, key=lambda q: SEVERITY.get(q["state"], 0), default=None)
    total = next((q for q in quotas if q["scope"] == "total"), None)
    grace_ends = [t for q in quotas if (t := parse_time(q["grace_ends_at"])) is not None]
    # A member over the hard limit may still be inside the grace period: the
    # date, not the state, says whether it has ended.
    grace_end = min(grace_ends, default=None)
    severity = SEVERITY.get(worst["state"], 0) if worst else 0
    return {
        **usage,
        "severity": severity,
        "state": worst["state"] if worst else "ok",
        "state_label": STATE_LABELS[worst["state"]] if worst else "no limits",
        "over_scopes": [q["scope"] for q in quotas if q["state"] != "ok"],
        "bytes_text": human_size(usage["total"]["bytes"]),
        "soft_bytes": total["soft_bytes"] if total else None,
        "limit_text": (
            f"{human_size(total['soft_bytes'])} / {human_size(total['hard_bytes'])}"
            if total
            else "none"
        ),
        "grace_text": when_words(grace_end) if grace_end else "",
        "grace_over": grace_end is not None and grace_end <= now,
        "stale": sum(1 for r in usage["resources"] if r["stale"]),
    }


def source_rows(
    monitoring: MonitoringRepository, settings: Settings, now: dt.datetime
) -> list[dict[str, Any]]:
    """Each configured source's last scans, flagged stale past [enforcement] stale_after."""
    kinds = {s.name: s.kind for s in settings.sources}
    rows = []
    for facts in monitoring.sources(list(kinds)):
        good, last = facts.last_good, facts.last
        age = int((now - good.finished_at).total_seconds()) if good else None
        failing = last is not None and last.status == "failed"
        stale = age is None or age > settings.enforcement.stale_after
        rows.append(
            {
                "name": facts.name,
                "kind": kinds.get(facts.name, "?"),
                "stale": stale,
                "failing": failing,
                "problem": stale or failing or bool(good and good.failures),
                "last_good_text": (
                    f"{short_when(good.finished_at)} ({duration(max(age or 0, 0))} ago)"
                    if good
                    else "never"
                ),
                "error": last.error if failing and last else None,
                "failures": good.failures if good else 0,
            }
        )
    return sorted(rows, key=lambda r: (not r["problem"], r["name"]))


def action_rows(session: Session) -> list[dict[str, Any]]:
    return [
        {
            "at_text": short_when(a.at),
            "member": member,
            "source": a.source,
            "kind": a.kind,
            "resource": a.resource,
            "action": a.action.replace("_", " "),
            "status": a.status,
            "reason": a.reason,
            "message": a.message,
        }
        for a, member in EnforcementRepository(session).recent(RECENT_ACTIONS)
    ]
