"""Statements as CSV: one writer for `GET /billing/statements?format=csv` and `quotad bill`."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from quotad.billing.arithmetic import exact_sum, round_money

COLUMNS = (
    "member",
    "period",
    "status",
    "member_from",
    "member_until",
    "average_bytes",
    "free_bytes",
    "billable_gib_months",
    "usage_amount",
    "adjustments",
    "amount",
    "currency",
)


def adjustments_total(body: Mapping[str, Any]) -> str:
    """The sum of a statement's adjustment lines, written like its amounts ("-4.50", "0.00")."""
    total = exact_sum(Decimal(a["amount"]) for a in body["adjustments"])
    return format(round_money(total, str(body["currency"])), "f")


def statement_row(body: Mapping[str, Any]) -> list[str]:
    cells: dict[str, Any] = {**body, "adjustments": adjustments_total(body)}
    return ["" if cells[c] is None else str(cells[c]) for c in COLUMNS]


def statements_csv(bodies: Iterable[Mapping[str, Any]]) -> str:
    """A header row, then one row per statement; RFC 4180 (CRLF, quoted where needed)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    writer.writerows(statement_row(body) for body in bodies)
    return out.getvalue()
