"""The `maildir` kind: a member's Maildir++ tree, measured exactly and incrementally.

Each member's Maildir is one resource. `bytes` and `files` mean what they mean
for a `tree` (every regular file, each inode once, no link followed, never
leaving the filesystem); `detail` adds `messages` and `message_bytes` counted
the way Dovecot's Maildir++ quota counts them, so that they equal what
`doveadm quota recalc` writes to `maildirsize`:

- the messages are the entries of `cur/` and `new/` of the Maildir itself and
  of every `.Folder` directly below it (Trash included) whose name Dovecot
  can find it by (see `dovecot_lists`), never `tmp/` or Dovecot's own index
  files;
- a message's size is the number after `,S=` in its name when that number
  ends at `:`, `,` or the end of the name; otherwise the entry's own size
  (Dovecot stats it, following a symbolic link);
- every name counts, so a hard-linked copy in two folders counts in each.

Incremental rescans. Messages in `cur/` and `new/` never change in place: a
delivery, a move, a flag change or an expunge adds, renames or removes a
name, which changes the directory's mtime and ctime. So the scanner keeps,
per `cur/` and `new/` directory, a summary of what it held, and on the next
scan re-lists only those whose identity, mtime or ctime changed. Everything
else (the Maildir itself and each folder, with Dovecot's index files, `tmp/`,
anything unexpected) is listed and stat'ed on every scan, since files there
change in place; only a directory that was empty and has not changed since
(most `tmp/` folders) is not opened again. A directory changed within
`_SETTLE_NS` of the scan's start is never summarised: a second change within
the clock's granularity would leave its times as they were. The cache is a
private file in the scan's state folder; a damaged, foreign or outdated one
is ignored and rebuilt.
"""

from __future__ import annotations

import base64
import errno
import functools
import itertools
import logging
import marshal
import os
import re
import stat
import time
import zlib
from array import array
from collections.abc import Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Self

from scanners.base import (
    Measurement,
    OptionError,
    Progress,
    ResourceFailure,
    ScanContext,
    ScanItem,
    Scanner,
    is_member_name,
)
from scanners.options import Options
from scanners.paths import MemberPattern, parse_member_pattern
from scanners.tree import (
    _DIR_FLAGS,
    Tally,
    UnreadableDirectory,
    _skippable,
    _start_method,
    _unreadable,
    open_root,
    walk,
)

log = logging.getLogger(__name__)

# A directory whose mtime or ctime is this close to the scan's start (or
# later) is listed again next time: a change in the same clock tick as our
# listing would not move its times. Filesystems with one-second times (ext3,
# some NFS) need a full second and then some.
_SETTLE_NS = 3_000_000_000

# What a subdirectory of the Maildir or of a folder is to the walk.
_MESSAGES = 0  # cur/ or new/: messages, remembered between scans
_FOLDER = 1  # a Maildir++ folder (.Sent, .Trash, ...) directly below the Maildir
_PLAIN = 2  # anything else (tmp/, unexpected folders): walked as a tree, every time

_CACHE_NAME = "maildir.cache"
_CACHE_MAGIC = b"quotad maildir cache\n"
_CACHE_FORMAT = 2
# A CRC-32 of the payload: it only has to catch a damaged file (a foreign one
# is caught by its identity), and costs a fifth of a cryptographic hash.
_DIGEST_SIZE = 4

# What quotad remembers of one `cur/` or `new/` directory, as a marshal-able
# tuple (st_ino, st_mtime_ns, st_ctime_ns, bytes, files, links, messages,
# message_bytes, subdirs, singles): bytes and files of its regular files
# with one link; `links` maps the inode of each file with several links to
# its size, to be counted once over the whole Maildir; `subdirs` the names
# of directories inside it (walked every time); `singles` the inodes of the
# one-link files, packed, to notice one of them gaining a link elsewhere.
_DirEntry = tuple[int, int, int, int, int, dict[int, int], int, int, tuple[str, ...], bytes]


def message_size(name: str) -> int:
    """The size Dovecot reads from NAME's `,S=`, or -1 when it would stat the file."""
    start = name.find(",S=")
    if start < 0:
        return -1
    start += 3
    end = start
    length = len(name)
    while end < length and "0" <= name[end] <= "9":
        end += 1
    if end < length and name[end] not in ":,":
        return -1
    # ",S=" followed directly by ":" is 0, as in Dovecot's own parser.
    return int(name[start:end]) if end > start else 0


@functools.lru_cache(maxsize=4096)
def dovecot_lists(folder: str) -> bool:
    """Whether Dovecot counts the Maildir++ folder stored as `.FOLDER` in the quota.

    Dovecot stores folder names in modified UTF-7 (RFC 3501 5.1.3), decodes
    them when it lists the Maildir, and encodes them again to find the
    folder's directory. A name that does not survive the round trip (a bare
    "&", an encoding that is not the canonical one, raw UTF-8) leads it to a
    directory that does not exist, so those messages are not counted; a name
    that is not UTF-8 at all it renames and skips. INBOX is the Maildir
    itself, whatever the case of its name: `.INBOX` or `.inbox` is never
    counted, and below it only the exact spelling `.INBOX.Sub` is found.
    quotad counts what Dovecot counts, and measures the bytes of every
    folder either way.
    """
    decoded = _mutf7_decode(folder)
    if decoded is None or _mutf7_encode(decoded) != folder:
        return False
    first, dot, _ = decoded.partition(".")
    if first.upper() == "INBOX":
        return bool(dot) and first == "INBOX"
    return True


def _mutf7_encode(text: str) -> str:
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be", "surrogatepass")
            b64 = base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",")
            out.append(f"&{b64}-")
            pending.clear()

    for char in text:
        if "\x20" <= char <= "\x7e":
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)


def _mutf7_decode(name: str) -> str | None:
    """NAME decoded from modified UTF-7, or None if it is not that."""
    out: list[str] = []
    index = 0
    while index < len(name):
        char = name[index]
        if not "\x20" <= char <= "\x7e":
            return None
        if char != "&":
            out.append(char)
            index += 1
            continue
        end = name.find("-", index + 1)
        if end < 0:
            return None
        chunk = name[index + 1 : end]
        index = end + 1
        if not chunk:
            out.append("&")
            continue
        padded = chunk.replace(",", "/") + "=" * (-len(chunk) % 4)
        try:
            raw = base64.b64decode(padded, validate=True)
            out.append(raw.decode("utf-16-be"))
        except (ValueError, UnicodeDecodeError):
            return None
    return "".join(out)


_S_IFMT = 0o170000
_S_IFREG = stat.S_IFREG

# ",S=<digits>" ending as Dovecot requires, at ":", "," or the end of a name
# (names are joined with NUL, which no file name holds).
_NAMED_SIZE = re.compile(r",S=([0-9]+)(?=[:,\0]|\Z)")


def _named_sizes(names: list[str]) -> tuple[list[int], list[str]]:
    """The `,S=` sizes of NAMES, and the names Dovecot would stat instead."""
    if not names:
        return [], []
    text = "\0".join(names)
    found = _NAMED_SIZE.findall(text)
    # One ",S=" per name, each of them well formed: then the matches are the
    # names' sizes, in order. Anything else takes the careful way.
    if len(found) == len(names) == text.count(",S="):
        return list(map(int, found)), []
    # Some name is odd (two ",S=", no digits, a bad end): one by one.
    sizes: list[int] = []
    unsized: list[str] = []
    for name in names:
        value = message_size(name)
        if value >= 0:
            sizes.append(value)
        else:
            unsized.append(name)
    return sizes, unsized


@dataclass(slots=True)
class _Summary:
    """One message directory, listed now or remembered."""

    bytes: int = 0
    files: int = 0
    links: dict[int, int] = field(default_factory=dict)
    messages: int = 0
    message_bytes: int = 0
    subdirs: list[str] = field(default_factory=list)
    singles: array[int] = field(default_factory=lambda: array("Q"))


@dataclass(slots=True)
class _Result:
    """What measuring one member's Maildir gives, and what to remember of it."""

    bytes: int = 0
    files: int = 0
    messages: int = 0
    message_bytes: int = 0
    cache: dict[str, Any] | None = None
    error: str | None = None
    vanished: bool = False
    relisted: int = 0
    reused: int = 0


class _Walk:
    """Measuring one Maildir: its fixed layout by hand, anything else by the tree walk."""

    def __init__(
        self,
        root: str,
        old: Mapping[str, Any] | None,
        *,
        trust: bool,
        settle_before_ns: int,
    ) -> None:
        self.root = root
        self.trust = trust
        self.settle_before_ns = settle_before_ns
        self.old_dirs: Mapping[str, Any] = {}
        self.old_empty: Mapping[str, Any] = {}
        self.old_linked = b""
        self.old_dev = -1
        if old is not None:
            self.old_dirs = old.get("dirs", {})
            self.old_empty = old.get("empty", {})
            self.old_linked = old.get("linked", b"")
            self.old_dev = old.get("dev", -1)
        self.tally = Tally()  # everything outside the message directories
        self.seen: set[int] = set()
        self.summaries: dict[str, _Summary] = {}
        self.fresh: set[str] = set()
        self.stored: dict[str, _DirEntry] = {}
        # Plain directories found empty: (st_ino, st_mtime_ns, st_ctime_ns).
        self.stored_empty: dict[str, tuple[int, int, int]] = {}
        self.dev = -1
        self.inbox_twice = False

    def run(self) -> _Result:
        fd, self.dev, ino = open_root(self.root)
        if self.dev != self.old_dev:
            self.old_dirs = {}
            self.old_empty = {}
            self.old_linked = b""
        self.seen.add(ino)
        try:
            self._container(fd, "", self.root, top=True)
        finally:
            os.close(fd)
        self._relist_if_linked()
        return self._result()

    def _container(self, fd: int, rel: str, path: str, *, top: bool) -> None:
        """List the Maildir (TOP) or one of its folders: files here change in place."""
        prefix = f"{rel}/" if rel else ""
        for name in self._list(fd, path)[0]:
            how = self._role(name, top=top)
            child_rel = prefix + name
            child_path = f"{path}/{name}"
            if how == _MESSAGES and self._reuse(fd, child_rel, child_path, name):
                continue
            if how == _PLAIN and self._still_empty(fd, child_rel, name):
                continue
            child = self._open(fd, name, child_path)
            if child < 0:
                continue
            if how == _MESSAGES:
                try:
                    self._messages(child, child_rel, child_path)
                finally:
                    os.close(child)
            elif how == _FOLDER:
                try:
                    self._container(child, child_rel, child_path, top=False)
                finally:
                    os.close(child)
            else:
                try:
                    # Most often tmp/, and empty: listed here, without
                    # setting up a whole tree walk for it.
                    before = os.fstat(child)
                    subdirs, empty = self._list(child, child_path)
                    self._plain_subdirs(child, child_path, subdirs)
                    if (
                        empty
                        and max(before.st_mtime_ns, before.st_ctime_ns) < self.settle_before_ns
                    ):
                        self.stored_empty[child_rel] = (
                            before.st_ino,
                            before.st_mtime_ns,
                            before.st_ctime_ns,
                        )
                finally:
                    os.close(child)

    def _still_empty(self, parent: int, rel: str, name: str) -> bool:
        """Whether REL was empty at the last scan and has not changed since.

        Adding anything to a directory changes its mtime and ctime, so an
        empty directory (most tmp/ folders) need not be opened again.
        """
        old = self.old_empty.get(rel)
        if old is None:
            return False
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except OSError:
            return False
        try:
            same = [st.st_ino, st.st_mtime_ns, st.st_ctime_ns] == list(old)
        except TypeError:
            return False  # not what this version writes
        if not same or not stat.S_ISDIR(st.st_mode) or st.st_dev != self.dev:
            return False
        if st.st_ino in self.seen:
            return False
        self.seen.add(st.st_ino)
        self.stored_empty[rel] = old
        return True

    def _role(self, name: str, *, top: bool) -> int:
        """What the subdirectory NAME of the Maildir (TOP) or of a folder is to the walk."""
        if name in ("cur", "new"):
            return _MESSAGES
        if top and name.startswith(".") and dovecot_lists(name[1:]):
            if name.startswith(".."):
                # A folder whose name starts with the separator has the
                # empty name as its parent, which Dovecot finds at the
                # Maildir itself: INBOX counts twice.
                self.inbox_twice = True
            return _FOLDER
        return _PLAIN

    def _list(self, fd: int, path: str) -> tuple[list[str], bool]:
        """Count the files of the open directory FD; return its subdirectories' names.

        And whether it was empty: nothing at all in it, not even a link.
        """
        subdirs: list[str] = []
        empty = True
        tally = self.tally
        links = tally.links
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    empty = False
                    name = entry.name
                    if entry.is_dir(follow_symlinks=False):
                        subdirs.append(name)
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if st.st_dev != self.dev or not stat.S_ISREG(st.st_mode):
                        continue
                    if st.st_nlink > 1:
                        links[st.st_ino] = st.st_size
                    else:
                        tally.bytes += st.st_size
                        tally.files += 1
        except OSError as exc:
            raise _unreadable(exc, path) from exc
        return subdirs, empty

    def _open(self, parent: int, name: str, path: str) -> int:
        """NAME below PARENT opened as a directory, or -1 if gone, elsewhere or walked already."""
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if _skippable(exc, parent, name, self.dev):
                return -1
            raise _unreadable(exc, path) from exc
        st = os.fstat(fd)
        if st.st_dev != self.dev or st.st_ino in self.seen:
            os.close(fd)
            return -1
        self.seen.add(st.st_ino)
        return fd

    def _reuse(self, parent: int, rel: str, path: str, name: str) -> bool:
        """Take REL's summary from the cache if the directory is provably unchanged."""
        old = self.old_dirs.get(rel)
        if old is None:
            return False
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except OSError:
            return False  # listing it will tell what is wrong
        try:
            ino, mtime, ctime, size, files, links, messages, message_bytes, subdirs, singles = old
            same = (
                stat.S_ISDIR(st.st_mode)
                and st.st_dev == self.dev
                and (st.st_ino, st.st_mtime_ns, st.st_ctime_ns) == (ino, mtime, ctime)
                and st.st_ino not in self.seen
            )
            if not same:
                return False
            summary = _Summary(
                int(size),
                int(files),
                {int(k): int(v) for k, v in links.items()},
                int(messages),
                int(message_bytes),
                [str(s) for s in subdirs],
                array("Q", bytes(singles)),
            )
        except (TypeError, ValueError, AttributeError):
            return False  # not a summary this version wrote: list it
        self.seen.add(st.st_ino)
        self.summaries[rel] = summary
        self.stored[rel] = old
        if summary.subdirs:
            # What sits below a message directory is walked every time.
            child = self._open(parent, name, path)
            if child >= 0:
                try:
                    self._plain_subdirs(child, path, summary.subdirs)
                finally:
                    os.close(child)
        return True

    def _messages(  # noqa: C901, PLR0912, PLR0915 -- one hot loop; calls per file cost
        self, fd: int, rel: str, path: str, *, walk_subdirs: bool = True
    ) -> None:
        """List one `cur/` or `new/` directory, counting its messages as Dovecot does."""
        before = os.fstat(fd)
        summary = _Summary()
        links = summary.links
        singles = summary.singles
        append_single = singles.append
        trust = self.trust
        dev = self.dev
        size = 0
        files = 0
        messages = 0
        unnamed = 0
        message_bytes = 0
        # Regular files whose names carry ",S=": their sizes are read from all
        # the names at once after the listing, far cheaper than one by one.
        named: list[str] = []
        # (name, lstat) of anything else: directories, links, devices.
        odd: list[tuple[str, os.stat_result]] = []
        ifmt = _S_IFMT
        ifreg = _S_IFREG
        append_named = named.append
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    name = entry.name
                    if trust and ",S=" in name and entry.is_file(follow_symlinks=False):
                        append_named(name)
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    # One unpacking instead of five attribute lookups, per file.
                    mode, ino, st_dev, nlink, _, _, st_size, _, _, _ = st
                    if mode & ifmt != ifreg:
                        odd.append((name, st))
                        continue
                    if ",S=" in name:
                        append_named(name)
                    else:
                        unnamed += 1
                        message_bytes += st_size
                    if st_dev != dev:
                        continue  # a file bind-mounted here is not ours to count
                    if nlink > 1:
                        links[ino] = st_size
                    else:
                        size += st_size
                        append_single(ino)
        except OSError as exc:
            raise _unreadable(exc, path) from exc
        files += len(singles)  # each single-link file was counted once, as it came
        # Every regular file listed is a message, named or not.
        messages += unnamed + len(named)
        sizes, unsized = _named_sizes(named)
        message_bytes += sum(sizes)
        if trust:
            size += sum(sizes)
            files += len(sizes)
        for name in unsized:
            # ",S=" but no number Dovecot accepts: it stats the file instead.
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                messages -= 1  # gone since the listing: Dovecot would not count it
                continue
            except OSError as exc:
                raise _unreadable(exc, f"{path}/{name}") from exc
            message_bytes += st.st_size
            if trust and st.st_dev == dev:
                if st.st_nlink > 1:
                    links[st.st_ino] = st.st_size
                else:
                    size += st.st_size
                    files += 1
                    append_single(st.st_ino)
        for name, st in odd:
            mode = st.st_mode
            named_size = message_size(name)
            if named_size >= 0:
                # The name alone, without a stat: even a dangling link counts.
                messages += 1
                message_bytes += named_size
            elif stat.S_ISLNK(mode):
                target = self._follow(fd, name, f"{path}/{name}")
                if target >= 0:
                    messages += 1
                    message_bytes += target
            else:
                # Dovecot counts whatever stat() finds, directories too.
                messages += 1
                message_bytes += st.st_size
            if stat.S_ISDIR(mode):
                summary.subdirs.append(name)
        summary.bytes = size
        summary.files = files
        summary.messages = messages
        summary.message_bytes = message_bytes
        self.summaries[rel] = summary
        self.fresh.add(rel)
        subdirs = summary.subdirs
        if subdirs and walk_subdirs:
            self._plain_subdirs(fd, path, subdirs)
        if max(before.st_mtime_ns, before.st_ctime_ns) < self.settle_before_ns:
            self.stored[rel] = (
                before.st_ino,
                before.st_mtime_ns,
                before.st_ctime_ns,
                size,
                files,
                links,
                messages,
                message_bytes,
                tuple(subdirs),
                singles.tobytes(),
            )
        else:
            self.stored.pop(rel, None)

    def _follow(self, fd: int, name: str, path: str) -> int:
        """The size of what the symbolic link NAME points to, as Dovecot's stat() sees it."""
        try:
            return os.stat(name, dir_fd=fd).st_size
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ESTALE):
                return -1  # a dangling link is no message for Dovecot either
            raise UnreadableDirectory(exc.errno or 0, exc.strerror or str(exc), path) from exc

    def _plain_subdirs(self, fd: int, path: str, names: list[str]) -> None:
        for name in names:
            child_path = f"{path}/{name}"
            child = self._open(fd, name, child_path)
            if child < 0:
                continue
            ino = os.fstat(child).st_ino
            walk(child, child_path, self.dev, ino, self.tally, seen=self.seen)

    def _relist_if_linked(self) -> None:
        """List again a remembered directory holding a file that has gained a link since.

        Creating a hard link changes the directory of the new name, not the
        old one, so a remembered directory may count as single a file that
        is now also counted under its other name. Only inodes that were not
        linked at the last scan can be such a file.
        """
        reused = [rel for rel in self.summaries if rel not in self.fresh]
        if not reused:
            return
        linked = set(self.tally.links)
        for summary in self.summaries.values():
            linked.update(summary.links)
        new = linked.difference(array("Q", self.old_linked))
        if not new:
            return
        for rel in reused:
            if new.isdisjoint(self.summaries[rel].singles):
                continue
            path = f"{self.root}/{rel}"
            fd = open_root(path)[0]
            try:
                # Its subdirectories were walked already, when it was reused.
                self._messages(fd, rel, path, walk_subdirs=False)
            finally:
                os.close(fd)

    def _result(self) -> _Result:
        result = _Result()
        links = dict(self.tally.links)
        size = self.tally.bytes
        files = self.tally.files
        for summary in self.summaries.values():
            size += summary.bytes
            files += summary.files
            links.update(summary.links)
            result.messages += summary.messages
            result.message_bytes += summary.message_bytes
        if self.inbox_twice:
            for rel in ("cur", "new"):
                inbox = self.summaries.get(rel)
                if inbox is not None:
                    result.messages += inbox.messages
                    result.message_bytes += inbox.message_bytes
        result.bytes = size + sum(links.values())
        result.files = files + len(links)
        result.relisted = len(self.fresh)
        result.reused = len(self.summaries) - len(self.fresh)
        result.cache = {
            "dev": self.dev,
            "dirs": self.stored,
            "empty": self.stored_empty,
            "linked": array("Q", sorted(links)).tobytes(),
        }
        return result


def measure_maildir(
    root: str,
    old: Mapping[str, Any] | None = None,
    *,
    trust: bool = False,
    settle_before_ns: int | None = None,
) -> _Result:
    """Measure the Maildir at ROOT, reusing OLD (this function's earlier `cache`) where it may.

    Never raises for the Maildir's contents: an unreadable directory sets
    `error`, a Maildir that is gone sets `vanished`.
    """
    if settle_before_ns is None:
        settle_before_ns = time.time_ns() - _SETTLE_NS
    try:
        return _Walk(root, old, trust=trust, settle_before_ns=settle_before_ns).run()
    except UnreadableDirectory as exc:
        if exc.errno == errno.ENOENT and str(exc.filename) == root:
            return _Result(vanished=True)
        return _Result(error=str(exc))


# Runs of members per worker: a task per member would cost more in round trips
# than an incremental rescan of a small Maildir takes (measured: 200 members,
# 0.09 s in tasks of one against 0.05 s in one process); a few per worker
# still even out members of very different sizes.
_TASKS_PER_WORKER = 4


def _measure_task(
    roots: list[tuple[str, Mapping[str, Any] | None]], trust: bool, settle_before_ns: int
) -> list[_Result]:
    """Pool task: a run of members' Maildirs, each with its cache."""
    return [
        measure_maildir(root, old, trust=trust, settle_before_ns=settle_before_ns)
        for root, old in roots
    ]


class MaildirScanner(Scanner):
    """One `maildir` resource per member Maildir matching the source's path pattern."""

    kind = "maildir"
    resource_kind = "maildir"

    def __init__(
        self,
        name: str,
        pattern: MemberPattern,
        *,
        workers: int,
        trust_filename_sizes: bool,
        full_every: int,
    ) -> None:
        super().__init__(name)
        self.pattern = pattern
        self.workers = workers
        self.trust = trust_filename_sizes
        self.full_every = full_every
        # How recent a change must not be for a directory to be remembered;
        # tests shorten it instead of sleeping seconds between rounds.
        self.settle_ns = _SETTLE_NS
        self.clock = time.time_ns  # tests move it forward instead of waiting days
        # Of the last scan, for tests and the benchmark: message directories
        # listed and taken from the cache, and whether it was a full scan.
        self.last_relisted = 0
        self.last_reused = 0
        self.last_full = True

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, object], base_dir: Path) -> Self:
        """Options: `path` (with `{member}`), `trust_filename_sizes`, `full_every`, `workers`."""
        reader = Options(options)
        path = reader.path("path", base_dir)
        trust = reader.boolean("trust_filename_sizes", default=False)
        full_every = reader.duration("full_every", "7d")
        workers = reader.integer("workers", os.cpu_count() or 1, minimum=1, maximum=1024)
        reader.finish()
        try:
            pattern = parse_member_pattern(path)
        except ValueError as exc:
            raise OptionError("path", str(exc)) from None
        return cls(
            name, pattern, workers=workers, trust_filename_sizes=trust, full_every=full_every
        )

    def _identity(self) -> list[object]:
        # A cache written for another source, pattern or counting rule is foreign.
        return [_CACHE_FORMAT, self.kind, self.name, self.pattern.pattern, self.trust]

    def scan(
        self, progress: Progress | None = None, context: ScanContext | None = None
    ) -> Iterator[ScanItem]:
        """Measure every member's Maildir; SourceError if the pattern's root is unreadable."""
        context = context or ScanContext()
        started = self.clock()
        settle_before = started - self.settle_ns
        members = self.pattern.expand()
        cache_file = None if context.state_dir is None else context.state_dir / _CACHE_NAME
        cache = None if cache_file is None else self._load(cache_file)
        full = context.full or cache is None
        if cache is not None and self.full_every > 0:
            full = full or started // 1_000_000_000 - int(cache["full_at"]) >= self.full_every
        old_members: Mapping[str, Any] = {} if full or cache is None else cache["members"]
        self.last_full = full
        self.last_relisted = self.last_reused = 0
        new_members: dict[str, Any] = {}
        for (captured, _), result in zip(
            members, self._measure_all(members, old_members, settle_before, progress), strict=True
        ):
            self.last_relisted += result.relisted
            self.last_reused += result.reused
            member = captured if is_member_name(captured) else None
            if result.vanished:
                continue
            if result.error is not None:
                yield ResourceFailure(member, self.resource_kind, captured, result.error)
                continue
            new_members[captured] = result.cache
            yield Measurement(
                member,
                self.resource_kind,
                captured,
                result.bytes,
                result.files,
                {"messages": result.messages, "message_bytes": result.message_bytes},
            )
        if cache_file is not None:
            full_at = started // 1_000_000_000
            if not full and cache is not None:
                full_at = int(cache["full_at"])
            self._save(cache_file, {"full_at": full_at, "members": new_members})

    def _measure_all(
        self,
        members: list[tuple[str, Path]],
        old: Mapping[str, Any],
        settle_before: int,
        progress: Progress | None,
    ) -> Iterator[_Result]:
        """Results in MEMBERS' order, measured in this process or a pool."""
        total = len(members)
        if self.workers == 1 or total <= 1:
            for done, (captured, path) in enumerate(members, 1):
                yield measure_maildir(
                    str(path), old.get(captured), trust=self.trust, settle_before_ns=settle_before
                )
                if progress is not None:
                    progress(captured, done, total)
            return
        yield from self._measure_pool(members, old, settle_before, progress)

    def _measure_pool(
        self,
        members: list[tuple[str, Path]],
        old: Mapping[str, Any],
        settle_before: int,
        progress: Progress | None,
    ) -> Iterator[_Result]:
        """Results in MEMBERS' order, measured by a pool and this process side by side."""
        total = len(members)
        workers = min(self.workers, total)
        tasks = min(total, workers * _TASKS_PER_WORKER)
        # Contiguous runs of members, so that results can be put in order.
        bounds = [total * i // tasks for i in range(tasks + 1)]
        runs = [
            [(str(path), old.get(captured)) for captured, path in members[start:end]]
            for start, end in itertools.pairwise(bounds)
        ]
        results: list[list[_Result] | None] = [None] * tasks
        # This process is one of the workers: the pool takes runs from the
        # front, we take them from the back. One process fewer to start,
        # and no core idles while we wait (an incremental rescan is short
        # enough that starting a worker is a good part of it).
        front, back = 0, tasks
        pending: dict[Future[list[_Result]], int] = {}
        done = 0
        yielded = 0
        context = get_context(_start_method())
        with ProcessPoolExecutor(max_workers=workers - 1, mp_context=context) as pool:
            while yielded < tasks:
                while front < back and len(pending) < 2 * (workers - 1):
                    future = pool.submit(_measure_task, runs[front], self.trust, settle_before)
                    pending[future] = front
                    front += 1
                if front < back:
                    back -= 1
                    results[back] = _measure_task(runs[back], self.trust, settle_before)
                elif pending:
                    wait(pending, return_when=FIRST_COMPLETED)
                for future in [f for f in pending if f.done()]:
                    results[pending.pop(future)] = future.result()
                while yielded < tasks and (ready := results[yielded]) is not None:
                    results[yielded] = []  # handed on: free it
                    yielded += 1
                    for result in ready:
                        done += 1
                        if progress is not None:
                            progress(members[done - 1][0], done, total)
                        yield result

    def _load(self, path: Path) -> dict[str, Any] | None:
        """The cache at PATH if it is whole and this source's own, else None (rebuilt)."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("maildir cache %s unreadable, scanning in full: %s", path, exc)
            return None
        head = len(_CACHE_MAGIC)
        payload = data[head + _DIGEST_SIZE :]
        digest = zlib.crc32(payload).to_bytes(_DIGEST_SIZE, "big")
        if not data.startswith(_CACHE_MAGIC) or data[head : head + _DIGEST_SIZE] != digest:
            log.warning("maildir cache %s is damaged, scanning in full", path)
            return None
        try:
            document = marshal.loads(payload)  # noqa: S302 - checksummed, written by us
        except (EOFError, ValueError, TypeError):
            return None
        if (
            not isinstance(document, dict)
            or document.get("identity") != self._identity()
            or not isinstance(document.get("full_at"), int)
            or not isinstance(document.get("members"), dict)
        ):
            log.warning("maildir cache %s belongs to another source or version, ignored", path)
            return None
        return document

    def _save(self, path: Path, document: dict[str, Any]) -> None:
        """Write the cache atomically; failing only costs the next scan its speed."""
        document["identity"] = self._identity()
        payload = marshal.dumps(document)
        digest = zlib.crc32(payload).to_bytes(_DIGEST_SIZE, "big")
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with temporary.open("wb") as handle:
                handle.write(_CACHE_MAGIC + digest + payload)
            temporary.replace(path)
        except OSError as exc:
            log.warning("cannot write maildir cache %s: %s", path, exc)
            temporary.unlink(missing_ok=True)
