"""The `tree` scanner on real directory trees.

Expected sizes come from the bytes each test writes, never from summing
os.stat the way the scanner does, so a wrong walk cannot agree with itself.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.popen_fork
import multiprocessing.synchronize
import os
import shutil
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, Self

import pytest

from scanners import tree
from scanners.base import Measurement, OptionError, ResourceFailure, ScanItem, SourceError
from scanners.tree import TreeScanner, UnreadableDirectory, measure_tree
from tests.scanners.support import (
    make_dir,
    need_root,
    public_dir,
    run_unprivileged,
    workers,
    write,
)

__all__ = ["public_dir", "workers"]  # fixtures, used by name


def scan(pattern: Path | str, workers: int = 1) -> list[ScanItem]:
    """Every item a scanner over PATTERN yields."""
    scanner = TreeScanner.from_options("homes", {"path": str(pattern), "workers": workers}, Path())
    return list(scanner.scan())


def measured(items: list[ScanItem]) -> dict[str, tuple[str | None, int, int]]:
    """Name -> (member, bytes, files), asserting that nothing failed."""
    result = {}
    for item in items:
        assert isinstance(item, Measurement), item
        assert item.kind == "tree"
        assert item.detail == {}
        result[item.name] = (item.member, item.bytes, item.files)
    return result


def open_fds() -> set[str]:
    return {entry.name for entry in Path("/proc/self/fd").iterdir()}


def test_sums_the_regular_files_of_each_member(tmp_path: Path, workers: int) -> None:
    alice = tmp_path / "alice"
    (alice / "docs" / "deep" / "deeper").mkdir(parents=True)
    (alice / "empty-dir").mkdir()
    expected = write(alice / "top.txt", 1234)
    expected += write(alice / "docs" / "a.pdf", 50_000)
    expected += write(alice / "docs" / "deep" / "deeper" / "b", 7)
    expected += write(alice / "empty-file", 0)
    expected += write(alice / "line\nbreak", 11)
    bob = tmp_path / "bob"
    bob.mkdir()
    (tmp_path / "carol").mkdir()

    items = scan(tmp_path / "{member}", workers)

    assert [item.name for item in items] == ["alice", "bob", "carol"]
    assert measured(items) == {
        "alice": ("alice", expected, 5),
        "bob": ("bob", 0, 0),
        "carol": ("carol", 0, 0),
    }
    assert expected == 1234 + 50_000 + 7 + 0 + 11


def test_hard_links_count_once_per_resource(tmp_path: Path, workers: int) -> None:
    for name in ("alice", "bob"):
        (tmp_path / "homes" / name / "sub").mkdir(parents=True)
    alice = tmp_path / "homes" / "alice"
    bob = tmp_path / "homes" / "bob"
    write(alice / "shared", 1000)
    (alice / "sub" / "shared-again").hardlink_to(alice / "shared")
    (alice / "shared-thrice").hardlink_to(alice / "shared")
    (bob / "sub" / "from-alice").hardlink_to(alice / "shared")
    # Its other name is outside every tree: still counted, once.
    write(tmp_path / "elsewhere", 300)
    (bob / "linked-out").hardlink_to(tmp_path / "elsewhere")
    write(bob / "own", 5)

    items = scan(tmp_path / "homes" / "{member}", workers)

    assert measured(items) == {
        "alice": ("alice", 1000, 1),
        "bob": ("bob", 1000 + 300 + 5, 3),
    }


def test_symlinks_are_never_followed(tmp_path: Path, workers: int) -> None:
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    write(outside / "big", 5_000_000)
    write(outside / "dir" / "inside", 4096)
    alice = tmp_path / "homes" / "alice"
    alice.mkdir(parents=True)
    expected = write(alice / "real", 42)
    (alice / "loop").symlink_to(".")
    (alice / "self-loop").symlink_to("self-loop")
    (alice / "big-link").symlink_to(outside / "big")
    (alice / "dir-link").symlink_to(outside / "dir")
    (alice / "dangling").symlink_to(tmp_path / "nowhere")
    # A symlink as a member directory is not a member directory.
    (tmp_path / "homes" / "mallory").symlink_to(outside)

    items = scan(tmp_path / "homes" / "{member}", workers)

    assert measured(items) == {"alice": ("alice", expected, 1)}


def test_a_sparse_file_counts_its_apparent_size(tmp_path: Path, workers: int) -> None:
    alice = tmp_path / "alice"
    alice.mkdir()
    with (alice / "sparse").open("wb") as handle:
        handle.truncate(1 << 30)

    assert measured(scan(tmp_path / "{member}", workers)) == {"alice": ("alice", 1073741824, 1)}


@pytest.mark.timeout(60)
def test_fifos_sockets_and_devices_are_neither_opened_nor_counted(
    public_dir: Path, workers: int
) -> None:
    alice = public_dir / "alice"
    alice.mkdir()
    expected = write(alice / "plain", 10)
    os.mkfifo(alice / "fifo")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(alice / "sock"))
        if os.geteuid() == 0:
            os.mknod(alice / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
            os.mknod(alice / "loop0", stat.S_IFBLK | 0o600, os.makedev(7, 0))

        # Opening the FIFO would block for ever (no writer): the timeout says so.
        items = scan(public_dir / "{member}", workers)
    finally:
        listener.close()

    assert measured(items) == {"alice": ("alice", expected, 1)}


def test_names_that_are_not_utf8(tmp_path: Path, workers: int) -> None:
    base = os.fsencode(tmp_path)
    make_dir(base + b"/alice")
    make_dir(base + b"/alice/d\xffir")
    expected = write(base + b"/alice/caf\xe9", 100)
    expected += write(base + b"/alice/d\xffir/\xfe\xfe", 23)
    make_dir(base + b"/\xff")
    write(base + b"/\xff/x", 9)

    items = scan(tmp_path / "{member}", workers)

    assert measured(items) == {
        "alice": ("alice", expected, 2),
        # Escaped so that the ledger and JSON can hold it (printable_name).
        "\\xff": (None, 9, 1),
    }


def test_unattributed_and_skipped_directories(tmp_path: Path, workers: int) -> None:
    for name in ("Alice", "bob", "9lives", ".snapshot", "lost+found", "a b"):
        (tmp_path / name).mkdir()
        write(tmp_path / name / "f", 3)
    write(tmp_path / "carol", 50)  # a file, not a member directory

    items = scan(tmp_path / "{member}", workers)

    assert measured(items) == {
        "9lives": (None, 3, 1),
        "Alice": (None, 3, 1),
        "a b": (None, 3, 1),
        "bob": ("bob", 3, 1),
    }


def test_the_placeholder_may_share_its_component_and_have_a_rest(
    tmp_path: Path, workers: int
) -> None:
    for name in ("alice", "bob", "carol"):
        (tmp_path / f"site-{name}").mkdir()
    (tmp_path / "site-alice" / "Maildir").mkdir()
    expected = write(tmp_path / "site-alice" / "Maildir" / "1", 17)
    write(tmp_path / "site-alice" / "outside-maildir", 1000)
    (tmp_path / "site-bob" / "Maildir").mkdir()
    # carol has no Maildir: not a resource at all.

    items = scan(tmp_path / "site-{member}" / "Maildir", workers)

    assert measured(items) == {"alice": ("alice", expected, 1), "bob": ("bob", 0, 0)}


def test_a_resource_root_that_is_a_symlink_fails(tmp_path: Path, workers: int) -> None:
    (tmp_path / "outside").mkdir()
    write(tmp_path / "outside" / "big", 10_000)
    (tmp_path / "homes" / "erin").mkdir(parents=True)
    (tmp_path / "homes" / "erin" / "Maildir").symlink_to(tmp_path / "outside")

    items = scan(tmp_path / "homes" / "{member}" / "Maildir", workers)

    assert items == [
        ResourceFailure(
            "erin",
            "tree",
            "erin",
            f"cannot read {tmp_path}/homes/erin/Maildir: a symbolic link, not followed",
        )
    ]


class VanishingScandir:
    """os.scandir that deletes VICTIM just before handing out its entry."""

    def __init__(self, victim: str, remove: Callable[[str], None]) -> None:
        self.real = os.scandir
        self.victim = victim
        self.remove = remove
        self.removed = False

    def __call__(self, target: int | str) -> VanishingIterator:
        return VanishingIterator(self, self.real(target), target)


class VanishingIterator:
    def __init__(
        self, owner: VanishingScandir, real: os._ScandirIterator[str], target: int | str
    ) -> None:
        self.owner = owner
        self.real = real
        self.target = target

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.real.close()

    def __iter__(self) -> Iterator[os.DirEntry[str]]:
        for entry in self.real:
            if entry.name == self.owner.victim:
                assert isinstance(self.target, int)
                self.owner.remove(f"/proc/self/fd/{self.target}/{entry.name}")
                self.owner.removed = True
            yield entry


def test_a_file_that_vanishes_during_the_walk_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = tmp_path / "alice"
    (alice / "sub").mkdir(parents=True)
    expected = write(alice / "keep", 40)
    expected += write(alice / "sub" / "keep-too", 2)
    write(alice / "sub" / "doomed", 1_000_000)
    fake = VanishingScandir("doomed", os.unlink)
    monkeypatch.setattr(os, "scandir", fake)

    items = scan(tmp_path / "{member}", workers=1)

    assert fake.removed
    assert measured(items) == {"alice": ("alice", expected, 2)}


def test_a_directory_that_vanishes_before_it_is_opened_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = tmp_path / "alice"
    (alice / "doomed" / "inner").mkdir(parents=True)
    write(alice / "doomed" / "inner" / "big", 1_000_000)
    expected = write(alice / "keep", 40)
    fake = VanishingScandir("doomed", shutil.rmtree)
    monkeypatch.setattr(os, "scandir", fake)

    items = scan(tmp_path / "{member}", workers=1)

    assert fake.removed
    assert measured(items) == {"alice": ("alice", expected, 1)}


def test_a_directory_swapped_for_a_symlink_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    write(outside / "not-alices", 999_999)
    alice = tmp_path / "homes" / "alice"
    (alice / "swapped").mkdir(parents=True)
    expected = write(alice / "keep", 8)

    def swap(path: str) -> None:
        Path(path).rmdir()
        Path(path).symlink_to(outside)

    fake = VanishingScandir("swapped", swap)
    monkeypatch.setattr(os, "scandir", fake)

    items = scan(tmp_path / "homes" / "{member}", workers=1)

    assert fake.removed
    assert measured(items) == {"alice": ("alice", expected, 1)}


def make_unreadable_homes(root: Path) -> int:
    """alice has an unreadable subdirectory, bob is fine; return bob's bytes."""
    private = root / "alice" / "private"
    private.mkdir(parents=True)
    write(root / "alice" / "public", 10)
    write(private / "secret", 10_000)
    private.chmod(0)
    (root / "bob").mkdir()
    return write(root / "bob" / "f", 77)


def test_an_unreadable_directory_fails_that_resource_naming_it(
    public_dir: Path, workers: int
) -> None:
    bob_bytes = make_unreadable_homes(public_dir)

    items = run_unprivileged(lambda: scan(public_dir / "{member}", workers))

    alice, bob = items
    assert isinstance(alice, ResourceFailure)
    assert (alice.member, alice.kind, alice.name) == ("alice", "tree", "alice")
    assert alice.error == f"cannot read {public_dir}/alice/private: Permission denied"
    assert measured([bob]) == {"bob": ("bob", bob_bytes, 1)}


def test_an_unreadable_member_root_fails_that_resource(public_dir: Path, workers: int) -> None:
    (public_dir / "alice").mkdir()
    write(public_dir / "alice" / "f", 5)
    (public_dir / "alice").chmod(0)

    items = run_unprivileged(lambda: scan(public_dir / "{member}", workers))

    assert items == [
        ResourceFailure(
            "alice", "tree", "alice", f"cannot read {public_dir}/alice: Permission denied"
        )
    ]


@pytest.mark.parametrize("mode", [0o311, 0o744], ids=["not-listable", "not-searchable"])
def test_a_partly_readable_directory_fails_too(public_dir: Path, mode: int) -> None:
    (public_dir / "alice" / "odd" / "sub").mkdir(parents=True)
    write(public_dir / "alice" / "odd" / "f", 5)
    (public_dir / "alice" / "odd").chmod(mode)

    items = run_unprivileged(lambda: scan(public_dir / "{member}"))

    assert [item.error for item in items if isinstance(item, ResourceFailure)] == [
        f"cannot read {public_dir}/alice/odd: Permission denied"
    ]


def test_measure_tree_raises_naming_the_directory(public_dir: Path) -> None:
    make_unreadable_homes(public_dir)

    def attempt() -> tuple[int, str, str]:
        try:
            measure_tree(public_dir / "alice")
        except UnreadableDirectory as exc:
            return exc.errno or 0, str(exc.filename), str(exc)
        raise AssertionError("no error")

    err, filename, message = run_unprivileged(attempt)

    assert (err, filename) == (13, f"{public_dir}/alice/private")
    assert message == f"cannot read {public_dir}/alice/private: Permission denied"


def test_measure_tree_of_a_missing_root(tmp_path: Path) -> None:
    with pytest.raises(UnreadableDirectory) as caught:
        measure_tree(tmp_path / "gone")
    assert caught.value.errno == 2
    assert str(caught.value) == f"cannot read {tmp_path}/gone: No such file or directory"
    assert measure_tree(tmp_path) == (0, 0)


def test_a_member_directory_that_vanishes_before_measuring_is_no_resource(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    (tmp_path / "bob").mkdir()
    scanner = TreeScanner.from_options(
        "homes", {"path": f"{tmp_path}/{{member}}", "workers": workers}, Path()
    )
    listed = scanner.pattern.expand()

    class Stale:
        def expand(self) -> list[tuple[str, Path]]:
            return [("alice", tmp_path / "alice"), *listed]

    monkeypatch.setattr(scanner, "pattern", Stale())

    assert measured(list(scanner.scan())) == {"bob": ("bob", 0, 0)}


def test_the_walk_stays_on_the_roots_filesystem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    need_root("mounting a tmpfs")
    # Every directory its own pool task: the mount point is then opened by a
    # task of its own, not only met by the walk.
    monkeypatch.setattr(tree, "_TASK_BUDGET", 1)
    alice = tmp_path / "homes" / "alice"
    (alice / "mnt").mkdir(parents=True)
    expected = write(alice / "on-root-fs", 31)
    placeholder = alice / "bind-target"
    expected_files = 1
    write(placeholder, 0)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    mounted: list[Path] = []
    try:
        for point in (alice / "mnt", elsewhere):
            subprocess.run(["mount", "-t", "tmpfs", "none", str(point)], check=True)
            mounted.append(point)
        write(alice / "mnt" / "on-tmpfs", 1_000_000)
        (alice / "mnt" / "sub").mkdir()
        write(alice / "mnt" / "sub" / "deeper", 5)
        # A single file bind-mounted from another filesystem.
        write(elsewhere / "bound", 2_000_000)
        subprocess.run(["mount", "--bind", str(elsewhere / "bound"), str(placeholder)], check=True)
        mounted.append(placeholder)

        listed: list[str] = []
        real_scandir = os.scandir

        def spying_scandir(target: int | Path) -> os._ScandirIterator[str]:
            if isinstance(target, int):
                listed.append(str(Path(f"/proc/self/fd/{target}").readlink()))
                return real_scandir(target)
            return real_scandir(str(target))

        if workers == 1:
            monkeypatch.setattr(os, "scandir", spying_scandir)
        items = scan(tmp_path / "homes" / "{member}", workers)
        monkeypatch.undo()
    finally:
        for point in reversed(mounted):
            subprocess.run(["umount", str(point)], check=True)

    assert measured(items) == {"alice": ("alice", expected, expected_files)}
    assert not [path for path in listed if "/mnt" in path]
    assert listed or workers != 1


def test_a_mount_is_not_even_entered(public_dir: Path, workers: int) -> None:
    need_root("mounting a tmpfs")
    alice = public_dir / "alice"
    (alice / "mnt").mkdir(parents=True)
    expected = write(alice / "f", 3)
    subprocess.run(["mount", "-t", "tmpfs", "none", str(alice / "mnt")], check=True)
    try:
        # Entering it would fail the measurement: nobody cannot read this.
        (alice / "mnt" / "closed").mkdir()
        (alice / "mnt").chmod(0o700)

        items = run_unprivileged(lambda: scan(public_dir / "{member}", workers))
    finally:
        subprocess.run(["umount", str(alice / "mnt")], check=True)

    assert measured(items) == {"alice": ("alice", expected, 1)}


@pytest.mark.parametrize("budget", [1, 4096], ids=["tiny-tasks", "big-tasks"])
def test_bind_mounts_inside_the_tree_count_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int, budget: int
) -> None:
    need_root("bind mounts")
    monkeypatch.setattr(tree, "_TASK_BUDGET", budget)
    alice = tmp_path / "alice"
    for directory in ("a/b", "c/d", "e/f", "loop"):
        (alice / directory).mkdir(parents=True)
    expected = write(alice / "a" / "b" / "data", 1000)
    expected += write(alice / "top", 1)
    for top in ("a", "c", "e"):
        for index in range(5):
            expected += write(alice / top / f"x{index}", 10)
    mounted: list[Path] = []
    try:
        # The same directory twice in the tree, and the tree inside itself.
        for source, target in ((alice / "a", alice / "e" / "f"), (alice, alice / "loop")):
            subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
            mounted.append(target)

        items = scan(tmp_path / "{member}", workers)
    finally:
        for point in reversed(mounted):
            subprocess.run(["umount", str(point)], check=True)

    assert measured(items) == {"alice": ("alice", expected, 17)}


def test_source_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=f"cannot list {tmp_path}/missing: No such file"):
        scan(tmp_path / "missing" / "{member}")
    write(tmp_path / "file", 1)
    with pytest.raises(SourceError, match="Not a directory"):
        scan(tmp_path / "file" / "{member}")


def test_an_unreadable_source_root_is_a_source_error(public_dir: Path) -> None:
    (public_dir / "homes" / "alice").mkdir(parents=True)
    (public_dir / "homes").chmod(0o700)

    def attempt() -> str:
        with pytest.raises(SourceError) as caught:
            scan(public_dir / "homes" / "{member}")
        return str(caught.value)

    assert run_unprivileged(attempt) == f"cannot list {public_dir}/homes: Permission denied"


@pytest.mark.parametrize(
    ("options", "key", "problem"),
    [
        ({}, "path", "is required"),
        ({"path": 7}, "path", "must be a string"),
        ({"path": "/srv/home"}, "path", "must contain {member} exactly once"),
        ({"path": "/srv/{member}/{member}"}, "path", "must contain {member} exactly once"),
        ({"path": "/{member}"}, "path", "first component"),
        ({"path": "/srv/{member}/{memebr}"}, "path", "unknown placeholder '{memebr}'"),
        ({"path": "/srv/{member}", "wokers": 2}, "wokers", "unknown key"),
        ({"path": "/srv/{member}", "workers": 0}, "workers", "must be between 1"),
        ({"path": "/srv/{member}", "workers": "2"}, "workers", "must be an integer"),
        ({"path": "/srv/{member}", "workers": True}, "workers", "must be an integer"),
    ],
)
def test_option_errors(options: dict[str, object], key: str, problem: str) -> None:
    with pytest.raises(OptionError) as caught:
        TreeScanner.from_options("homes", options, Path("/etc/quotad"))
    assert caught.value.key == key
    assert problem in caught.value.problem


def test_options(tmp_path: Path) -> None:
    scanner = TreeScanner.from_options("homes", {"path": "homes/{member}"}, tmp_path)
    assert scanner.name == "homes"
    assert (scanner.kind, scanner.resource_kind) == ("tree", "tree")
    assert scanner.pattern.parent == tmp_path / "homes"
    assert scanner.workers == (os.cpu_count() or 1)
    three = TreeScanner.from_options("h", {"path": "/a/{member}", "workers": 3}, tmp_path)
    assert three.workers == 3


def build_big_homes(root: Path) -> dict[str, tuple[str | None, int, int]]:
    """Several members, one much bigger and deeper, with hard links across subtrees."""
    expected: dict[str, tuple[str | None, int, int]] = {}
    for index, name in enumerate(("alice", "bob", "carol", "Dave")):
        home = root / name
        total = files = 0
        for top in range(3 + index * 4):
            for sub in range(index * 3 + 1):
                directory = home / f"t{top}" / f"s{sub}" / ("deep/" * (sub % 4)).rstrip("/")
                directory.mkdir(parents=True, exist_ok=True)
                for leaf in range(5):
                    total += write(directory / f"f{leaf}", top * 100 + sub * 10 + leaf)
                    files += 1
        # The same inode under several top-level directories, which the pool
        # walks in separate tasks: still once.
        total += write(home / "t0" / "linked", 4321)
        files += 1
        for top in range(1, 3):
            (home / f"t{top}" / "linked-again").hardlink_to(home / "t0" / "linked")
        expected[name] = (name if name.islower() else None, total, files)
    return expected


def test_pool_and_in_process_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = build_big_homes(tmp_path)
    # Tiny tasks, so that every tree is split across many of them.
    monkeypatch.setattr(tree, "_TASK_BUDGET", 7)
    monkeypatch.setattr(tree, "_TASK_DIRS", 2)

    one = scan(tmp_path / "{member}", workers=1)
    two = scan(tmp_path / "{member}", workers=2)
    three = scan(tmp_path / "{member}", workers=3)

    assert measured(one) == expected
    assert one == two == three


def test_a_threaded_process_uses_the_fork_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = build_big_homes(tmp_path)
    monkeypatch.setattr(tree, "_TASK_BUDGET", 50)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert tree._start_method() == "forkserver"
        items = scan(tmp_path / "{member}", workers=2)
    finally:
        stop.set()
        other.join()

    assert measured(items) == expected


def test_progress_reports_each_member_once(tmp_path: Path, workers: int) -> None:
    expected = build_big_homes(tmp_path)
    calls: list[tuple[str, int, int | None]] = []
    scanner = TreeScanner.from_options(
        "h", {"path": f"{tmp_path}/{{member}}", "workers": workers}, Path()
    )

    list(scanner.scan(lambda name, done, total: calls.append((name, done, total))))

    assert sorted(name for name, _, _ in calls) == sorted(expected)
    assert [(done, total) for _, done, total in calls] == [(i, 4) for i in range(1, 5)]


def test_deep_trees_need_few_descriptors_and_no_short_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    monkeypatch.setattr(tree, "_MAX_OPEN", 3)
    monkeypatch.setattr(tree, "_TASK_BUDGET", 20)
    home = tmp_path / "alice"
    home.mkdir()
    # 40 levels of 200-character names: paths far beyond PATH_MAX (4096),
    # and at every level a sibling, so every level stays pending.
    name = "n" * 200
    expected = files = 0
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(40):
            # Several siblings, so that whatever the readdir order, most
            # levels still have one pending while the walk goes deeper.
            for sibling in range(5):
                os.mkdir(f"sibling{sibling}", dir_fd=fd)
            leaf = os.open("sibling0/leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.write(leaf, b"z" * level)
            os.close(leaf)
            expected += level
            files += 1
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        bottom = os.open("bottom", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(bottom, b"b" * 1000)
        os.close(bottom)
        expected += 1000
        files += 1
    finally:
        os.close(fd)
    before = open_fds()
    most = [0]
    real_open = os.open

    def counting_open(*args: Any, **kwargs: Any) -> int:
        most[0] = max(most[0], len(open_fds() - before))
        return real_open(*args, **kwargs)

    monkeypatch.setattr(os, "open", counting_open)

    items = scan(tmp_path / "{member}", workers)

    assert measured(items) == {"alice": ("alice", expected, files)}
    assert open_fds() == before
    if workers == 1:
        # The cap, the walk's base and current directory, and scandir's own.
        assert 0 < most[0] <= 3 + 4


def test_no_descriptor_leaks_when_a_walk_fails(public_dir: Path) -> None:
    make_unreadable_homes(public_dir)

    def attempt() -> tuple[set[str], set[str]]:
        before = open_fds()
        scan(public_dir / "{member}")
        return before, open_fds()

    before, after = run_unprivileged(attempt)

    assert before == after


def test_stopping_early_leaves_nothing_running(tmp_path: Path) -> None:
    build_big_homes(tmp_path)
    scanner = TreeScanner.from_options(
        "h", {"path": f"{tmp_path}/{{member}}", "workers": 2}, Path()
    )
    items = scanner.scan()
    assert isinstance(items, Generator)
    first = next(items)
    items.close()

    assert first.name == "Dave"
    deadline = time.monotonic() + 30
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not multiprocessing.active_children()
