"""Source path patterns with a `{member}` placeholder, such as `/srv/home/{member}`.

Shared by the scanners that find one resource per member directory (tree,
maildir), so every one of them agrees on which directories are members.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from scanners.base import SourceError

PLACEHOLDER = "{member}"

# Anything that looks like a placeholder but is not `{member}` is most likely
# a typo ("{memebr}", "{user}"); taken literally it would match nothing.
_OTHER_PLACEHOLDER_RE = re.compile(r"\{[^{}/]*\}")

# Never members: hidden entries (".snapshot", ".Trash-0") and fsck's folder.
_SKIPPED_NAMES = frozenset({"lost+found"})


@dataclass(frozen=True, slots=True)
class MemberPattern:
    """A validated pattern: the directory to list, the entry regex, the rest to append."""

    pattern: str
    parent: Path
    entry_re: re.Pattern[str]
    rest: tuple[str, ...]

    def expand(self) -> list[tuple[str, Path]]:
        """(captured name, path) for every member directory, sorted by name.

        Raises SourceError when the directory before the placeholder cannot
        be listed: a scan that found nobody there must not look like "all
        members use nothing".
        """
        found: list[tuple[str, Path]] = []
        try:
            with os.scandir(self.parent) as entries:
                for entry in entries:
                    captured = self._capture(entry)
                    if captured is None:
                        continue
                    path = self.parent.joinpath(entry.name, *self.rest)
                    if self.rest and not _exists(path):
                        continue
                    found.append((captured, path))
        except OSError as exc:
            raise SourceError(f"cannot list {display_path(self.parent)}: {exc.strerror}") from exc
        found.sort(key=lambda pair: pair[0])
        return found

    def _capture(self, entry: os.DirEntry[str]) -> str | None:
        name = entry.name
        if name.startswith(".") or name in _SKIPPED_NAMES:
            return None
        match = self.entry_re.fullmatch(name)
        if match is None:
            return None
        try:
            # Not following symlinks: a member's symlink would let one
            # directory be measured (and charged) under another name.
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            return None
        return match.group(1) if is_dir else None


def parse_member_pattern(pattern: str | Path) -> MemberPattern:
    """Validate PATTERN; raises ValueError saying what is wrong with it.

    `{member}` must appear once, inside one component that is not the first
    below the root ("/{member}" would make every top-level directory of the
    system a member); text around it in that component must match literally.
    """
    text = os.fspath(pattern)
    count = text.count(PLACEHOLDER)
    if count != 1:
        raise ValueError(
            f"must contain {PLACEHOLDER} exactly once, found it {count} times in {text!r}"
        )
    parts = Path(text).parts
    index = next(i for i, part in enumerate(parts) if PLACEHOLDER in part)
    first = 1 if Path(text).is_absolute() else 0
    if index <= first:
        raise ValueError(
            f"{PLACEHOLDER} cannot be in the first component of {text!r}: "
            "put it below a directory that holds only member folders"
        )
    component = parts[index]
    for i, part in enumerate(parts):
        leftover = part.replace(PLACEHOLDER, "", 1) if i == index else part
        other = _OTHER_PLACEHOLDER_RE.search(leftover)
        if other is not None:
            raise ValueError(
                f"unknown placeholder {other.group(0)!r} in {text!r} (only {PLACEHOLDER})"
            )
    prefix, suffix = component.split(PLACEHOLDER)
    # DOTALL: a file name may contain a newline, and it must still match.
    entry_re = re.compile(f"{re.escape(prefix)}(.+){re.escape(suffix)}", re.DOTALL)
    return MemberPattern(
        pattern=text,
        parent=Path(*parts[:index]),
        entry_re=entry_re,
        rest=parts[index + 1 :],
    )


def expand_member_pattern(pattern: str | Path) -> list[tuple[str, Path]]:
    """(captured name, path) pairs for PATTERN; ValueError if bad, SourceError if unlistable."""
    return parse_member_pattern(pattern).expand()


def display_path(path: str | os.PathLike[str]) -> str:
    """PATH as printable text: undecodable bytes of a file name shown as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _exists(path: Path) -> bool:
    try:
        # lstat: whether the last component is a symlink or not a directory
        # is the measurement's business; it fails then, naming the path.
        path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        # Cannot tell from here (typically EACCES); measuring will fail and
        # name the path, which beats silently leaving the member out.
        return True
    return True
