"""What every scanner produces, and the interface quotad drives it through.

Scanners are pure: they read a source and yield values. They never touch the
ledger, so the same code runs inside quotad or as an agent on another host.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Self

# Detail values are small facts about a resource (message counts, a volume's
# quota); integers and strings keep them exact and JSON-clean.
DetailValue = int | str

MEMBER_NAME_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,63}$")


def is_member_name(name: str) -> bool:
    """Whether NAME is acceptable as a member name (a POSIX-style login)."""
    return MEMBER_NAME_RE.fullmatch(name) is not None


def printable_name(name: str) -> str:
    """NAME as text every store can hold: undecodable bytes become \\xNN.

    File names are bytes; Python hands the ones that are not UTF-8 over with
    surrogate escapes, which neither PostgreSQL, SQLite nor JSON accept. The
    escaped form is stable from scan to scan, so the resource keeps its
    identity in the ledger.
    """
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return name


@dataclass(frozen=True, slots=True)
class Measurement:
    """One resource's size at the end of a scan.

    `member` is the name the source attributes the resource to, or None when
    the source cannot tell; quotad decides whether that name is a member.
    """

    member: str | None
    kind: str
    name: str
    bytes: int
    files: int
    detail: Mapping[str, DetailValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Frozen: normalising goes through object.__setattr__.
        object.__setattr__(self, "name", printable_name(self.name))
        if self.bytes < 0 or self.files < 0:
            raise ValueError(f"negative size for {self.kind} {self.name!r}")


@dataclass(frozen=True, slots=True)
class ResourceFailure:
    """A resource the scan found but could not measure (unreadable, busy).

    Its earlier value stands; the scan as a whole is partial, not failed.
    """

    member: str | None
    kind: str
    name: str
    error: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", printable_name(self.name))
        object.__setattr__(self, "error", printable_name(self.error))


class SourceError(Exception):
    """The source failed as a whole (server down, root missing, tool absent)."""


class OptionError(ValueError):
    """A source option is missing or wrong; `key` names it for the config error."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


# Called with (what, done, total) while scanning; total is None when unknown.
Progress = Callable[[str, int, int | None], None]


@dataclass(frozen=True, slots=True)
class ScanContext:
    """What the caller tells a scanner about one run.

    `state_dir` is a folder the scanner may keep state in between runs (a
    cache; deleting it must only cost time); None means keep nothing. With
    `full`, the scanner reads everything again and believes no state.
    `member_emails` maps the registered members' addresses (lower case) to
    their names, for scanners that learn owners by address; an agent that
    sees no ledger passes none. `ledger_url` is the ledger's own database
    URL (SQLAlchemy form), so that a database scanner can leave the ledger
    out of what it charges; None when unknown.
    """

    full: bool = False
    state_dir: Path | None = None
    member_emails: Mapping[str, str] = field(default_factory=dict)
    ledger_url: str | None = None


ScanItem = Measurement | ResourceFailure


class Scanner(abc.ABC):
    """Measures one configured source.

    `kind` is the source kind used in the config (`tree`, `afs`, ...);
    `resource_kind` the kind of every resource it yields (`tree`,
    `afs_volume`, ...).
    """

    kind: ClassVar[str]
    resource_kind: ClassVar[str]

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    @abc.abstractmethod
    def from_options(cls, name: str, options: Mapping[str, object], base_dir: Path) -> Self:
        """Build from a source's config table (minus name, kind, schedule, enforce).

        Raises OptionError for a missing, unknown or invalid key. Relative
        paths are resolved against `base_dir`, the config file's folder.
        """

    @abc.abstractmethod
    def scan(
        self, progress: Progress | None = None, context: ScanContext | None = None
    ) -> Iterator[ScanItem]:
        """Yield one item per resource found.

        Raises SourceError when the source cannot be measured at all; nothing
        yielded before that counts.
        """
