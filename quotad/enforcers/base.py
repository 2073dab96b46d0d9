"""What every enforcer does: remember a resource's state, restrict it, restore it.

An enforcer acts on one resource (a volume, a schema, a database, a mailbox,
a list) through the daemon's own means. The enforcement service drives it in
two steps so that a crash between acting and recording loses nothing:

1. `snapshot(target)` reads everything `lift` will need to put the resource
   back; the service stores it in the ledger *before* acting;
2. `restrict(target, saved)` applies the restriction, and later
   `lift(target, saved)` restores exactly what `saved` says.

Both are idempotent: running either twice changes nothing the second time,
and a restrict retried after a crash uses the snapshot taken before the
first attempt (never a new one, which would record the restriction itself
as the "previous" state). Neither may grant what `saved` does not show.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

from scanners.base import OptionError, Scanner

# JSON-clean values only: the snapshot is stored in the ledger as JSON.
Saved = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Target:
    """One resource of one member, as the ledger knows it now.

    `name` is the resource's name as its scanner reported it; `detail` the
    detail of its newest measurement. `hard_bytes` is the hard limit of the
    narrowest quota scope that covers the resource (its kind, else total),
    or None without limits; enforcers that can push a limit to the daemon
    use it.
    """

    member: str
    source: str
    kind: str
    name: str
    bytes: int
    files: int = 0
    detail: Mapping[str, Any] = field(default_factory=dict)
    email: str | None = None
    hard_bytes: int | None = None


class EnforcerError(Exception):
    """The action failed; the message is one line for the log and the report.

    It never contains a password. The service records it and retries the
    action on the next run.
    """


class Enforcer(abc.ABC):
    """Restricts and restores resources of one source.

    `options` are the enforcer's own keys in the source's table (listed in
    `OPTIONS`); the scanner carries the connection settings they share.
    """

    # The source kind (as in the config) this enforcer serves.
    source_kind: ClassVar[str]
    # Keys of the source's table that belong to the enforcer, not the scanner.
    OPTIONS: ClassVar[frozenset[str]] = frozenset()
    # Of those, the ones without which the source is only watched (unless
    # the config asks for `enforce = true`, which is then an error).
    REQUIRED: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, scanner: Scanner) -> None:
        self.scanner = scanner

    @classmethod
    def from_options(
        cls,
        scanner: Scanner,
        options: Mapping[str, object],
        base_dir: Path,  # noqa: ARG003 - for enforcers with paths
    ) -> Self:
        """Build from the source's scanner and the enforcer's own options.

        Raise scanners.base.OptionError(key, problem) for a bad option; the
        config loader turns it into a config error naming the source.
        """
        if options:
            raise OptionError(min(options), "unknown option")
        return cls(scanner)

    @classmethod
    def available(cls, scanner: Scanner) -> str | None:  # noqa: ARG003 - for subclasses
        """None when this source can be enforced on, else why not (one line).

        A source that cannot be enforced on with its settings (a Mailman
        source without the REST API, say) is enforced on only when the
        config asks for it explicitly, and then it is a config error.
        """
        return None

    @abc.abstractmethod
    def snapshot(self, target: Target) -> Saved:
        """The resource's state before any restriction: all that lift() needs."""

    @abc.abstractmethod
    def restrict(self, target: Target, saved: Saved) -> str:
        """Apply the restriction (idempotent); say in one line what changed."""

    @abc.abstractmethod
    def lift(self, target: Target, saved: Saved) -> str:
        """Restore exactly SAVED (idempotent); say in one line what changed.

        A resource that no longer exists is not an error: nothing is left to
        restore, and the message says so.
        """

    def push_limit(self, target: Target) -> str | None:  # noqa: ARG002 - for enforcers that push
        """Make the daemon itself hold TARGET to `hard_bytes`, where asked to.

        Called on every run for each resource that is not restricted, when
        the source's options ask for native limits (AFS `native_quota`).
        Idempotent; returns what changed in one line, or None when nothing
        did or the enforcer does not push limits.
        """
        return None
