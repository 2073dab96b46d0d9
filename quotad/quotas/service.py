"""Limits (the default plan plus audited per-member overrides) and usage against them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from quotad.audit.service import AuditService
from quotad.config import QuotaLimit, Settings
from quotad.db import utcnow
from quotad.errors import InvalidInput, NotFound
from quotad.ledger.repository import CurrentRow
from quotad.ledger.service import LedgerService
from quotad.members.models import Member
from quotad.members.service import MemberService
from quotad.quotas.models import QuotaOverride
from quotad.quotas.repository import QuotaRepository
from quotad.sources import QUOTA_SCOPES
from quotad.timeutil import format_time

OK = "ok"
SOFT = "soft"
GRACE_EXPIRED = "grace_expired"
HARD = "hard"

# The ledger's integers are signed 64-bit; a grace past a century would only
# overflow date arithmetic (grace end = crossing time + grace).
MAX_BYTES = 2**63 - 1
MAX_GRACE_SECONDS = 100 * 365 * 86400


@dataclass(frozen=True, slots=True)
class QuotaStatus:
    limit: QuotaLimit
    used_bytes: int
    state: str
    grace_ends_at: dt.datetime | None
    overridden: bool


def quota_state(
    used: int, limit: QuotaLimit, over_soft_since: dt.datetime | None, now: dt.datetime
) -> tuple[str, dt.datetime | None]:
    """The state of a scope, with Linux disk-quota semantics.

    Over hard is `hard` at once; over soft starts a grace period at the moment
    soft was crossed, after which it is `grace_expired`.
    """
    if used > limit.hard_bytes:
        grace = dt.timedelta(seconds=limit.grace_seconds)
        return HARD, (over_soft_since + grace if over_soft_since else None)
    if used > limit.soft_bytes:
        since = over_soft_since or now
        ends = since + dt.timedelta(seconds=limit.grace_seconds)
        return (GRACE_EXPIRED if now >= ends else SOFT), ends
    return OK, None


def check_scope(scope: str) -> str:
    if scope not in QUOTA_SCOPES:
        raise InvalidInput(
            f"unknown quota scope {scope!r} (use total or one of "
            f"{', '.join(sorted(QUOTA_SCOPES - {'total'}))})"
        )
    return scope


class QuotaService:
    def __init__(self, session: Session, settings: Settings, actor: str = "quotad") -> None:
        self.session = session
        self.settings = settings
        self.repo = QuotaRepository(session)
        self.members = MemberService(session, actor)
        self.ledger = LedgerService(session, actor=actor)
        self.audit = AuditService(session, actor)
        self.actor = actor

    def limits(
        self, member: Member, overrides: Sequence[QuotaOverride] | None = None
    ) -> dict[str, tuple[QuotaLimit, bool]]:
        """Each scope's limit for the member, and whether it is an override.

        OVERRIDES, when the caller read them already, are the member's
        newest override rows (QuotaRepository.latest).
        """
        result = {scope: (limit, False) for scope, limit in self.settings.quota_defaults.items()}
        if overrides is None:
            overrides = self.repo.latest([member.id])
        for row in overrides:
            if row.cleared:
                continue
            if row.soft_bytes is None or row.hard_bytes is None or row.grace_seconds is None:
                continue
            result[row.scope] = (
                QuotaLimit(row.scope, row.soft_bytes, row.hard_bytes, row.grace_seconds),
                True,
            )
        return dict(sorted(result.items(), key=lambda kv: (kv[0] != "total", kv[0])))

    def set(
        self, name: str, scope: str, *, soft: int, hard: int, grace: int | None, reason: str
    ) -> QuotaLimit:
        member = self.members.get(name)
        check_scope(scope)
        if soft < 0 or hard < 0:
            raise InvalidInput("limits cannot be negative")
        if soft > hard:
            raise InvalidInput("the soft limit cannot exceed the hard limit")
        if hard > MAX_BYTES:
            raise InvalidInput(f"limits cannot exceed {MAX_BYTES} bytes")
        if not reason.strip():
            raise InvalidInput("a reason is required")
        # The limits in force now: the grace to keep, and what the audit shows as before.
        before = self.limits(member).get(scope)
        if grace is None:
            grace = before[0].grace_seconds if before else 7 * 86400
        if grace < 0:
            raise InvalidInput("grace cannot be negative")
        if grace > MAX_GRACE_SECONDS:
            raise InvalidInput(f"grace cannot exceed {MAX_GRACE_SECONDS} seconds (100 years)")
        self._append(member.id, scope, reason, soft=soft, hard=hard, grace=grace)
        self.audit.record(
            "quota.set",
            f"member:{name}",
            reason=reason,
            detail={
                "scope": scope,
                "soft_bytes": soft,
                "hard_bytes": hard,
                "grace_seconds": grace,
                "before": _limit_json(before[0]) if before else None,
            },
        )
        return QuotaLimit(scope, soft, hard, grace)

    def _append(
        self,
        member_id: int,
        scope: str,
        reason: str,
        *,
        soft: int | None = None,
        hard: int | None = None,
        grace: int | None = None,
    ) -> None:
        """Add an override row; without limits it clears the scope back to the default plan."""
        self.repo.add(
            QuotaOverride(
                member_id=member_id,
                scope=scope,
                cleared=soft is None,
                soft_bytes=soft,
                hard_bytes=hard,
                grace_seconds=grace,
                reason=reason,
                actor=self.actor,
                created_at=utcnow(),
            )
        )

    def reset(self, name: str, scope: str, reason: str) -> None:
        member = self.members.get(name)
        check_scope(scope)
        current = {r.scope: r for r in self.repo.latest([member.id])}.get(scope)
        if current is None or current.cleared:
            raise NotFound(f"member {name!r} has no override for scope {scope!r}")
        self._append(member.id, scope, reason)
        self.audit.record(
            "quota.reset",
            f"member:{name}",
            reason=reason,
            detail={
                "scope": scope,
                "before": {
                    "soft_bytes": current.soft_bytes,
                    "hard_bytes": current.hard_bytes,
                    "grace_seconds": current.grace_seconds,
                },
            },
        )

    def statuses(
        self,
        member: Member,
        rows: Sequence[CurrentRow],
        now: dt.datetime,
        overrides: Sequence[QuotaOverride] | None = None,
    ) -> list[QuotaStatus]:
        result = []
        for scope, (limit, overridden) in self.limits(member, overrides).items():
            used = sum(r.bytes for r in rows if scope in ("total", r.kind))
            since = None
            if used > limit.soft_bytes:
                # Only members over a limit pay for replaying their history.
                kinds = None if scope == "total" else [scope]
                since = self.ledger.over_since(member.id, limit.soft_bytes, kinds)
            state, ends = quota_state(used, limit, since, now)
            result.append(QuotaStatus(limit, used, state, ends, overridden))
        return result

    def usage(self, name: str, now: dt.datetime | None = None) -> dict[str, Any]:
        """A member's usage in the shape of GET /me/usage."""
        member = self.members.get(name)
        return self._usage(member, now or utcnow())

    def report(self, now: dt.datetime | None = None) -> list[dict[str, Any]]:
        """Every member's usage, in the shape of GET /me/usage."""
        when = now or utcnow()
        rows_by_member: dict[int | None, list[CurrentRow]] = {}
        for row in self.ledger.current():
            rows_by_member.setdefault(row.member_id, []).append(row)
        # Every member's overrides in one query, not one per member.
        overrides: dict[int, list[QuotaOverride]] = {}
        for override in self.repo.latest():
            overrides.setdefault(override.member_id, []).append(override)
        return [
            self._usage(m, when, rows_by_member.get(m.id, []), overrides.get(m.id, []))
            for m in self.members.list()
        ]

    def unattributed(self, now: dt.datetime | None = None) -> list[dict[str, Any]]:
        when = now or utcnow()
        return [self._resource_json(r, when) for r in self.ledger.current(unattributed=True)]

    def _usage(
        self,
        member: Member,
        now: dt.datetime,
        rows: Sequence[CurrentRow] | None = None,
        overrides: Sequence[QuotaOverride] | None = None,
    ) -> dict[str, Any]:
        if rows is None:
            rows = self.ledger.current(member.id)
        return {
            "member": member.name,
            "total": {"bytes": sum(r.bytes for r in rows), "files": sum(r.files for r in rows)},
            "resources": [self._resource_json(r, now) for r in rows],
            "quotas": [
                {
                    "scope": s.limit.scope,
                    "soft_bytes": s.limit.soft_bytes,
                    "hard_bytes": s.limit.hard_bytes,
                    "grace_seconds": s.limit.grace_seconds,
                    "used_bytes": s.used_bytes,
                    "state": s.state,
                    "grace_ends_at": format_time(s.grace_ends_at),
                }
                for s in self.statuses(member, rows, now, overrides)
            ],
        }

    def _resource_json(self, row: CurrentRow, now: dt.datetime) -> dict[str, Any]:
        stale_after = dt.timedelta(seconds=self.settings.enforcement.stale_after)
        stale = row.measured_at is None or now - row.measured_at > stale_after
        result: dict[str, Any] = {
            "source": row.source,
            "kind": row.kind,
            "name": row.name,
            "bytes": row.bytes,
            "files": row.files,
            "measured_at": format_time(row.measured_at),
            "stale": stale,
            "detail": row.detail or {},
        }
        if row.error is not None:
            result["error"] = row.error
            result["failed_at"] = format_time(row.error_at)
        return result


def _limit_json(limit: QuotaLimit) -> Mapping[str, int]:
    return {
        "soft_bytes": limit.soft_bytes,
        "hard_bytes": limit.hard_bytes,
        "grace_seconds": limit.grace_seconds,
    }
