"""What keeps a finalized period final: no scan lands in it afterwards."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session

from quotad.billing.arithmetic import Period
from quotad.billing.repository import BillingRepository
from quotad.errors import Conflict


def refuse_if_finalized(session: Session, at: dt.datetime, what: str) -> None:
    """Raise Conflict if AT falls in a finalized period; else keep it open until commit.

    Holds the periods lock shared for the rest of the transaction, so that a
    finalization waits for this write to commit (and computes with it) or
    commits first (and this check sees it).
    """
    repo = BillingRepository(session)
    repo.lock_periods(exclusive=False)
    period = Period.containing(at)
    if repo.finalized(period) is not None:
        raise Conflict(
            f"{what} falls in {period}, whose billing period is finalized; "
            "a correction is an adjustment in an open period"
        )
