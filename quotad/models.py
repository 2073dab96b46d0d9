"""Every model, imported in one place so the metadata is complete for Alembic."""

from quotad.audit.models import AuditEntry
from quotad.auth.models import ApiToken
from quotad.db import Base
from quotad.ledger.models import (
    CurrentUsage,
    MeasurementFailure,
    Resource,
    Scan,
    Source,
    UsageSample,
)
from quotad.members.models import Member
from quotad.quotas.models import QuotaOverride

metadata = Base.metadata

__all__ = [
    "ApiToken",
    "AuditEntry",
    "CurrentUsage",
    "MeasurementFailure",
    "Member",
    "QuotaOverride",
    "Resource",
    "Scan",
    "Source",
    "UsageSample",
    "metadata",
]
