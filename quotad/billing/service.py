"""Statements: drafts computed from the ledger, finalized periods, adjustment lines."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy.orm import Session

from quotad.audit.service import AuditService
from quotad.billing.arithmetic import (
    Figures,
    Period,
    Segment,
    charge,
    decimal_text,
    exact_sum,
    integrate,
    minor_unit,
    round_money,
    segments,
    step_intervals,
)
from quotad.billing.models import Adjustment, BillingPeriod, Statement
from quotad.billing.repository import BillingRepository, MemberRow
from quotad.config import BillingSettings
from quotad.db import utcnow
from quotad.errors import Conflict, InvalidInput, NotFound
from quotad.members.service import MemberService
from quotad.timeutil import format_time

DRAFT = "draft"
FINAL = "final"
MAX_REASON = 1000
# No single correction is this large; a bound catches a slip of the keyboard.
MAX_ADJUSTMENT = Decimal(1_000_000_000)


def canonical(body: Mapping[str, Any]) -> str:
    """The one JSON text of a statement: its bytes, and so its ETag, depend only on it."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _money(value: Decimal) -> str:
    return format(value, "f")


@dataclass(frozen=True, slots=True)
class StatementDoc:
    member: str
    member_id: int
    period: str
    body: Mapping[str, Any]
    text: str

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.text.encode()).hexdigest()[:32] + '"'

    @property
    def status(self) -> str:
        return str(self.body["status"])


@dataclass(frozen=True, slots=True)
class FinalizeResult:
    period: str
    finalized_at: dt.datetime
    finalized_by: str
    statements: int
    created: bool  # False: it had been finalized before

    def as_json(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "status": FINAL,
            "finalized_at": format_time(self.finalized_at),
            "finalized_by": self.finalized_by,
            "statements": self.statements,
        }


def adjustment_json(row: Adjustment, member: str) -> dict[str, Any]:
    return {
        "id": row.id,
        "member": member,
        "amount": row.amount,
        "currency": row.currency,
        "reason": row.reason,
        "corrects": row.corrects,
        "period": row.period,
        "actor": row.actor,
        "created_at": format_time(row.created_at),
    }


def membership(
    row: MemberRow, first_measured: dt.datetime | None
) -> tuple[dt.datetime, dt.datetime]:
    """When ROW was a member (INTERFACE.md section 5), as [start, end).

    An unset joined_at is the earlier of the member's creation in quotad and
    their first measurement; an unset left_at is "still a member".
    """
    start = row.joined_at
    if start is None:
        start = row.created_at if first_measured is None else min(row.created_at, first_measured)
    end = row.left_at or dt.datetime.max.replace(tzinfo=dt.UTC)
    return start, end


class BillingService:
    def __init__(
        self,
        session: Session,
        settings: BillingSettings,
        actor: str = "quotad",
        *,
        now: dt.datetime | None = None,
    ) -> None:
        self.session = session
        self.settings = settings
        self.repo = BillingRepository(session)
        self.members = MemberService(session, actor)
        self.audit = AuditService(session, actor)
        self.actor = actor
        self.now = now or utcnow()

    def _check_begun(self, period: Period) -> None:
        if period.start > self.now:
            raise InvalidInput(f"billing period {period} has not begun")

    # -- reading -------------------------------------------------------------

    def statements(self, period: Period) -> list[StatementDoc]:
        """Every member's statement for PERIOD: the frozen ones if final, else drafts."""
        self._check_begun(period)
        if self.repo.finalized(period) is not None:
            return self._stored(period)
        return self._drafts(period)

    def statement(self, name: str, period: Period) -> StatementDoc:
        member = self.members.get(name)
        self._check_begun(period)
        if self.repo.finalized(period) is not None:
            found = self._stored(period, member.id)
        else:
            found = self._drafts(period, member.id)
        if not found:
            raise NotFound(f"{name} was not a member during {period} and has no statement for it")
        return found[0]

    def _stored(self, period: Period, member_id: int | None = None) -> list[StatementDoc]:
        docs = []
        for row in self.repo.statements(period, member_id):
            body = json.loads(row.body)
            docs.append(StatementDoc(body["member"], row.member_id, str(period), body, row.body))
        return sorted(docs, key=lambda d: d.member)

    def _drafts(
        self,
        period: Period,
        member_id: int | None = None,
        *,
        status: str = DRAFT,
        finalized_at: dt.datetime | None = None,
    ) -> list[StatementDoc]:
        rows = {r.id: r for r in self.repo.members(period, member_id)}
        undated = [
            r.id for r in rows.values() if r.joined_at is None and r.created_at > period.start
        ]
        first = self.repo.first_measured(undated)
        plans = self.settings.plans
        cuts: dict[int, list[Segment]] = {}
        bounds: dict[int, tuple[dt.datetime, dt.datetime]] = {}
        for row in rows.values():
            start, end = membership(row, first.get(row.id))
            found = segments(period, plans, start, end)
            if found:
                cuts[row.id] = found
                bounds[row.id] = (found[0].start, found[-1].end)
        adjustments: dict[int, list[dict[str, Any]]] = {}
        names = {r.id: r.name for r in rows.values()}
        for adjustment, name in self.repo.adjustments(period, member_id):
            if adjustment.currency != self.settings.currency:
                raise Conflict(
                    f"adjustment {adjustment.id} is in {adjustment.currency}, "
                    f"but billing is in {self.settings.currency}"
                )
            names[adjustment.member_id] = name
            adjustments.setdefault(adjustment.member_id, []).append(
                {
                    "id": adjustment.id,
                    "amount": adjustment.amount,
                    "reason": adjustment.reason,
                    "corrects": adjustment.corrects,
                    "created_at": format_time(adjustment.created_at),
                }
            )
        usage = self._usage(period, cuts, member_id)
        docs = []
        for mid in set(cuts) | set(adjustments):
            figures = charge(period, cuts.get(mid, []), usage.get(mid, {}), self.settings.currency)
            body = self._body(
                names[mid],
                period,
                figures,
                bounds.get(mid),
                adjustments.get(mid, []),
                status=status,
                finalized_at=finalized_at,
            )
            docs.append(StatementDoc(names[mid], mid, str(period), body, canonical(body)))
        return sorted(docs, key=lambda d: d.member)

    def _usage(
        self, period: Period, cuts: Mapping[int, Sequence[Segment]], member_id: int | None
    ) -> dict[int, dict[tuple[int, str], int]]:
        if not cuts:
            return {}
        if self.repo.dialect == "postgresql":
            plans = [
                (seg.plan_index, seg.start, seg.end)
                for seg in segments(period, self.settings.plans, period.start, period.end)
            ]
            return self.repo.usage_in_database(period, cuts, plans, member_id)
        intervals = step_intervals(self.repo.samples(period, member_id), period.end)
        return integrate(intervals, cuts)

    def _body(
        self,
        name: str,
        period: Period,
        figures: Figures,
        bounds: tuple[dt.datetime, dt.datetime] | None,
        adjustments: Sequence[Mapping[str, Any]],
        *,
        status: str,
        finalized_at: dt.datetime | None,
    ) -> dict[str, Any]:
        currency = self.settings.currency
        adjusted = exact_sum(Decimal(a["amount"]) for a in adjustments)
        return {
            "member": name,
            "period": str(period),
            "status": status,
            "starts_at": format_time(period.start),
            "ends_at": format_time(period.end),
            "member_from": format_time(bounds[0]) if bounds else None,
            "member_until": format_time(bounds[1]) if bounds else None,
            "average_bytes": figures.average_bytes,
            "free_bytes": figures.free_bytes,
            "billable_gib_months": decimal_text(figures.billable_gib_months),
            "usage_amount": _money(figures.usage_amount),
            "adjustments": list(adjustments),
            "amount": _money(round_money(exact_sum([figures.usage_amount, adjusted]), currency)),
            "currency": currency,
            "lines": [{"kind": k, "average_bytes": v} for k, v in figures.lines.items()],
            "charges": [
                {
                    "from": format_time(c.start),
                    "until": format_time(c.end),
                    "kind": c.kind,
                    "average_bytes": c.average_bytes,
                    "free_bytes": c.free_bytes,
                    "billable_gib_months": decimal_text(c.billable_gib_months),
                    "price_per_gib_month": _money(c.price_per_gib_month),
                    "amount": decimal_text(c.amount),
                }
                for c in figures.charges
            ],
            "finalized_at": format_time(finalized_at),
        }

    # -- finalizing ----------------------------------------------------------

    def is_finalized(self, period: Period) -> bool:
        return self.repo.finalized(period) is not None

    def finalize(self, period: Period) -> FinalizeResult:
        """Freeze PERIOD's statements; doing it again returns the first result.

        The exclusive periods lock makes a second finalization wait for the
        first to commit and then find it, and keeps every scan out meanwhile.
        """
        self.repo.lock_periods(exclusive=True)
        existing = self.repo.finalized(period)
        if existing is not None:
            return FinalizeResult(
                str(period),
                existing.finalized_at,
                existing.finalized_by,
                existing.statements,
                created=False,
            )
        if period.end > self.now:
            raise Conflict(
                f"billing period {period} has not ended (it ends {format_time(period.end)}); "
                "only a past period can be finalized"
            )
        now = self.now
        docs = self._drafts(period, status=FINAL, finalized_at=now)
        rows = [
            Statement(
                period=str(period),
                member_id=doc.member_id,
                body=doc.text,
                digest=hashlib.sha256(doc.text.encode()).hexdigest(),
            )
            for doc in docs
        ]
        self.repo.add_period(
            BillingPeriod(
                period=str(period), finalized_at=now, finalized_by=self.actor, statements=len(rows)
            ),
            rows,
        )
        total = exact_sum(Decimal(d.body["amount"]) for d in docs)
        self.audit.record(
            "billing.finalize",
            str(period),
            detail={
                "statements": len(rows),
                "amount": _money(total),
                "currency": self.settings.currency,
            },
        )
        return FinalizeResult(str(period), now, self.actor, len(rows), created=True)

    # -- adjustments ---------------------------------------------------------

    def adjust(
        self, name: str, amount: Decimal | str, reason: str, corrects: Period | None = None
    ) -> dict[str, Any]:
        """Add a credit (negative) or debit (positive) for NAME, shown in the next open period.

        It lands in CORRECTS (default: the current month) if that is still
        open, else in the first open period after it.
        """
        member = self.members.get(name)
        currency = self.settings.currency
        value = _amount(amount, currency)
        reason = (reason or "").strip()
        if not reason:
            raise InvalidInput("an adjustment needs a reason")
        if len(reason) > MAX_REASON:
            raise InvalidInput(f"the reason is longer than {MAX_REASON} characters")
        corrects = corrects or Period.containing(self.now)
        self._check_begun(corrects)
        self.repo.lock_periods(exclusive=False)
        finalized = self.repo.finalized_after(corrects)
        target = corrects
        while str(target) in finalized:
            target = target.next()
        row = self.repo.add_adjustment(
            Adjustment(
                member_id=member.id,
                period=str(target),
                corrects=str(corrects),
                amount=_money(value),
                currency=currency,
                reason=reason,
                actor=self.actor,
                created_at=self.now,
            )
        )
        result = adjustment_json(row, member.name)
        self.audit.record(
            "billing.adjust",
            member.name,
            reason=reason,
            detail={k: result[k] for k in ("id", "amount", "currency", "corrects", "period")},
        )
        return result

    def adjustments(
        self, period: Period | None = None, member: str | None = None
    ) -> list[dict[str, Any]]:
        member_id = self.members.get(member).id if member is not None else None
        return [
            adjustment_json(row, name) for row, name in self.repo.adjustments(period, member_id)
        ]


def _amount(amount: Decimal | str, currency: str) -> Decimal:
    try:
        value = amount if isinstance(amount, Decimal) else Decimal(str(amount).strip())
    except InvalidOperation:
        raise InvalidInput(f'not an amount of money: {amount!r} (try "-4.50")') from None
    if not value.is_finite():
        raise InvalidInput(f"not an amount of money: {amount!r}")
    if value == 0:
        raise InvalidInput("an adjustment of 0 changes nothing")
    if abs(value) >= MAX_ADJUSTMENT:
        raise InvalidInput(f"an adjustment must be less than {MAX_ADJUSTMENT} {currency}")
    if round_money(value, currency) != value:
        raise InvalidInput(
            f"{amount} has more decimals than {currency} has (its smallest unit is "
            f"{minor_unit(currency)})"
        )
    return round_money(value, currency)
