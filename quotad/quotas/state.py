"""The quota state machine of one member and scope, with Linux disk-quota semantics.

A pure function of the usage, the limits, the state stored at the previous
evaluation and the clock, so that the API, the report and `quotad enforce`
agree, and so that tests can drive it on a simulated clock.

- Under (or at) soft: `ok`; the grace timer is cleared.
- Over soft: `soft`, with a grace timer that starts when soft is first
  crossed and resets only when usage drops back under soft.
- Grace over: `grace_expired`, restricted like `hard`.
- Over hard: `hard` at once.
- A restricted scope (`hard`, `grace_expired`) stays restricted until usage
  is back under soft, unless an admin changes its limits: dropping between
  soft and hard does not lift anything.
- A stale or failed measurement changes nothing: the caller passes only
  fresh usage and says the scope is incomplete; then the state may only
  rise (fresh usage alone proves it), never fall, and no timer moves.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from quotad.config import QuotaLimit

OK = "ok"
SOFT = "soft"
GRACE_EXPIRED = "grace_expired"
HARD = "hard"

RESTRICTING = frozenset({GRACE_EXPIRED, HARD})
_SEVERITY = {OK: 0, SOFT: 1, GRACE_EXPIRED: 2, HARD: 3}


@dataclass(frozen=True, slots=True)
class Prior:
    """The state stored by the previous evaluation that changed something."""

    state: str
    # When usage went over soft (the grace timer's start); None when ok.
    since: dt.datetime | None
    # The limits it was evaluated against; None when the scope had none.
    limit: QuotaLimit | None
    at: dt.datetime


@dataclass(frozen=True, slots=True)
class Evaluation:
    state: str
    since: dt.datetime | None
    grace_ends_at: dt.datetime | None
    # True when stale or failed measurements kept the state from falling.
    held: bool = False

    @property
    def restricted(self) -> bool:
        return self.state in RESTRICTING


def evaluate(
    *,
    used: int,
    limit: QuotaLimit | None,
    prior: Prior | None,
    now: dt.datetime,
    complete: bool = True,
    crossed_at: dt.datetime | None = None,
    limit_since: dt.datetime | None = None,
) -> Evaluation:
    """The scope's state now.

    USED counts fresh measurements only; COMPLETE says whether every
    measurement of the scope is fresh. CROSSED_AT is when the ledger's
    history last went over soft and stayed over (LedgerService.over_since);
    LIMIT_SINCE when the limits in force were set (an override's time), None
    when unknown (the default plan).
    """
    fresh = _evaluate(
        used, limit=limit, prior=prior, now=now, crossed_at=crossed_at, limit_since=limit_since
    )
    if complete or prior is None:
        if not complete and fresh.state == OK:
            return Evaluation(OK, None, None, held=True)
        return fresh
    if _SEVERITY[fresh.state] > _SEVERITY[prior.state]:
        return fresh
    # Fresh usage alone does not prove more; what is missing might hold it
    # up, so nothing falls and no timer moves.
    ends = _grace_end(prior.since, limit) if prior.state != OK else None
    return Evaluation(prior.state, prior.since, ends, held=True)


def _evaluate(
    used: int,
    *,
    limit: QuotaLimit | None,
    prior: Prior | None,
    now: dt.datetime,
    crossed_at: dt.datetime | None,
    limit_since: dt.datetime | None,
) -> Evaluation:
    if limit is None or used <= limit.soft_bytes:
        return Evaluation(OK, None, None)
    limits_kept = prior is not None and prior.limit == limit
    since = crossed_at or now
    if prior is not None and prior.state != OK and prior.since is not None:
        # Linux keeps a running grace timer when the limits change; with the
        # same limits, a later crossing in the ledger means usage dipped under
        # soft in between, which resets the timer.
        since = max(since, prior.since) if limits_kept else prior.since
    elif prior is not None:
        # Over soft since the last evaluation found it under: not before that
        # evaluation, nor before the limits that make it over were set.
        floor = prior.at if limits_kept else max(prior.at, limit_since or now)
        since = max(since, floor)
    since = min(since, now)
    ends = _grace_end(since, limit)
    if used > limit.hard_bytes:
        return Evaluation(HARD, since, ends)
    if ends is not None and now >= ends:
        return Evaluation(GRACE_EXPIRED, since, ends)
    if prior is not None and prior.state in RESTRICTING and limits_kept and since == prior.since:
        # Restrictions are lifted only under soft (a dip under soft that the
        # ledger shows moved `since`, and lifts like any other).
        return Evaluation(prior.state, since, ends)
    return Evaluation(SOFT, since, ends)


def _grace_end(since: dt.datetime | None, limit: QuotaLimit | None) -> dt.datetime | None:
    if since is None or limit is None:
        return None
    return since + dt.timedelta(seconds=limit.grace_seconds)
