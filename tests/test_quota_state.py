"""The quota state machine on a simulated clock: each run of `quotad enforce` is a step."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from quotad.config import QuotaLimit
from quotad.quotas.state import (
    GRACE_EXPIRED,
    HARD,
    OK,
    SOFT,
    Evaluation,
    Prior,
    evaluate,
)

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
LIMIT = QuotaLimit("total", soft_bytes=100, hard_bytes=150, grace_seconds=7 * 86400)


@dataclass
class Clock:
    """Drives evaluate() as enforcement does: the stored state changes only when it differs."""

    limit: QuotaLimit | None = LIMIT
    now: dt.datetime = T0
    prior: Prior | None = None
    # (time, used) of every measurement, for the ledger's crossing time.
    history: list[tuple[dt.datetime, int]] = field(default_factory=list)
    limit_since: dt.datetime | None = None

    def measure(self, used: int) -> None:
        self.history.append((self.now, used))

    def crossed_at(self) -> dt.datetime | None:
        """When usage last went over soft and stayed over (LedgerService.over_since)."""
        since = None
        for at, used in self.history:
            over = self.limit is not None and used > self.limit.soft_bytes
            since = (since or at) if over else None
        return since

    def run(self, *, complete: bool = True, used: int | None = None) -> Evaluation:
        current = self.history[-1][1] if used is None else used
        result = evaluate(
            used=current,
            limit=self.limit,
            prior=self.prior,
            now=self.now,
            complete=complete,
            crossed_at=self.crossed_at(),
            limit_since=self.limit_since,
        )
        if self.prior is None or (result.state, result.since, self.limit) != (
            self.prior.state,
            self.prior.since,
            self.prior.limit,
        ):
            self.prior = Prior(result.state, result.since, self.limit, self.now)
        return result

    def step(self, delta: dt.timedelta, used: int | None = None) -> Evaluation:
        self.now += delta
        if used is not None:
            self.measure(used)
        return self.run()


def test_under_soft_is_ok() -> None:
    clock = Clock()
    clock.measure(100)  # at the limit is not over it
    assert clock.run() == Evaluation(OK, None, None)


def test_over_soft_starts_grace_at_the_crossing_and_expires_after_it() -> None:
    clock = Clock()
    clock.measure(50)
    clock.run()
    crossed = T0 + HOUR
    result = clock.step(HOUR, used=120)
    assert (result.state, result.since, result.grace_ends_at) == (SOFT, crossed, crossed + 7 * DAY)
    # Still over: the timer keeps its start through every later run.
    assert clock.step(6 * DAY, used=130).grace_ends_at == crossed + 7 * DAY
    assert clock.step(DAY - dt.timedelta(seconds=1)).state == SOFT
    result = clock.step(dt.timedelta(seconds=1))
    assert result.state == GRACE_EXPIRED
    assert result.restricted


def test_over_hard_is_hard_at_once_with_the_grace_end_shown() -> None:
    clock = Clock()
    clock.measure(200)
    result = clock.run()
    assert (result.state, result.since, result.grace_ends_at) == (HARD, T0, T0 + 7 * DAY)
    assert result.restricted


def test_hard_stays_until_usage_is_back_under_soft() -> None:
    clock = Clock()
    clock.measure(200)
    clock.run()
    # Between soft and hard, still within the grace: restrictions stay.
    assert clock.step(HOUR, used=140).state == HARD
    assert clock.step(HOUR, used=101).state == HARD
    result = clock.step(HOUR, used=100)
    assert (result.state, result.since, result.grace_ends_at) == (OK, None, None)


def test_grace_expired_goes_to_hard_and_back_to_ok_only_under_soft() -> None:
    clock = Clock()
    clock.measure(120)
    clock.run()
    assert clock.step(8 * DAY).state == GRACE_EXPIRED
    assert clock.step(HOUR, used=160).state == HARD
    assert clock.step(HOUR, used=120).state == GRACE_EXPIRED  # grace long over
    assert clock.step(HOUR, used=90).state == OK


def test_flapping_around_soft_resets_the_timer_each_time_usage_drops_under() -> None:
    clock = Clock()
    starts: list[dt.datetime] = []
    for day in range(10):
        clock.step(DAY, used=101 if day % 2 == 0 else 99)
        if clock.prior is not None and clock.prior.state == SOFT and clock.prior.since:
            starts.append(clock.prior.since)
    # Never more than a day over soft at a time: never expired, each crossing a new timer.
    assert clock.prior is not None
    assert clock.prior.state in (OK, SOFT)
    assert len(set(starts)) == 5
    assert all(start == T0 + (2 * i + 1) * DAY for i, start in enumerate(sorted(starts)))


def test_a_dip_under_soft_between_two_runs_resets_the_timer() -> None:
    """The ledger saw usage under soft in between, though no run did."""
    clock = Clock()
    clock.measure(120)
    clock.run()
    clock.step(5 * DAY)
    clock.now += HOUR
    clock.measure(80)  # measured, never evaluated
    second = clock.now + HOUR
    result = clock.step(HOUR, used=120)
    assert (result.state, result.since) == (SOFT, second)
    assert clock.step(6 * DAY).state == SOFT  # the old timer would have expired


def test_a_dip_between_runs_also_lifts_a_grace_expired_restriction() -> None:
    clock = Clock()
    clock.measure(120)
    clock.run()
    assert clock.step(8 * DAY).state == GRACE_EXPIRED
    clock.now += HOUR
    clock.measure(50)
    assert clock.step(HOUR, used=120).state == SOFT


def test_stale_data_changes_nothing() -> None:
    clock = Clock()
    clock.measure(120)
    clock.run()
    before = clock.prior
    # Every measurement stale: fresh usage is 0, which proves nothing.
    clock.now += 10 * DAY
    result = clock.run(complete=False, used=0)
    assert (result.state, result.since, result.held) == (SOFT, T0, True)
    assert clock.prior == before
    # Nor does it lift a restriction.
    clock.limit = QuotaLimit("total", 100, 150, 86400)
    clock.measure(200)
    assert clock.run().state == HARD
    assert clock.step(HOUR, used=None).state == HARD
    result = clock.run(complete=False, used=10)
    assert (result.state, result.held) == (HARD, True)


def test_stale_data_can_still_restrict_on_fresh_usage_alone() -> None:
    """Fresh resources alone over hard prove the scope is over hard."""
    clock = Clock()
    clock.measure(50)
    clock.run()
    clock.measure(160)
    result = clock.step(HOUR, used=None)
    assert result.state == HARD
    clock.prior = Prior(OK, None, LIMIT, T0)
    result = clock.run(complete=False, used=160)
    assert (result.state, result.held) == (HARD, False)
    # Fresh usage alone over soft starts the grace; under soft it proves nothing.
    clock.prior = Prior(OK, None, LIMIT, T0)
    assert clock.run(complete=False, used=120).state == SOFT
    assert clock.run(complete=False, used=20).held


def test_no_stored_state_and_only_stale_data_is_ok_and_held() -> None:
    result = evaluate(used=0, limit=LIMIT, prior=None, now=T0, complete=False)
    assert (result.state, result.held) == (OK, True)


def test_raising_soft_above_usage_mid_grace_ends_it() -> None:
    clock = Clock()
    clock.measure(120)
    clock.run()
    clock.limit = QuotaLimit("total", 200, 300, 7 * 86400)
    result = clock.step(DAY)
    assert (result.state, result.since) == (OK, None)


def test_changing_limits_mid_grace_keeps_the_running_timer() -> None:
    """Linux keeps the grace start when limits change while the user stays over soft."""
    clock = Clock()
    clock.measure(120)
    clock.run()
    clock.step(3 * DAY)
    # Soft raised but still under usage: the crossing of the new soft is
    # later in the ledger, yet the timer started at T0 keeps running.
    clock.limit = QuotaLimit("total", 110, 150, 7 * 86400)
    result = clock.step(DAY)
    assert (result.state, result.since, result.grace_ends_at) == (SOFT, T0, T0 + 7 * DAY)
    # A longer grace applies from the same start.
    clock.limit = QuotaLimit("total", 110, 150, 14 * 86400)
    assert clock.step(4 * DAY).state == SOFT
    assert clock.step(7 * DAY).state == GRACE_EXPIRED


def test_raising_hard_lets_a_hard_member_back_into_grace() -> None:
    """Hysteresis holds for usage going down, not for an admin's new limits."""
    clock = Clock()
    clock.measure(200)
    clock.run()
    clock.limit = QuotaLimit("total", 100, 300, 7 * 86400)
    result = clock.step(HOUR)
    assert (result.state, result.since) == (SOFT, T0)


def test_lowering_soft_under_usage_starts_grace_when_set_not_back_in_history() -> None:
    clock = Clock()
    clock.measure(90)
    clock.run()
    clock.step(30 * DAY)  # usage has been 90 for a month
    set_at = clock.now + HOUR
    clock.limit = QuotaLimit("total", 80, 150, 7 * 86400)
    clock.limit_since = set_at
    result = clock.step(2 * HOUR)
    assert (result.state, result.since) == (SOFT, set_at)
    # The default plan changed in the config: no time known, so from now.
    clock2 = Clock()
    clock2.measure(90)
    clock2.run()
    clock2.now += 30 * DAY
    clock2.limit = QuotaLimit("total", 80, 150, 7 * 86400)
    result = clock2.run()
    assert (result.state, result.since) == (SOFT, clock2.now)


def test_a_scope_that_lost_its_limits_is_ok() -> None:
    clock = Clock()
    clock.measure(200)
    clock.run()
    clock.limit = None
    assert clock.step(HOUR).state == OK


def test_first_evaluation_takes_the_crossing_from_the_ledger() -> None:
    """Before any stored state, the ledger's history says when soft was crossed."""
    clock = Clock()
    clock.measure(120)
    clock.now += 10 * DAY
    result = clock.run()
    assert (result.state, result.since) == (GRACE_EXPIRED, T0)


def test_a_crossing_measured_in_the_future_is_clamped_to_now() -> None:
    result = evaluate(
        used=120, limit=LIMIT, prior=None, now=T0, crossed_at=T0 + dt.timedelta(minutes=4)
    )
    assert result.since == T0
