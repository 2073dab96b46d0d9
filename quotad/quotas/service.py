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
from quotad.quotas.models import QuotaOverride, QuotaStateRow
from quotad.quotas.repository import QuotaRepository
from quotad.quotas.state import OK, Evaluation, Prior, evaluate
from quotad.sources import QUOTA_SCOPES
from quotad.timeutil import format_time

# The ledger's integers are signed 64-bit; a grace past a century would only
# overflow date arithmetic (grace end = crossing time + grace).
MAX_BYTES = 2**63 - 1
MAX_GRACE_SECONDS = 100 * 365 * 86400


@dataclass(frozen=True, slots=True)
class QuotaStatus:
    """A scope's limits, usage and state for one member.

    `limit` is None for a scope that lost its limits but still has a stored
    state (so enforcement can bring it back to ok); the API shows only
    scopes with limits.
    """

    scope: str
    limit: QuotaLimit | None
    used_bytes: int
    evaluation: Evaluation
    overridden: bool
    prior: QuotaStateRow | None

    @property
    def state(self) -> str:
        return self.evaluation.state

    @property
    def grace_ends_at(self) -> dt.datetime | None:
        return self.evaluation.grace_ends_at

    @property
    def changed(self) -> bool:
        """Whether this evaluation differs from the stored state (a new row is due)."""
        prior = self.prior
        if prior is None:
            return self.state != OK or self.limit is not None
        return (
            prior.state != self.state
            or prior.over_soft_since != self.evaluation.since
            or _limit_of(prior) != self.limit
        )


def _limit_of(row: QuotaStateRow) -> QuotaLimit | None:
    if row.soft_bytes is None or row.hard_bytes is None or row.grace_seconds is None:
        return None
    return QuotaLimit(row.scope, row.soft_bytes, row.hard_bytes, row.grace_seconds)


def prior_of(row: QuotaStateRow | None) -> Prior | None:
    if row is None:
        return None
    return Prior(row.state, row.over_soft_since, _limit_of(row), row.recorded_at)


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

    def is_fresh(self, row: CurrentRow, now: dt.datetime) -> bool:
        """Whether ROW may change a quota state: measured lately, and not failing since."""
        stale_after = dt.timedelta(seconds=self.settings.enforcement.stale_after)
        return (
            row.error is None
            and row.measured_at is not None
            and now - row.measured_at <= (stale_after)
        )

    def statuses(
        self,
        member: Member,
        rows: Sequence[CurrentRow],
        now: dt.datetime,
        overrides: Sequence[QuotaOverride] | None = None,
        priors: Sequence[QuotaStateRow] | None = None,
        *,
        every_scope: bool = False,
    ) -> list[QuotaStatus]:
        """Each scope's state now, from the usage ROWS and the stored states.

        OVERRIDES and PRIORS, when the caller read them already, are the
        member's newest override and state rows. With EVERY_SCOPE, scopes
        that lost their limits but have a stored state are included.
        """
        if overrides is None:
            overrides = self.repo.latest([member.id])
        if priors is None:
            priors = self.repo.latest_states([member.id])
        stored = {p.scope: p for p in priors}
        set_at = {o.scope: o.created_at for o in overrides if not o.cleared}
        limits: dict[str, tuple[QuotaLimit | None, bool]] = dict(self.limits(member, overrides))
        if every_scope:
            for scope in stored:
                limits.setdefault(scope, (None, False))
        fresh = [self.is_fresh(r, now) for r in rows]
        result = []
        for scope, (limit, overridden) in limits.items():
            covered = [
                (r, f) for r, f in zip(rows, fresh, strict=True) if scope in ("total", r.kind)
            ]
            used = sum(r.bytes for r, _ in covered)
            used_fresh = sum(r.bytes for r, f in covered if f)
            crossed = None
            if limit is not None and used_fresh > limit.soft_bytes:
                # Only members over a limit pay for replaying their history.
                kinds = None if scope == "total" else [scope]
                crossed = self.ledger.over_since(member.id, limit.soft_bytes, kinds)
            evaluation = evaluate(
                used=used_fresh,
                limit=limit,
                prior=prior_of(stored.get(scope)),
                now=now,
                complete=all(f for _, f in covered),
                crossed_at=crossed,
                limit_since=set_at.get(scope),
            )
            result.append(
                QuotaStatus(scope, limit, used, evaluation, overridden, stored.get(scope))
            )
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
        # Every member's overrides and states in one query each, not one per member.
        overrides: dict[int, list[QuotaOverride]] = {}
        for override in self.repo.latest():
            overrides.setdefault(override.member_id, []).append(override)
        states: dict[int, list[QuotaStateRow]] = {}
        for state in self.repo.latest_states():
            states.setdefault(state.member_id, []).append(state)
        return [
            self._usage(
                m, when, rows_by_member.get(m.id, []), overrides.get(m.id, []), states.get(m.id, [])
            )
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
        priors: Sequence[QuotaStateRow] | None = None,
    ) -> dict[str, Any]:
        if rows is None:
            rows = self.ledger.current(member.id)
        return {
            "member": member.name,
            "total": {"bytes": sum(r.bytes for r in rows), "files": sum(r.files for r in rows)},
            "resources": [self._resource_json(r, now) for r in rows],
            "quotas": [
                {
                    "scope": s.scope,
                    "soft_bytes": s.limit.soft_bytes,
                    "hard_bytes": s.limit.hard_bytes,
                    "grace_seconds": s.limit.grace_seconds,
                    "used_bytes": s.used_bytes,
                    "state": s.state,
                    "grace_ends_at": format_time(s.grace_ends_at),
                }
                for s in self.statuses(member, rows, now, overrides, priors)
                if s.limit is not None
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
