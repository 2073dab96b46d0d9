"""Enforcers per source kind: each restricts a member's resources on its daemon."""

from __future__ import annotations

from quotad.enforcers.afs import AfsEnforcer
from quotad.enforcers.base import Enforcer
from quotad.enforcers.dovecot import DovecotEnforcer
from quotad.enforcers.mailman import MailmanEnforcer
from quotad.enforcers.mysql import MysqlEnforcer
from quotad.enforcers.postgres import PostgresEnforcer

# Source kind (as in the config) → its enforcer. A kind without one (`tree`)
# is only warned about by mail.
ENFORCERS: dict[str, type[Enforcer]] = {
    cls.source_kind: cls
    for cls in (AfsEnforcer, DovecotEnforcer, MailmanEnforcer, MysqlEnforcer, PostgresEnforcer)
}
