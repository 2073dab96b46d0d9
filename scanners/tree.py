"""The `tree` scanner: apparent size and count of the regular files in each member's directory.

Contract: `bytes` is the sum of `st_size` over the regular files below the
root, each inode once per resource; `files` is their count. Nothing else
counts (directories, symlinks, FIFOs, sockets, devices), links are never
followed and the walk stays on the root's filesystem. A directory that cannot
be read fails that resource's measurement, naming the directory, because a
partial sum would under-charge silently.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from scanners.base import (
    Measurement,
    OptionError,
    Progress,
    ResourceFailure,
    ScanContext,
    ScanItem,
    Scanner,
    SourceError,
    is_member_name,
)
from scanners.options import Options
from scanners.paths import MemberPattern, display_path, parse_member_pattern

# O_NOFOLLOW: a member who swaps a directory for a symlink mid-walk gets
# ELOOP (treated as vanished), never a walk into someone else's files.
# O_DIRECTORY: a directory swapped for a FIFO is never opened (no hang).
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# A subdirectory that is gone, or is no longer a directory, by the time we
# open it was removed or replaced during the walk: skipped like a vanished file.
_VANISHED = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP})


class UnreadableDirectory(OSError):
    """A directory in the tree could not be read, so the sum would be too small."""

    def __init__(self, err: int, strerror: str, path: str) -> None:
        super().__init__(err, strerror, path)

    def __str__(self) -> str:
        return f"cannot read {display_path(str(self.filename))}: {self.strerror}"

    def __reduce__(self) -> tuple[type[Self], tuple[int, str, str]]:
        # Crosses the process pool: rebuild with our own signature.
        return (type(self), (self.errno or 0, self.strerror or "", str(self.filename)))


@dataclass(slots=True)
class Tally:
    """Running totals for one resource, mergeable across parts walked separately."""

    bytes: int = 0
    files: int = 0
    # Files with more than one link, by inode: counted once when the
    # resource is complete. Only these are remembered, to keep memory flat.
    links: dict[int, int] = field(default_factory=dict)

    def merge(self, other: Tally) -> None:
        """Add OTHER, a disjoint part of the same tree."""
        self.bytes += other.bytes
        self.files += other.files
        self.links.update(other.links)

    def totals(self) -> tuple[int, int]:
        """(bytes, files) with every multiply-linked inode counted once."""
        return self.bytes + sum(self.links.values()), self.files + len(self.links)


def measure_tree(root: Path | str) -> tuple[int, int]:
    """(bytes, files) of the regular files below ROOT; raises UnreadableDirectory.

    A ROOT that does not exist raises UnreadableDirectory too, with errno
    ENOENT, so the caller can tell a vanished resource from an unreadable one.
    """
    path = os.fspath(root)
    tally = Tally()
    fd, dev, ino = open_root(path)
    walk(fd, path, dev, ino, tally)
    return tally.totals()


def open_root(path: str) -> tuple[int, int, int]:
    """(fd, st_dev, st_ino) of directory PATH, opened without following a final symlink."""
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError as exc:
        if exc.errno in {errno.ENOTDIR, errno.ELOOP} and Path(path).is_symlink():
            # Linux says ENOTDIR here, which would send an admin looking
            # for a file where a member has put a symlink.
            raise UnreadableDirectory(exc.errno, "a symbolic link, not followed", path) from exc
        raise _unreadable(exc, path) from exc
    try:
        st = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        raise _unreadable(exc, path) from exc
    return fd, st.st_dev, st.st_ino


def open_below(fd: int, relative: str, dev: int) -> int:
    """A new descriptor for directory RELATIVE below the open directory FD, or -1.

    One component at a time, none of them followed if it is a symlink: a
    member cannot redirect it elsewhere, and no length limit applies. -1
    when it vanished or is on a device other than DEV, as in `walk`.
    """
    current = fd
    try:
        for name in relative.split("/"):
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=current)
            except OSError as exc:
                if _skippable(exc, current, name, dev):
                    return -1
                raise
            if current != fd:
                os.close(current)
            current = child
        result, current = current, fd
        return result
    finally:
        if current != fd:
            os.close(current)


def _skippable(exc: OSError, parent_fd: int, name: str, dev: int) -> bool:
    """Whether failing to open directory NAME is no reason to fail the measurement."""
    if exc.errno in _VANISHED:
        return True
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except OSError:
        return False
    # The root of a mount may well be closed to us, and is not ours to
    # count anyway: checked only now, to spare every directory a stat.
    return st.st_dev != dev


# Descriptors of directories whose subdirectories are still to be walked
# that one walk keeps open at most; beyond, the oldest are closed and later
# reopened. Without a cap, a member could make their own measurement fail
# (EMFILE) with a deep enough tree of directories that each have a sibling.
_MAX_OPEN = 128

# _Parent.fd when closed to respect _MAX_OPEN, and when found replaced on reopening.
_SHED = -1
_GONE = -2


class _Parent:
    """A directory whose subdirectories are still to be opened, relative to its fd."""

    __slots__ = ("fd", "ino", "left", "path")

    def __init__(self, fd: int, left: int, path: str, ino: int) -> None:
        self.fd = fd
        self.left = left
        self.path = path
        self.ino = ino


def walk(  # noqa: C901, PLR0912, PLR0915 -- one hot loop; splitting it costs calls per file
    fd: int,
    path: str,
    dev: int,
    ino: int,
    tally: Tally,
    *,
    budget: int | None = None,
    seen: set[int] | None = None,
) -> list[str]:
    """Add the regular files below the open directory FD to TALLY; closes FD.

    PATH names FD in errors, DEV is the root's st_dev (nothing on another
    device is entered or counted) and INO is FD's st_ino. With BUDGET, the
    walk stops once TALLY holds about that many files and directories, and
    returns the paths of the directories it has not entered, for other
    processes to walk; without, it returns []. SEEN collects the inodes of
    the directories walked; one already in it is not walked again.
    """
    # Locals: this loop runs once per file and global lookups add up.
    scandir = os.scandir
    os_open = os.open
    close = os.close
    fstat = os.fstat
    s_isreg = stat.S_ISREG
    links = tally.links
    total = 0
    files = 0
    # Work done, for the budget: files and directories, so that a tree of
    # empty directories or of hard links is still shared out.
    walked = tally.files
    # Directories cannot be hard-linked, so an inode met twice is a bind
    # mount (same device) of a directory already walked: walking it again
    # would count its files twice, and a loop would never end.
    if seen is None:
        seen = set()
    seen.add(ino)
    # Directories still to walk, as (parent, name). Opening each relative to
    # its parent's fd never re-resolves a path that a member could redirect.
    pending: list[tuple[_Parent, str]] = []
    # Parents holding a descriptor, oldest first (some may have closed since).
    holding: list[_Parent] = []
    held = 0
    try:
        base = os.dup(fd)  # where shed parents are reopened from
    except OSError as exc:
        os.close(fd)
        raise _unreadable(exc, path) from exc
    current = fd
    current_path = path
    current_ino = ino
    leftovers: list[str] = []
    try:
        while True:
            subdirs: list[str] = []
            try:
                with scandir(current) as entries:
                    for entry in entries:
                        if entry.is_file(follow_symlinks=False):
                            try:
                                st = entry.stat(follow_symlinks=False)
                            except FileNotFoundError:
                                continue
                            # Re-checked: the entry may have been replaced
                            # since readdir, and a bind-mounted file lives
                            # on another device.
                            if st.st_dev != dev or not s_isreg(st.st_mode):
                                continue
                            if st.st_nlink > 1:
                                links[st.st_ino] = st.st_size
                            else:
                                total += st.st_size
                                files += 1
                        elif entry.is_dir(follow_symlinks=False):
                            subdirs.append(entry.name)
            except OSError as exc:
                raise _unreadable(exc, current_path) from exc
            if subdirs:
                if held >= _MAX_OPEN:
                    held = _shed(holding)
                parent = _Parent(current, len(subdirs), current_path, current_ino)
                holding.append(parent)
                held += 1
                pending.extend((parent, name) for name in subdirs)
            else:
                close(current)
            current = -1
            walked += 1
            if budget is not None and pending and walked + files + len(links) >= budget:
                leftovers = [f"{parent.path}/{name}" for parent, name in pending]
                break
            while pending:
                parent, name = pending.pop()
                # Not os.path.join or Path: this runs once per directory.
                child_path = f"{parent.path}/{name}"
                if parent.fd == _SHED:
                    _reopen(parent, base, path, dev)
                    if parent.fd >= 0:
                        holding.append(parent)
                        held += 1
                child = -1
                if parent.fd >= 0:
                    try:
                        child = os_open(name, _DIR_FLAGS, dir_fd=parent.fd)
                    except OSError as exc:
                        if not _skippable(exc, parent.fd, name, dev):
                            raise _unreadable(exc, child_path) from exc
                parent.left -= 1
                if parent.left == 0 and parent.fd >= 0:
                    close(parent.fd)
                    parent.fd = _SHED
                    held -= 1
                if child < 0:
                    continue
                try:
                    st = fstat(child)
                except OSError as exc:
                    close(child)
                    raise _unreadable(exc, child_path) from exc
                if st.st_dev != dev or st.st_ino in seen:
                    close(child)
                    continue
                seen.add(st.st_ino)
                current = child
                current_path = child_path
                current_ino = st.st_ino
                break
            if current < 0:
                break
    finally:
        if current >= 0:
            close(current)
        close(base)
        for parent in holding:
            if parent.fd >= 0 and parent.left > 0:
                close(parent.fd)
                parent.fd = _SHED
    tally.bytes += total
    tally.files += files
    return leftovers


def _shed(holding: list[_Parent]) -> int:
    """Close the oldest half of the descriptors in HOLDING; return how many remain."""
    live = [parent for parent in holding if parent.fd >= 0 and parent.left > 0]
    # The oldest are the shallowest: their remaining children come last.
    for parent in live[: len(live) - _MAX_OPEN // 2]:
        os.close(parent.fd)
        parent.fd = _SHED
    holding[:] = [parent for parent in live if parent.fd >= 0]
    return len(holding)


def _reopen(parent: _Parent, base: int, base_path: str, dev: int) -> None:
    """Give the shed PARENT a descriptor again, or mark it gone if it is not there any more."""
    relative = parent.path[len(base_path) + 1 :]
    try:
        fd = open_below(base, relative, dev) if relative else os.dup(base)
    except OSError as exc:
        raise _unreadable(exc, parent.path) from exc
    if fd < 0:
        parent.fd = _GONE
        return
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (dev, parent.ino):
        # Renamed away and replaced meanwhile: the original is walked
        # wherever it went, if the walk has yet to get there.
        os.close(fd)
        parent.fd = _GONE
        return
    parent.fd = fd


def _unreadable(exc: OSError, path: str) -> UnreadableDirectory:
    return UnreadableDirectory(exc.errno or 0, exc.strerror or str(exc), path)


# Files (and directories) a pool task walks before handing back the rest of
# its tree: small enough that one big member is soon shared out among the
# workers, big enough that the round trips stay cheap (measured: 2048 to
# 32768 cost the same on 20 members, and 4096 halves the time for one).
_TASK_BUDGET = 4096

# Directories handed to one pool task at most. A task returns the ones it had
# no budget left for, so a long list would travel back and forth many times
# (a directory with 100,000 subdirectories, say).
_TASK_DIRS = 256

# What a pool task returns: its tally, the (st_dev, st_ino) of the resource
# root, the directories left for other tasks (relative to that root), and the
# inodes of the directories it walked.
_Part = tuple[Tally, tuple[int, int], list[str], set[int]]


def _root_part(root: str, budget: int) -> _Part:
    """Pool task: start on the resource at ROOT."""
    tally = Tally()
    seen: set[int] = set()
    fd, dev, ino = open_root(root)
    leftovers = walk(fd, root, dev, ino, tally, budget=budget, seen=seen)
    return tally, (dev, ino), [path[len(root) + 1 :] for path in leftovers], seen


def _dirs_part(root: str, identity: tuple[int, int], dirs: list[str], budget: int) -> _Part:
    """Pool task: walk the directories DIRS, relative to ROOT, of one resource."""
    tally = Tally()
    leftovers: list[str] = []
    fd, dev, ino = open_root(root)
    seen = {ino}
    try:
        if (dev, ino) != identity:
            # A member swapped this resource's root (a Maildir, say) for
            # another directory mid-scan: neither sum would be right.
            raise UnreadableDirectory(errno.ESTALE, "replaced during the scan", root)
        for index, relative in enumerate(dirs):
            if tally.files + len(tally.links) >= budget:
                leftovers.extend(dirs[index:])
                break
            path = f"{root}/{relative}"
            try:
                sub = open_below(fd, relative, dev)
            except OSError as exc:
                raise _unreadable(exc, path) from exc
            if sub < 0:
                continue
            st = os.fstat(sub)
            if st.st_dev != dev or st.st_ino in seen:
                os.close(sub)  # a mount point, or a bind mount of the root
                continue
            found = walk(sub, path, dev, st.st_ino, tally, budget=budget, seen=seen)
            leftovers.extend(found_path[len(root) + 1 :] for found_path in found)
    finally:
        os.close(fd)
    seen.discard(ino)
    return tally, identity, leftovers, seen


@dataclass(slots=True)
class _Resource:
    """One member directory being measured by the pool, possibly in several parts."""

    captured: str
    path: Path
    tally: Tally = field(default_factory=Tally)
    parts: int = 1
    # (st_dev, st_ino) of the root, once the first part has opened it.
    identity: tuple[int, int] | None = None
    # Inodes of the directories walked so far, by all parts.
    seen: set[int] = field(default_factory=set)
    # Some directory was walked by two parts (a bind mount inside the tree).
    overlap: bool = False
    error: str | None = None
    vanished: bool = False


def _start_method() -> str:
    """How to start the pool's workers: fork when that is safe, forkserver otherwise."""
    # fork costs ~5 ms for two workers and imports nothing, but forking a
    # process with other threads (quotad's scheduler and web threads) can
    # leave the child stuck on a lock one of them held; a single-threaded
    # process (a one-off scan, an agent, the benchmark) has no such lock.
    # The executor forks all its workers on the first submit, before it
    # starts its own threads. /proc counts threads started by C libraries too.
    if threading.active_count() == 1:
        # A thread Python has just joined (the last pool's manager, say) can
        # linger in the kernel for a moment after join() returns.
        for _ in range(_THREAD_EXIT_POLLS):
            if _os_threads() == 1:
                return "fork"
            time.sleep(0.001)
    # forkserver forks from a clean single-threaded server instead: ~30 ms
    # for two workers, but each worker also re-imports the main module
    # (CPython 3.11 does not preload it into the server), so a heavy
    # __main__ costs its import time per worker per scan. Still less than
    # spawn, which adds a whole interpreter start per worker.
    return "forkserver"


# How many milliseconds to wait for a joined thread to leave the kernel.
_THREAD_EXIT_POLLS = 50


def _os_threads() -> int:
    try:
        return sum(1 for _ in Path("/proc/self/task").iterdir())
    except OSError:
        return 0


class TreeScanner(Scanner):
    """One `tree` resource per member directory matching the source's path pattern."""

    kind = "tree"
    resource_kind = "tree"

    def __init__(self, name: str, pattern: MemberPattern, workers: int) -> None:
        super().__init__(name)
        self.pattern = pattern
        self.workers = workers

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, object], base_dir: Path) -> Self:
        """Options: `path`, a pattern with one `{member}`; `workers`, default all CPUs."""
        reader = Options(options)
        path = reader.path("path", base_dir)
        workers = reader.integer("workers", os.cpu_count() or 1, minimum=1, maximum=1024)
        reader.finish()
        try:
            pattern = parse_member_pattern(path)
        except ValueError as exc:
            raise OptionError("path", str(exc)) from None
        return cls(name, pattern, workers)

    def scan(
        self,
        progress: Progress | None = None,
        context: ScanContext | None = None,  # noqa: ARG002 - a tree keeps no state
    ) -> Iterator[ScanItem]:
        """Measure every member directory; SourceError if the pattern's root is unreadable."""
        members = self.pattern.expand()
        if self.workers == 1:
            for done, (captured, path) in enumerate(members, 1):
                item = self._item(self._measure_here(_Resource(captured, path)))
                if progress is not None:
                    progress(captured, done, len(members))
                if item is not None:
                    yield item
        elif members:
            yield from self._scan_pool(members, progress)

    @staticmethod
    def _measure_here(resource: _Resource) -> _Resource:
        """Measure RESOURCE in this process, replacing anything measured before."""
        resource.tally = Tally()
        try:
            resource.tally.bytes, resource.tally.files = measure_tree(resource.path)
        except UnreadableDirectory as exc:
            resource.vanished = exc.errno == errno.ENOENT
            resource.error = str(exc)
        return resource

    def _item(self, resource: _Resource) -> ScanItem | None:
        member = resource.captured if is_member_name(resource.captured) else None
        if resource.vanished:
            # Deleted between listing and measuring: no longer a resource.
            return None
        if resource.error is not None:
            return ResourceFailure(member, self.resource_kind, resource.captured, resource.error)
        size, files = resource.tally.totals()
        return Measurement(member, self.resource_kind, resource.captured, size, files, {})

    def _scan_pool(
        self, members: list[tuple[str, Path]], progress: Progress | None
    ) -> Iterator[ScanItem]:
        context = multiprocessing.get_context(_start_method())
        resources = [_Resource(captured, path) for captured, path in members]
        pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=context)
        running: dict[Future[_Part], _Resource] = {}
        try:
            for resource in resources:
                running[pool.submit(_root_part, str(resource.path), _TASK_BUDGET)] = resource
            completed = 0
            next_out = 0
            while running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    resource = running.pop(future)
                    if self._absorb(pool, running, resource, future):
                        completed += 1
                        if progress is not None:
                            progress(resource.captured, completed, len(resources))
                # Sorted order, as with workers=1, yielding each as soon as
                # everything before it is done.
                while next_out < len(resources) and resources[next_out].parts == 0:
                    item = self._item(resources[next_out])
                    next_out += 1
                    if item is not None:
                        yield item
        except BrokenProcessPool as exc:
            # A worker killed from outside (the OOM killer, an operator):
            # nothing says which resources it had measured.
            raise SourceError(f"a scanner worker process died: {exc}") from exc
        finally:
            # Not waiting when stopped early (an error, a consumer that
            # closed the generator): the running walks may be long, and the
            # pool's own thread reaps the workers. Otherwise all is done and
            # waiting is quick, and leaves no thread behind that would make
            # the next scan's fork unsafe.
            pool.shutdown(wait=not running, cancel_futures=True)

    def _absorb(
        self,
        pool: ProcessPoolExecutor,
        running: dict[Future[_Part], _Resource],
        resource: _Resource,
        future: Future[_Part],
    ) -> bool:
        """Fold one finished part into RESOURCE, queueing the rest of its tree; True when done."""
        resource.parts -= 1
        try:
            tally, identity, leftovers, seen = future.result()
        except UnreadableDirectory as exc:
            if resource.error is None:
                resource.error = str(exc)
                # Only the first part opens the root by itself; later ones
                # skip what vanished.
                resource.vanished = resource.identity is None and exc.errno == errno.ENOENT
            return resource.parts == 0
        resource.identity = identity
        if resource.error is None and not resource.overlap:
            resource.tally.merge(tally)
            resource.overlap = not resource.seen.isdisjoint(seen)
            resource.seen |= seen
            if not resource.overlap:
                # Dealt round-robin: the bottom of the stack holds the big,
                # shallow directories and the top the small, deep ones, so
                # each task gets a mix, and every worker gets a task.
                chunks = max(min(len(leftovers), self.workers), -(-len(leftovers) // _TASK_DIRS))
                for start in range(chunks):
                    dirs = leftovers[start::chunks]
                    task = pool.submit(_dirs_part, str(resource.path), identity, dirs, _TASK_BUDGET)
                    running[task] = resource
                resource.parts += chunks
        if resource.parts > 0:
            return False
        if resource.overlap and resource.error is None:
            # Parts cannot see each other's directories, and a bind mount
            # inside the tree made two of them walk the same one: walking
            # the tree again in one piece counts it once.
            self._measure_here(resource)
        return True
