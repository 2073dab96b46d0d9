"""One enforcement run: evaluate every member, then restrict, lift and warn.

A run first makes a plan from what the ledger says now (each change and
why), then applies it step by step. Every step commits on its own: a
restrict is recorded as started, with the enforcer's snapshot, before the
enforcer acts, so a run killed mid-way leaves what the next run needs to
finish or undo it. One member's failing step is recorded and retried next
run; it never stops the others.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from decimal import Decimal
from email.message import EmailMessage
from typing import Any, Protocol

from sqlalchemy.orm import Session

from quotad.config import Settings, SourceSettings
from quotad.enforcement.models import EnforcementAction
from quotad.enforcement.repository import (
    DONE,
    FAILED,
    LIFT,
    PUSH_LIMIT,
    RESTRICT,
    STARTED,
    EnforcementRepository,
)
from quotad.enforcers.base import Enforcer, EnforcerError, Target
from quotad.enforcers.notify import (
    Notice,
    NoticeQuota,
    NoticeResource,
    Notifier,
    NotifyError,
)
from quotad.formatting import human_size
from quotad.ledger.repository import CurrentRow
from quotad.ledger.service import LedgerService
from quotad.members.models import Member
from quotad.members.service import MemberService
from quotad.quotas.models import QuotaOverride, QuotaStateRow
from quotad.quotas.repository import QuotaRepository
from quotad.quotas.service import QuotaService, QuotaStatus
from quotad.quotas.state import GRACE_EXPIRED, HARD, OK
from quotad.timeutil import format_time

log = logging.getLogger(__name__)


# session(write) opens one unit of work that commits when its block ends:
# a run is a job, and each of its steps is recorded on its own.
class Sessions(Protocol):
    def __call__(self, *, write: bool) -> AbstractContextManager[Session]: ...


# Notification statuses: only mail that went out (or could never go out)
# counts against the interval; a failed one is tried again next run.
SENT = "sent"
SKIPPED = "skipped"
MAIL_FAILED = "failed"


@dataclass
class Change:
    """One step of the plan: what, on what, and why; then how it went."""

    type: str  # state, restrict, lift, push_limit, mail
    member: str | None
    reason: str
    scope: str | None = None
    source: str | None = None
    kind: str | None = None
    resource: str | None = None
    status: str = "planned"  # planned, dry_run, done, failed
    message: str | None = None
    # What applying needs; not shown.
    member_id: int | None = field(default=None, repr=False)
    target: Target | None = field(default=None, repr=False)
    saved: dict[str, Any] | None = field(default=None, repr=False)
    notice: Notice | None = field(default=None, repr=False)
    state_row: dict[str, Any] | None = field(default=None, repr=False)
    mail_row: dict[str, Any] | None = field(default=None, repr=False)

    def json(self) -> dict[str, Any]:
        result: dict[str, Any] = {"type": self.type, "member": self.member}
        for key in ("scope", "source", "kind", "resource"):
            value = getattr(self, key)
            if value is not None:
                result[key] = value
        result |= {"reason": self.reason, "status": self.status}
        if self.message is not None:
            result["message"] = self.message
        return result


@dataclass
class Plan:
    run_id: str
    now: dt.datetime
    dry_run: bool
    changes: list[Change]
    # Resources left unrestricted whose source pushes native limits; they
    # join `changes` when the daemon's limit had to change.
    native: list[Change] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(1 for c in self.changes if c.status == FAILED)

    def json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "at": format_time(self.now),
            "dry_run": self.dry_run,
            "changes": [c.json() for c in self.changes],
            "failed": self.failed,
        }


@dataclass(frozen=True, slots=True)
class _Inputs:
    members: Sequence[Member]
    rows: Mapping[int, Sequence[CurrentRow]]
    overrides: Mapping[int, Sequence[QuotaOverride]]
    priors: Mapping[int, Sequence[QuotaStateRow]]
    restricted: Sequence[EnforcementAction]
    last_mail: Mapping[tuple[int, str], Sequence[tuple[str, str | None, dt.datetime]]]


class EnforcementService:
    def __init__(
        self,
        sessions: Sessions,
        settings: Settings,
        *,
        actor: str = "quotad",
        notifier: Notifier | None = None,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.actor = actor
        self.notifier = notifier

    # planning

    def plan(self, now: dt.datetime, *, dry_run: bool = False) -> Plan:
        """What this run would change, and why, from the ledger as it is now."""
        plan = Plan(str(uuid.uuid4()), now, dry_run, [])
        with self.sessions(write=False) as session:
            inputs = self._read(session)
            quotas = QuotaService(session, self.settings, self.actor)
            desired: dict[tuple[str, str, str], Change] = {}
            for member in inputs.members:
                rows = inputs.rows.get(member.id, [])
                statuses = quotas.statuses(
                    member,
                    rows,
                    now,
                    inputs.overrides.get(member.id, []),
                    inputs.priors.get(member.id, []),
                    every_scope=True,
                )
                plan.changes.extend(self._state_changes(plan, member, statuses))
                for change in self._resource_plans(member, rows, statuses):
                    if change.type == RESTRICT:
                        desired[_key(change)] = change
                    else:
                        plan.native.append(change)
                plan.changes.extend(self._mail(plan, member, rows, statuses, inputs))
        names = {m.id: m.name for m in inputs.members}
        resource_changes = self._resource_changes(desired, inputs.restricted, names)
        # Order: states, then restrictions and lifts, then mail about them.
        plan.changes = (
            [c for c in plan.changes if c.type == "state"]
            + resource_changes
            + [c for c in plan.changes if c.type == "mail"]
        )
        return plan

    def _read(self, session: Session) -> _Inputs:
        rows: dict[int, list[CurrentRow]] = {}
        for row in LedgerService(session).current():
            if row.member_id is not None:
                rows.setdefault(row.member_id, []).append(row)
        quota_repo = QuotaRepository(session)
        overrides: dict[int, list[QuotaOverride]] = {}
        for override in quota_repo.latest():
            overrides.setdefault(override.member_id, []).append(override)
        priors: dict[int, list[QuotaStateRow]] = {}
        for state in quota_repo.latest_states():
            priors.setdefault(state.member_id, []).append(state)
        repo = EnforcementRepository(session)
        last_mail: dict[tuple[int, str], list[tuple[str, str | None, dt.datetime]]] = {}
        for note in repo.last_notifications([SENT, SKIPPED]):
            last_mail.setdefault((note.member_id, note.scope), []).append(
                (note.event, note.level, note.at)
            )
        return _Inputs(
            members=MemberService(session, self.actor).list(),
            rows=rows,
            overrides=overrides,
            priors=priors,
            restricted=repo.restricted(),
            last_mail=last_mail,
        )

    def _state_changes(
        self, plan: Plan, member: Member, statuses: Sequence[QuotaStatus]
    ) -> Iterator[Change]:
        for status in statuses:
            if not status.changed:
                continue
            before = status.prior.state if status.prior else OK
            evaluation = status.evaluation
            limit = status.limit
            reason = _state_reason(status)
            yield Change(
                "state",
                member.name,
                reason,
                scope=status.scope,
                member_id=member.id,
                message=f"{before} -> {status.state}",
                state_row={
                    "member_id": member.id,
                    "scope": status.scope,
                    "state": status.state,
                    "used_bytes": status.used_bytes,
                    "soft_bytes": limit.soft_bytes if limit else None,
                    "hard_bytes": limit.hard_bytes if limit else None,
                    "grace_seconds": limit.grace_seconds if limit else None,
                    "over_soft_since": evaluation.since,
                    "grace_ends_at": evaluation.grace_ends_at,
                    "held": evaluation.held,
                    "run_id": plan.run_id,
                    "recorded_at": plan.now,
                },
            )

    def _resource_plans(
        self, member: Member, rows: Sequence[CurrentRow], statuses: Sequence[QuotaStatus]
    ) -> Iterator[Change]:
        """A restrict for each resource a restricted scope covers; a native limit for the others.

        The native limit is the hard limit of the narrowest scope with limits
        (the resource's kind, else total), for sources that push it.
        """
        by_scope = {s.scope: s for s in statuses}
        for row in rows:
            source = self.settings.source(row.source)
            if source is None or source.enforcer is None:
                continue
            covering = [s for s in (by_scope.get("total"), by_scope.get(row.kind)) if s is not None]
            restricting = [s for s in covering if s.evaluation.restricted]
            narrowest = next((s for s in reversed(covering) if s.limit is not None), None)
            hard = narrowest.limit.hard_bytes if narrowest and narrowest.limit else None
            if restricting:
                yield Change(
                    RESTRICT,
                    member.name,
                    "; ".join(_state_reason(s) for s in restricting),
                    scope=restricting[0].scope,
                    source=row.source,
                    kind=row.kind,
                    resource=row.name,
                    member_id=member.id,
                    target=_target(member, row, hard),
                )
            elif narrowest is not None and hard is not None and _pushes(source.enforcer):
                yield Change(
                    PUSH_LIMIT,
                    member.name,
                    f"native limit {human_size(hard)} ({narrowest.scope} hard)",
                    scope=narrowest.scope,
                    source=row.source,
                    kind=row.kind,
                    resource=row.name,
                    member_id=member.id,
                    target=_target(member, row, hard),
                )

    def _resource_changes(
        self,
        desired: Mapping[tuple[str, str, str], Change],
        restricted: Sequence[EnforcementAction],
        names: Mapping[int, str],
    ) -> list[Change]:
        """Restricts for what should be and is not; lifts for what is and should not be."""
        current = {(r.source, r.kind, r.resource): r for r in restricted}
        changes = []
        for key, change in desired.items():
            row = current.get(key)
            if row is None:
                changes.append(change)
            elif row.action == LIFT or row.status != DONE:
                # A restrict that failed or was cut short, or a lift that did
                # not finish: restrict again with the snapshot taken first.
                change.saved = row.saved
                change.reason = f"retry: {change.reason}"
                changes.append(change)
        for key, row in current.items():
            if key in desired:
                continue
            member = names.get(row.member_id) if row.member_id is not None else None
            changes.append(
                Change(
                    LIFT,
                    member,
                    "no longer over a limit that restricts it",
                    source=row.source,
                    kind=row.kind,
                    resource=row.resource,
                    member_id=row.member_id,
                    saved=row.saved,
                    target=Target(
                        member=member or "",
                        source=row.source,
                        kind=row.kind,
                        name=row.resource,
                        bytes=0,
                    ),
                )
            )
        return changes

    def _mail(
        self,
        plan: Plan,
        member: Member,
        rows: Sequence[CurrentRow],
        statuses: Sequence[QuotaStatus],
        inputs: _Inputs,
    ) -> Iterator[Change]:
        """Warnings at the notify_at levels, a mail per state change, and an all clear."""
        settings = self.settings.enforcement
        interval = dt.timedelta(seconds=settings.notify_interval)
        quotas = tuple(_notice_quota(s) for s in statuses if s.limit is not None)
        resources = tuple(NoticeResource(r.source, r.kind, r.name, r.bytes) for r in rows)
        for status in statuses:
            if status.limit is None:
                continue
            before = status.prior.state if status.prior else OK
            level = _level(status.used_bytes, status.limit.soft_bytes, settings.notify_at)
            sent = inputs.last_mail.get((member.id, status.scope), [])
            event = _mail_event(status, level, sent, plan.now, interval)
            if event is None:
                continue
            # Admins are copied on state changes only, not on warnings.
            state_changed = status.changed and status.state != before
            admins = settings.notify_admins if state_changed else ()
            recipients = (member.email,) if member.email else ()
            notice, problem = None, "the member has no email address"
            if recipients or admins:
                try:
                    notice = Notice(
                        member=member.name,
                        recipients=recipients,
                        event=event,  # type: ignore[arg-type]
                        scope=status.scope,
                        previous_state=before,  # type: ignore[arg-type]
                        quotas=quotas,
                        resources=resources,
                        now=plan.now,
                        level=level,
                        copy_to=tuple(a for a in admins if a not in recipients),
                    )
                except ValueError as exc:
                    problem = _one_line(exc)
            yield Change(
                "mail",
                member.name,
                _mail_reason(event, status, level),
                scope=status.scope,
                member_id=member.id,
                notice=notice,
                message=event if notice else problem,
                mail_row={
                    "run_id": plan.run_id,
                    "member_id": member.id,
                    "scope": status.scope,
                    "event": event,
                    "level": str(level) if level is not None else None,
                    "state": status.state,
                    "used_bytes": status.used_bytes,
                    "at": plan.now,
                },
            )

    # applying

    def apply(self, plan: Plan) -> Plan:
        """Carry the plan out; each step is recorded, failures included."""
        if plan.dry_run:
            for change in plan.changes:
                change.status = "dry_run"
            return plan
        states = [c for c in plan.changes if c.type == "state"]
        with self.sessions(write=True) as session:
            QuotaRepository(session).add_states([c.state_row for c in states if c.state_row])
        for change in states:
            change.status = DONE
        for change in plan.changes:
            if change.type in (RESTRICT, LIFT):
                self._act(plan, change)
        self._push_limits(plan)
        self._send([c for c in plan.changes if c.type == "mail"])
        return plan

    def _enforcer(self, change: Change) -> Enforcer:
        source: SourceSettings | None = self.settings.source(change.source or "")
        if source is None:
            raise EnforcerError(f"source {change.source!r} is no longer configured")
        if source.enforcer is None:
            raise EnforcerError(f"source {change.source!r} has enforcement turned off")
        return source.enforcer

    def _record(self, plan: Plan, change: Change, action: str, status: str) -> None:
        with self.sessions(write=True) as session:
            EnforcementRepository(session).add_action(
                {
                    "run_id": plan.run_id,
                    "member_id": change.member_id,
                    "source": change.source,
                    "kind": change.kind,
                    "resource": change.resource,
                    "action": action,
                    "status": status,
                    "saved": change.saved,
                    "reason": change.reason,
                    "message": change.message,
                    "at": plan.now,
                }
            )

    def _act(self, plan: Plan, change: Change) -> None:
        target = change.target
        if target is None:  # pragma: no cover - every resource change has one
            raise ValueError("a resource change without a target")
        try:
            enforcer = self._enforcer(change)
            if change.type == RESTRICT and change.saved is None:
                change.saved = enforcer.snapshot(target)
            self._record(plan, change, change.type, STARTED)
            if change.type == RESTRICT:
                change.message = enforcer.restrict(target, change.saved or {})
            else:
                change.message = enforcer.lift(target, change.saved or {})
            change.status = DONE
        except Exception as exc:  # one resource's failure must not stop the run
            if not isinstance(exc, EnforcerError):
                log.exception("%s of %s %s failed", change.type, change.source, change.resource)
            change.status = FAILED
            change.message = _one_line(exc)
        self._record(plan, change, change.type, change.status)
        log.log(
            logging.INFO if change.status == DONE else logging.WARNING,
            "%s %s:%s of %s %s: %s",
            change.type,
            change.source,
            change.resource,
            change.member,
            change.status,
            change.message,
        )

    def _push_limits(self, plan: Plan) -> None:
        """Native limits for the resources left unrestricted, where a source pushes them."""
        # Pushing a limit onto a restricted resource would undo its cap: skip
        # every resource this run restricted (or tried to) and every lift that
        # did not finish.
        held = {
            _key(c)
            for c in plan.changes
            if c.type == RESTRICT or (c.type == LIFT and c.status != DONE)
        }
        for change in plan.native:
            if _key(change) in held or change.target is None:
                continue
            try:
                message = self._enforcer(change).push_limit(change.target)
            except Exception as exc:  # one resource's failure must not stop the run
                if not isinstance(exc, EnforcerError):
                    log.exception("pushing a limit to %s %s failed", change.source, change.resource)
                change.status, change.message = FAILED, _one_line(exc)
            else:
                if message is None:
                    continue
                change.status, change.message = DONE, message
            self._record(plan, change, PUSH_LIMIT, change.status)
            plan.changes.append(change)

    def _send(self, changes: Sequence[Change]) -> None:
        outgoing: list[tuple[Change, EmailMessage]] = []
        for change in changes:
            if change.notice is None:
                change.status = SKIPPED
                continue
            if self.notifier is None:
                change.status, change.message = FAILED, "no mail settings"
                continue
            outgoing.append((change, self.notifier.render(change.notice)))
        if outgoing and self.notifier is not None:
            sent_ids: set[str] = {str(m["Message-ID"]) for _, m in outgoing}
            error = None
            try:
                self.notifier.send([m for _, m in outgoing])
            except NotifyError as exc:
                sent_ids = {str(m["Message-ID"]) for m in exc.sent}
                error = _one_line(exc)
            for change, message in outgoing:
                if str(message["Message-ID"]) in sent_ids:
                    change.status, change.message = SENT, f"{change.message} to {message['To']}"
                else:
                    change.status, change.message = FAILED, error
        with self.sessions(write=True) as session:
            EnforcementRepository(session).add_notifications(
                [_notification_row(c) for c in changes]
            )
        for change in changes:
            # SENT and SKIPPED are fine outcomes; only a failure counts against the run.
            if change.status in (SENT, SKIPPED):
                change.status = DONE if change.status == SENT else SKIPPED


def _target(member: Member, row: CurrentRow, hard_bytes: int | None) -> Target:
    return Target(
        member=member.name,
        source=row.source,
        kind=row.kind,
        name=row.name,
        bytes=row.bytes,
        files=row.files,
        detail=row.detail or {},
        email=member.email,
        hard_bytes=hard_bytes,
    )


def _pushes(enforcer: Enforcer) -> bool:
    """Whether ENFORCER's class pushes native limits (overrides push_limit)."""
    return type(enforcer).push_limit is not Enforcer.push_limit


def _key(change: Change) -> tuple[str, str, str]:
    return (change.source or "", change.kind or "", change.resource or "")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _level(used: int, soft: int, levels: Sequence[Decimal]) -> Decimal | None:
    """The highest notify_at fraction of SOFT that USED has reached."""
    if soft == 0:
        return max(levels, default=None) if used > 0 else None
    reached = [lv for lv in levels if Decimal(used) >= lv * soft]
    return max(reached, default=None)


def _mail_event(
    status: QuotaStatus,
    level: Decimal | None,
    sent: Sequence[tuple[str, str | None, dt.datetime]],
    now: dt.datetime,
    interval: dt.timedelta,
) -> str | None:
    """Which mail the scope's evaluation calls for, given the mail SENT before, if any."""
    before = status.prior.state if status.prior else OK
    if status.changed and status.state != before:
        return "all_clear" if status.state == OK and level is None else "state"
    if status.evaluation.held:
        # Stale data: no news either way.
        return None
    if level is not None and status.state not in (HARD, GRACE_EXPIRED):
        # At most once per level per interval; a state mail at a level counts.
        last = max((at for _, lv, at in sent if lv == str(level)), default=None)
        return "warning" if last is None or now - last >= interval else None
    if level is None and status.state == OK:
        last_clear = max((at for ev, _, at in sent if ev == "all_clear"), default=None)
        warned = max((at for ev, _, at in sent if ev != "all_clear"), default=None)
        if warned is not None and (last_clear is None or warned > last_clear):
            return "all_clear"
    return None


def _state_reason(status: QuotaStatus) -> str:
    limit = status.limit
    used = human_size(status.used_bytes)
    if limit is None:
        return f"{status.scope} has no limits any more"
    state = status.state
    if state == HARD:
        return f"{status.scope} over hard: {used} > {human_size(limit.hard_bytes)}"
    if state == GRACE_EXPIRED:
        ends = format_time(status.grace_ends_at)
        return f"{status.scope} grace ended {ends}: {used} > soft {human_size(limit.soft_bytes)}"
    if state == OK:
        return f"{status.scope} under soft: {used} <= {human_size(limit.soft_bytes)}"
    return (
        f"{status.scope} over soft: {used} > {human_size(limit.soft_bytes)}, "
        f"grace until {format_time(status.grace_ends_at)}"
    )


def _mail_reason(event: str, status: QuotaStatus, level: Decimal | None) -> str:
    if event == "warning" and level is not None:
        return (
            f"{status.scope} reached {level * 100:.0f}% of soft ({human_size(status.used_bytes)})"
        )
    if event == "all_clear":
        return f"{status.scope} back under every warning level"
    before = status.prior.state if status.prior else OK
    return f"{status.scope} changed {before} -> {status.state}"


def _notice_quota(status: QuotaStatus) -> NoticeQuota:
    limit = status.limit
    if limit is None:  # pragma: no cover - callers pass scopes with limits
        raise ValueError("a notice quota needs limits")
    return NoticeQuota(
        scope=status.scope,
        soft_bytes=limit.soft_bytes,
        hard_bytes=limit.hard_bytes,
        grace_seconds=limit.grace_seconds,
        used_bytes=status.used_bytes,
        state=status.state,  # type: ignore[arg-type]
        grace_ends_at=status.grace_ends_at,
    )


def _notification_row(change: Change) -> dict[str, Any]:
    notice = change.notice
    recipients = (*notice.recipients, *notice.copy_to) if notice else ()
    return (change.mail_row or {}) | {
        "recipients": ", ".join(recipients),
        "subject": change.reason,
        "status": change.status,
        "error": change.message if change.status != SENT else None,
    }
