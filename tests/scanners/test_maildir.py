"""The `maildir` scanner: exact sizes, Dovecot's message count, and incremental rescans.

Expected figures come from the bytes each test writes, or from a full scan
by a scanner that keeps no cache, never from the incremental path itself.
What Dovecot itself counts is checked against a real Dovecot elsewhere
(test_maildir_dovecot.py).
"""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scanners.base import Measurement, OptionError, ResourceFailure, ScanContext, ScanItem
from scanners.maildir import MaildirScanner, _named_sizes, dovecot_lists, message_size
from tests.helpers import find_sizes
from tests.scanners.support import make_dir, public_dir, run_unprivileged, workers, write

__all__ = ["public_dir", "workers"]  # fixtures, used by name

# Short enough for tests to wait out between rounds, long enough to be
# coarser than the kernel's file timestamps (a jiffy).
SETTLE_NS = 50_000_000


def scanner(root: Path, workers: int = 1, **options: object) -> MaildirScanner:
    pattern = f"{root}/{{member}}/Maildir"
    result = MaildirScanner.from_options(
        "mail", {"path": pattern, "workers": workers, **options}, Path()
    )
    result.settle_ns = SETTLE_NS
    return result


def scan(
    source: MaildirScanner, state: Path | None = None, *, full: bool = False
) -> dict[str, tuple[str | None, int, int, int, int]]:
    """Name -> (member, bytes, files, messages, message_bytes), asserting nothing failed."""
    items: list[ScanItem] = list(source.scan(None, ScanContext(full=full, state_dir=state)))
    result = {}
    for item in items:
        assert isinstance(item, Measurement), item
        assert item.kind == "maildir"
        result[item.name] = (
            item.member,
            item.bytes,
            item.files,
            int(item.detail["messages"]),
            int(item.detail["message_bytes"]),
        )
    return result


def settle() -> None:
    """Let every change so far become old enough to be remembered."""
    time.sleep(SETTLE_NS * 2 / 1e9)


def new_maildir(path: Path, folders: tuple[str, ...] = (".Sent", ".Trash")) -> Path:
    for folder in ("", *folders):
        for sub in ("cur", "new", "tmp"):
            (path / folder / sub).mkdir(parents=True, exist_ok=True)
    return path


class Mailbox:
    """A Maildir++ mailbox that counts, as it writes, what Dovecot should count."""

    def __init__(self, path: Path, rng: random.Random) -> None:
        self.path = new_maildir(path)
        self.rng = rng
        self.serial = 0

    def folders(self) -> list[Path]:
        found = [self.path]
        found += [p for p in self.path.iterdir() if p.name.startswith(".") and p.is_dir()]
        return sorted(found)

    def message_name(self, size: int, *, with_size: bool = True) -> str:
        self.serial += 1
        base = f"{1700000000 + self.serial}.M{self.serial}P{os.getpid()}.host"
        return f"{base},S={size},W={size + 20}" if with_size else base

    def deliver(self, folder: Path | None = None) -> None:
        """Write into tmp/, then move into new/, as a delivery agent does."""
        folder = folder or self.rng.choice(self.folders())
        size = int(self.rng.lognormvariate(8.5, 1.0))
        name = self.message_name(size, with_size=self.rng.random() > 0.1)
        write(folder / "tmp" / name, size)
        (folder / "tmp" / name).rename(folder / "new" / name)

    def messages(self, sub: str) -> list[Path]:
        return [p for folder in self.folders() for p in (folder / sub).glob("*") if p.is_file()]

    def see(self) -> None:
        """Move a message from new/ to cur/ with flags, as an IMAP client's first look does."""
        new = self.messages("new")
        if new:
            message = self.rng.choice(new)
            message.rename(message.parent.parent / "cur" / f"{message.name}:2,S")

    def flag(self) -> None:
        cur = self.messages("cur")
        if cur:
            message = self.rng.choice(cur)
            stem = message.name.split(":2,", 1)[0]
            flags = "".join(sorted(self.rng.sample("DFRST", self.rng.randint(0, 3))))
            message.rename(message.with_name(f"{stem}:2,{flags}"))

    def expunge(self) -> None:
        every = self.messages("cur") + self.messages("new")
        if every:
            self.rng.choice(every).unlink()

    def copy(self) -> None:
        """Hard-link a message into another folder, as `doveadm copy` does."""
        every = self.messages("cur")
        if every:
            source = self.rng.choice(every)
            target = self.rng.choice(self.folders()) / "cur"
            os.link(source, target / self.message_name(0, with_size=False))

    def add_folder(self) -> None:
        self.serial += 1
        new_maildir(self.path, (f".Folder{self.serial}",))

    def remove_folder(self) -> None:
        extra = [p for p in self.folders() if p.name.startswith(".Folder")]
        if extra:
            shutil.rmtree(self.rng.choice(extra))

    def grow_index(self) -> None:
        """Dovecot's index files change in place, without touching the directory."""
        with (self.path / "dovecot.index.log").open("ab") as handle:
            handle.write(b"i" * self.rng.randint(1, 5000))

    def leave_in_tmp(self) -> None:
        folder = self.rng.choice(self.folders())
        write(folder / "tmp" / self.message_name(0, with_size=False), self.rng.randint(0, 9000))

    def change(self) -> None:
        action = self.rng.choice(
            [
                self.deliver,
                self.deliver,
                self.see,
                self.flag,
                self.expunge,
                self.copy,
                self.add_folder,
                self.remove_folder,
                self.grow_index,
                self.leave_in_tmp,
            ]
        )
        action()


def test_message_size_follows_dovecots_parser() -> None:
    assert message_size("1.M2P3.host,S=1234,W=1260:2,S") == 1234
    assert message_size("1.M2P3.host,S=1234") == 1234
    assert message_size("1.M2P3.host,S=1234:2,") == 1234
    assert message_size("1.M2P3.host,S=:2,") == 0
    assert message_size("1.M2P3.host") == -1
    assert message_size("1.M2P3.host,S=12x,W=1") == -1  # not a number: Dovecot stats the file
    assert message_size("1.M2P3.host,W=5,S=77") == 77


@given(
    st.lists(
        st.text(alphabet=st.sampled_from(list("0123456789,S=:W.\n\u0663x")), max_size=20).map(
            lambda tail: "1.M2P3.h,S=" + tail
        ),
        max_size=8,
    )
)
def test_names_read_all_at_once_agree_with_one_by_one(names: list[str]) -> None:
    sizes, unsized = _named_sizes(names)
    assert sizes == [message_size(n) for n in names if message_size(n) >= 0]
    assert unsized == [n for n in names if message_size(n) < 0]


def test_exact_sizes_and_dovecots_message_count(tmp_path: Path, workers: int) -> None:
    box = new_maildir(tmp_path / "alice" / "Maildir", (".Sent", ".Trash", ".Lists.dev"))
    messages = 0
    message_bytes = 0
    for folder, sub, name, real, counted in [
        ("", "cur", "1.M1P1.h,S=500,W=510:2,S", 500, 500),
        ("", "new", "2.M2P1.h,S=300,W=310", 300, 300),
        (".Sent", "cur", "3.M3P1.h:2,S", 777, 777),  # no ,S=: the file's size
        (".Trash", "cur", "4.M4P1.h,S=100:2,ST", 5000, 100),  # the name wins, as in Dovecot
        (".Lists.dev", "new", "5.M5P1.h,S=12x", 90, 90),  # malformed: the file's size
    ]:
        write(box / folder / sub / name, real)
        messages += 1
        message_bytes += counted
    # Neither tmp/ nor Dovecot's own files are messages, but they are bytes.
    write(box / "tmp" / "6.M6P1.h,S=999", 999)
    write(box / "dovecot.index.cache", 4096)
    write(box / "dovecot-uidlist", 120)
    write(box / ".Sent" / "dovecot.index", 640)
    # A copy hard-linked into another folder: two messages, one file.
    os.link(box / "cur" / "1.M1P1.h,S=500,W=510:2,S", box / ".Sent" / "cur" / "7.M7P1.h,S=500:2,")
    messages += 1
    message_bytes += 500
    # A directory that is not a Maildir++ folder: bytes only.
    (box / "attachments").mkdir()
    write(box / "attachments" / "big", 12345)

    result = scan(scanner(tmp_path, workers))

    size, files = find_sizes(box)
    assert result == {"alice": ("alice", size, files, messages, message_bytes)}


def test_trusted_names_give_bytes_without_stat(tmp_path: Path) -> None:
    box = new_maildir(tmp_path / "bob" / "Maildir")
    write(box / "cur" / "1.M1P1.h,S=100:2,S", 5000)  # a name that lies
    write(box / "cur" / "2.M2P1.h:2,S", 70)
    write(box / "tmp" / "3.M3P1.h,S=9", 40)  # tmp/ is never trusted
    write(box / "dovecot.index", 30)

    trusted = scan(scanner(tmp_path, trust_filename_sizes=True))
    exact = scan(scanner(tmp_path))

    assert trusted == {"bob": ("bob", 100 + 70 + 40 + 30, 4, 2, 170)}
    assert exact == {"bob": ("bob", 5000 + 70 + 40 + 30, 4, 2, 170)}


def test_folder_names_as_dovecot_reads_them(tmp_path: Path) -> None:
    box = new_maildir(tmp_path / "carol" / "Maildir")
    # "Entwürfe" as Dovecot stores it (modified UTF-7): a folder it counts.
    new_maildir(box, (".Entw&APw-rfe",))
    write(box / ".Entw&APw-rfe" / "cur" / "1.M1P1.h,S=100:2,S", 100)
    # The same name in raw UTF-8, and in Latin-1 bytes: not names Dovecot
    # stores, so their messages are not in its quota; their bytes are ours.
    new_maildir(box, (".Entwürfe",))
    write(box / ".Entwürfe" / "cur" / "2.M2P1.h,S=20:2,S", 20)
    folder = os.fsencode(box) + b"/.Entw\xfcrfe"
    for sub in (b"", b"/cur", b"/new", b"/tmp"):
        make_dir(folder + sub)
    write(folder + b"/cur/3.M3P1.h\xff,S=321:2,S", 321)
    state = tmp_path / "state"

    first = scan(scanner(tmp_path), state)
    settle()
    again = scan(scanner(tmp_path), state)

    assert first == again == {"carol": ("carol", 441, 3, 1, 100)}


@pytest.mark.parametrize(
    ("folder", "counted"),
    [
        ("Sent", True),
        ("Lists.dev", True),
        ("a&-b", True),  # "a&b"
        ("&ZeVnLIqe-", True),  # "日本語"
        ("a&b", False),  # a bare "&"
        ("&AGE-", False),  # "a", but not as it is written
        ("Entwürfe", False),
        ("caf\udce9", False),  # Latin-1 bytes
    ],
)
def test_which_folders_dovecot_lists(folder: str, counted: bool) -> None:
    assert dovecot_lists(folder) is counted


def test_unattributed_and_missing_maildirs(tmp_path: Path) -> None:
    new_maildir(tmp_path / "Dave" / "Maildir")
    write(tmp_path / "Dave" / "Maildir" / "cur" / "1,S=5", 5)
    (tmp_path / "erin").mkdir()  # no Maildir yet: no resource

    assert scan(scanner(tmp_path)) == {"Dave": (None, 5, 1, 1, 5)}


def test_an_unreadable_directory_fails_that_member_naming_it(
    public_dir: Path, workers: int
) -> None:
    box = new_maildir(public_dir / "alice" / "Maildir")
    write(box / ".Sent" / "cur" / "1,S=5", 5)
    (box / ".Sent" / "cur").chmod(0)
    new_maildir(public_dir / "bob" / "Maildir")
    write(public_dir / "bob" / "Maildir" / "new" / "2,S=7", 7)

    items = run_unprivileged(lambda: list(scanner(public_dir, workers).scan()))

    alice, bob = items
    assert isinstance(alice, ResourceFailure)
    assert alice.error == f"cannot read {box}/.Sent/cur: Permission denied"
    assert isinstance(bob, Measurement)
    assert (bob.bytes, bob.detail) == (7, {"messages": 1, "message_bytes": 7})


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_incremental_equals_full_under_random_change(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    root = tmp_path / "mail"
    boxes = [Mailbox(root / name / "Maildir", rng) for name in ("alice", "bob", "carol")]
    for box in boxes:
        for _ in range(40):
            box.deliver()
        for _ in range(20):
            box.see()
    state = tmp_path / "state"
    incremental = scanner(root, workers=2)
    scan(incremental, state)
    reused = 0
    for round_number in range(25):
        settle()
        for _ in range(rng.randint(0, 6)):
            rng.choice(boxes).change()
        got = scan(incremental, state)
        assert not incremental.last_full
        reused += incremental.last_reused
        expected = scan(scanner(root))  # no cache at all
        assert got == expected, f"round {round_number}"
        for name, (_, size, files, _, _) in got.items():
            assert (size, files) == find_sizes(root / name / "Maildir")
    # Most directories were taken from the cache, or this tested nothing.
    assert reused > 25 * len(boxes) * 3


def test_changes_within_the_settle_time_are_never_missed(tmp_path: Path) -> None:
    box = new_maildir(tmp_path / "alice" / "Maildir")
    write(box / "cur" / "1,S=10:2,", 10)
    state = tmp_path / "state"
    source = scanner(tmp_path)
    source.settle_ns = 10 * 1_000_000_000
    scan(source, state)
    # A second change right after the listing may leave the directory's
    # times as they were; the scanner must not have remembered it.
    write(box / "cur" / "2,S=20:2,", 20)
    assert scan(source, state) == {"alice": ("alice", 30, 2, 2, 30)}
    assert source.last_reused == 0


def test_a_file_gaining_a_link_in_another_folder_counts_once(tmp_path: Path) -> None:
    box = new_maildir(tmp_path / "alice" / "Maildir")
    write(box / "cur" / "1,S=100:2,", 100)
    write(box / ".Sent" / "cur" / "2,S=200:2,", 200)
    state = tmp_path / "state"
    source = scanner(tmp_path)
    settle()
    scan(source, state)
    settle()
    # The old name's directory does not change; only the new one's does.
    os.link(box / "cur" / "1,S=100:2,", box / ".Trash" / "cur" / "3,S=100:2,")

    assert scan(source, state) == {"alice": ("alice", 300, 2, 3, 400)}
    assert source.last_reused > 0


def test_the_cache_is_used_rebuilt_and_never_believed_blindly(tmp_path: Path) -> None:
    box = new_maildir(tmp_path / "alice" / "Maildir")
    write(box / "cur" / "1,S=10:2,", 10)
    state = tmp_path / "state"
    source = scanner(tmp_path)
    expected = {"alice": ("alice", 10, 1, 1, 10)}
    settle()
    assert scan(source, state) == expected
    assert source.last_full
    cache = state / "maildir.cache"
    assert cache.is_file()
    settle()
    assert scan(source, state) == expected
    assert (source.last_full, source.last_reused) == (False, 6)

    # Damaged: one flipped byte.
    data = bytearray(cache.read_bytes())
    data[-3] ^= 0xFF
    cache.write_bytes(bytes(data))
    assert scan(source, state) == expected
    assert source.last_full

    # Foreign: another source's cache, of another tree, copied over ours.
    other = tmp_path / "other"
    new_maildir(other / "alice" / "Maildir")
    foreign = MaildirScanner.from_options("lists", {"path": f"{other}/{{member}}/Maildir"}, Path())
    scan(foreign, tmp_path / "other-state")
    shutil.copy(tmp_path / "other-state" / "maildir.cache", cache)
    assert scan(source, state) == expected
    assert source.last_full

    # Garbage and a deleted cache cost only time.
    cache.write_bytes(b"\x00" * 100)
    assert scan(source, state) == expected
    cache.unlink()
    assert scan(source, state) == expected
    assert source.last_full

    # --full ignores it.
    settle()
    assert scan(source, state, full=True) == expected
    assert (source.last_full, source.last_reused) == (True, 0)


def test_a_periodic_full_rescan(tmp_path: Path) -> None:
    new_maildir(tmp_path / "alice" / "Maildir")
    state = tmp_path / "state"
    source = scanner(tmp_path, full_every="1h")
    scan(source, state)
    settle()
    scan(source, state)
    assert not source.last_full
    later = time.time_ns() + 3601 * 1_000_000_000
    source.clock = lambda: later
    scan(source, state)
    assert source.last_full


def test_without_a_state_folder_every_scan_is_full(tmp_path: Path) -> None:
    new_maildir(tmp_path / "alice" / "Maildir")
    source = scanner(tmp_path)
    scan(source)
    settle()
    scan(source)
    assert source.last_full


@pytest.mark.parametrize(
    ("options", "key", "problem"),
    [
        ({"trust_filename_sizes": "yes"}, "trust_filename_sizes", "must be true or false"),
        ({"full_every": "often"}, "full_every", "not a duration"),
        ({"path": "/srv/mail/Maildir"}, "path", "{member}"),
        ({"sizes": 1}, "sizes", "unknown key"),
    ],
)
def test_option_errors(options: dict[str, object], key: str, problem: str) -> None:
    with pytest.raises(OptionError) as caught:
        MaildirScanner.from_options(
            "mail", {"path": "/srv/mail/{member}/Maildir", **options}, Path()
        )
    assert caught.value.key == key
    assert problem in caught.value.problem


def test_a_restored_mtime_does_not_hide_a_change(tmp_path: Path) -> None:
    box = new_maildir(tmp_path / "alice" / "Maildir")
    write(box / "cur" / "1,S=10:2,", 10)
    state = tmp_path / "state"
    source = scanner(tmp_path)
    settle()
    scan(source, state)
    before = (box / "cur").stat()
    settle()
    # What `rsync -a` or a restore from backup does: new contents, old mtime.
    write(box / "cur" / "2,S=20:2,", 20)
    os.utime(box / "cur", ns=(before.st_atime_ns, before.st_mtime_ns))

    assert scan(source, state) == {"alice": ("alice", 30, 2, 2, 30)}


def test_members_come_in_order_with_progress_once_each(tmp_path: Path, workers: int) -> None:
    names = [f"m{index:02d}" for index in range(13)]
    for index, name in enumerate(names):
        box = new_maildir(tmp_path / name / "Maildir")
        write(box / "cur" / f"1,S={index}:2,", index)
    seen: list[tuple[str, int, int | None]] = []
    source = scanner(tmp_path, workers)

    items = list(source.scan(lambda what, done, total: seen.append((what, done, total))))

    assert [item.name for item in items] == names
    assert [(i.bytes, i.detail["message_bytes"]) for i in items if isinstance(i, Measurement)] == [
        (index, index) for index in range(13)
    ]
    assert seen == [(name, done, 13) for done, name in enumerate(names, 1)]
