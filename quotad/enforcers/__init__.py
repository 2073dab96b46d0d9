"""Enforcers per source kind: each restricts a member's resources on its daemon."""

from __future__ import annotations

from quotad.enforcers.base import Enforcer

# Source kind (as in the config) → its enforcer. A kind without one (`tree`)
# is only warned about by mail.
ENFORCERS: dict[str, type[Enforcer]] = {}
