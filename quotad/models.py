"""Every model, imported in one place so the metadata is complete for Alembic."""

from quotad.audit.models import AuditEntry
from quotad.auth.models import ApiToken
from quotad.billing.models import Adjustment, BillingPeriod, Statement
from quotad.db import Base
from quotad.enforcement.models import EnforcementAction, Notification
from quotad.jobs.models import JobRun
from quotad.ledger.models import (
    CurrentUsage,
    MeasurementFailure,
    Resource,
    Scan,
    Source,
    UsageSample,
)
from quotad.members.models import Member
from quotad.quotas.models import QuotaOverride, QuotaStateRow

metadata = Base.metadata

__all__ = [
    "Adjustment",
    "ApiToken",
    "AuditEntry",
    "BillingPeriod",
    "CurrentUsage",
    "EnforcementAction",
    "JobRun",
    "MeasurementFailure",
    "Member",
    "Notification",
    "QuotaOverride",
    "QuotaStateRow",
    "Resource",
    "Scan",
    "Source",
    "Statement",
    "UsageSample",
    "metadata",
]
