"""Statements, finalized periods and adjustments (INTERFACE.md sections 4 and 5).

The statement models document what the routes send; the routes send each
statement's stored canonical text as it is, so its ETag is the hash of
exactly those bytes.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from api.schemas.common import UtcTime
from quotad.billing.service import MAX_REASON

Money = Annotated[str, Field(description="a decimal string", examples=["0.20"])]
PERIOD_PATTERN = r"^[0-9]{4}-[0-9]{2}$"
PeriodText = Annotated[str, Field(examples=["2026-10"])]


class AdjustmentLine(BaseModel):
    id: int
    amount: Money
    reason: str
    corrects: PeriodText
    created_at: UtcTime


class Line(BaseModel):
    kind: str
    average_bytes: int


class ChargeOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: UtcTime = Field(alias="from")
    until: UtcTime
    kind: str | None = Field(description="null: every kind at the plan's one price")
    average_bytes: int
    free_bytes: int
    billable_gib_months: str = Field(examples=["2"])
    price_per_gib_month: Money
    amount: str = Field(description="exact, before the statement rounds its total")


class StatementOut(BaseModel):
    member: str
    period: PeriodText
    status: Literal["draft", "final"]
    starts_at: UtcTime
    ends_at: UtcTime
    member_from: UtcTime | None
    member_until: UtcTime | None
    average_bytes: int
    free_bytes: int
    billable_gib_months: str = Field(examples=["2"])
    usage_amount: Money
    adjustments: list[AdjustmentLine]
    amount: Money
    currency: str = Field(examples=["USD"])
    lines: list[Line]
    charges: list[ChargeOut]
    finalized_at: UtcTime | None


class FinalizeOut(BaseModel):
    period: PeriodText
    status: Literal["final"]
    finalized_at: UtcTime
    finalized_by: str
    statements: int


# Money is a string: a JSON number (4.5) is refused, since a float cannot hold
# every amount exactly. The service checks the value and the currency's decimals.
AmountIn = Annotated[
    str,
    StringConstraints(strict=True, max_length=40, pattern=r"^[+-]?[0-9]+(\.[0-9]+)?$"),
    Field(examples=["-4.50"]),
]


class AdjustmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    member: str = Field(max_length=255, examples=["alice"])
    amount: AmountIn
    reason: str = Field(min_length=1, max_length=MAX_REASON, examples=["refund for the outage"])
    corrects: str | None = Field(
        default=None,
        pattern=PERIOD_PATTERN,
        description="the period it corrects (default: the current one); it shows in the "
        "first open period from there",
        examples=["2026-10"],
    )


class AdjustmentOut(BaseModel):
    id: int
    member: str
    amount: Money
    currency: str
    reason: str
    corrects: PeriodText
    period: PeriodText = Field(description="the statement it shows on")
    actor: str
    created_at: UtcTime
