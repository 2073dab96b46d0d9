"""The `maildir` scanner against a real Dovecot 2.3: the same messages, byte for byte.

`detail["messages"]` and `detail["message_bytes"]` must equal what
`doveadm quota recalc` writes to `maildirsize` (Dovecot's Maildir++ quota
backend); `bytes` and `files` must equal GNU find's view of the same tree
(every regular file, each inode once). Dovecot is the only oracle for the
messages: where a test states a figure of its own, it is what this Dovecot
was seen to count, and the test checks Dovecot still counts it so.

`recalc` comes first in every comparison: Dovecot opens each folder while
recounting, so it rewrites index files (and may rename a folder) before the
scanner and find look at the tree.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from scanners.base import Measurement, ScanContext
from scanners.maildir import MaildirScanner
from tests.dovecot_server import DovecotError, DovecotServer, dovecot
from tests.helpers import find_sizes
from tests.maildirs import NON_UTF8_FOLDER, deliver, make_mailbox, message_dirs

__all__ = ["dovecot"]  # a fixture, used by name

pytestmark = pytest.mark.real

# As in test_maildir.py: coarser than the kernel's file timestamps, short
# enough to wait out, so that the incremental scan really uses its cache.
SETTLE_NS = 50_000_000


def settle() -> None:
    time.sleep(SETTLE_NS * 2 / 1e9)


def make_scanner(dovecot: DovecotServer, **options: object) -> MaildirScanner:
    pattern = f"{dovecot.mail_root}/{{member}}/Maildir"
    scanner = MaildirScanner.from_options("mail", {"path": pattern, **options}, Path())
    scanner.settle_ns = SETTLE_NS
    return scanner


@dataclass(frozen=True)
class Figures:
    """One mailbox as the scanner reports it."""

    bytes: int
    files: int
    messages: int
    message_bytes: int


def scan(
    scanner: MaildirScanner, users: list[str], state: Path | None = None, *, full: bool = True
) -> dict[str, Figures]:
    """USERS' mailboxes as SCANNER sees them (other tests' users share the mail root)."""
    result = {}
    for item in scanner.scan(None, ScanContext(full=full, state_dir=state)):
        if item.name not in users:
            continue
        assert isinstance(item, Measurement), item
        assert item.member == item.name
        messages, message_bytes = item.detail["messages"], item.detail["message_bytes"]
        assert isinstance(messages, int)
        assert isinstance(message_bytes, int)
        result[item.name] = Figures(item.bytes, item.files, messages, message_bytes)
    return result


def assert_equal_to_dovecot(
    dovecot: DovecotServer,
    scanner: MaildirScanner,
    users: list[str],
    state: Path | None = None,
    *,
    full: bool = True,
) -> dict[str, Figures]:
    """Recount USERS with Dovecot, scan, and compare every mailbox with Dovecot and find."""
    counted = {user: dovecot.recalc(user) for user in users}
    scanned = scan(scanner, users, state, full=full)
    on_disk = {user: find_sizes(dovecot.maildir(user)) for user in users}
    assert sorted(scanned) == sorted(users)
    for user in users:
        got = scanned[user]
        assert (got.message_bytes, got.messages) == counted[user], f"{user}: scanner vs Dovecot"
        assert (got.bytes, got.files) == on_disk[user], f"{user}: scanner vs find"
    return scanned


def write(path: Path, size: int) -> None:
    path.write_bytes(b"m" * size)


def add_edge_cases(box: Path) -> None:
    """Hand-made oddities, each counted by Dovecot as test_dovecot_counts_* shows."""
    write(box / "cur" / ".foo", 50)  # a hidden name in cur/
    write(box / "new" / "1733900001.M1P1.mx1,S=12x", 33)  # malformed ,S=: stat'ed
    for part in ("cur", "new", "tmp"):
        (box / ".Empty" / part).mkdir(parents=True)
    (box / ".Empty" / "maildirfolder").touch()
    for part in ("new", "tmp"):  # a folder without cur/
        (box / ".NoCur" / part).mkdir(parents=True)
    write(box / ".NoCur" / "new" / "1733900002.M2P1.mx1,S=77,W=79", 77)
    (box / "attachments").mkdir()  # not a folder: bytes only
    write(box / "attachments" / "blob", 1234)
    (box / "cur" / "1733900003.M3P1.mx1:2,S").symlink_to("../attachments/blob")
    (box / "cur" / "subdir").mkdir()
    write(box / "cur" / "subdir" / "inner", 66)


@pytest.mark.parametrize("workers", [1, 2], ids=["in-process", "pool"])
def test_generated_mailboxes_equal_dovecot(dovecot: DovecotServer, workers: int) -> None:
    rng = random.Random(workers)
    users = [f"full{workers}-{name}" for name in ("alice", "bob", "carol", "dave")]
    alice, bob, carol, dave = (dovecot.maildir(user) for user in users)
    make_mailbox(alice, rng, 400, lying_names=2, hardlinked_copies=3, tmp_leftovers=3)
    add_edge_cases(alice)
    make_mailbox(
        bob,
        rng,
        150,
        folders=("Sent", "Trash", "Junk", "Lists.dev.python"),
        no_size_fraction=0.3,
        large_fraction=0.02,
        index_files=False,
    )
    make_mailbox(carol, rng, 0, folders=())  # a new mailbox: nothing in it yet
    make_mailbox(dave, rng, 60, folders=("Trash",), no_size_fraction=1.0, hardlinked_copies=0)

    exact = assert_equal_to_dovecot(dovecot, make_scanner(dovecot, workers=workers), users)
    trusted = scan(make_scanner(dovecot, workers=workers, trust_filename_sizes=True), users)

    assert exact[users[2]].messages == 0
    assert all(figures.messages > 0 for name, figures in exact.items() if name != users[2])
    # Trusting names changes what is on disk, never the messages.
    for user in users:
        assert (trusted[user].messages, trusted[user].message_bytes) == (
            exact[user].messages,
            exact[user].message_bytes,
        )


def test_incremental_rescan_after_changes_equals_dovecot(
    dovecot: DovecotServer, tmp_path: Path
) -> None:
    rng = random.Random(7)
    users = ["incr-erin", "incr-frank"]
    erin, frank = (dovecot.maildir(user) for user in users)
    make_mailbox(erin, rng, 300, hardlinked_copies=1)
    add_edge_cases(erin)
    make_mailbox(frank, rng, 200)
    state = tmp_path / "state"
    scanner = make_scanner(dovecot)
    for user in users:  # Dovecot's first look rewrites the index files
        dovecot.recalc(user)
    settle()
    before = assert_equal_to_dovecot(dovecot, scanner, users, state=state, full=True)

    # A delivery, as an MDA makes it: into new/.
    delivered = deliver(erin / "new", rng, serial=1)
    # A client reads it: new/ -> cur/ with flags.
    delivered.rename(erin / "cur" / f"{delivered.name}:2,S")
    deliver(erin / "new", rng, serial=2)
    # Deleted outside Dovecot (a script, a shell).
    victim = min((erin / ".Sent" / "cur").iterdir())
    victim.unlink()
    # A folder made by a client.
    for part in ("cur", "new", "tmp"):
        (erin / ".Projects" / part).mkdir(parents=True)
    deliver(erin / ".Projects" / "cur", rng, serial=3)
    # A copy by hard link, as `doveadm copy` makes it, of a message in a folder
    # otherwise left alone: its directory does not change, its file does.
    source = next(
        path for path in sorted((erin / ".Drafts" / "cur").iterdir()) if ",S=" in path.name
    )
    os.link(
        source,
        erin / ".Archive.2025" / "cur" / f"1734000000.M9P9.mx1,{source.name.split(',', 1)[1]}",
    )
    # Dovecot itself deletes: expunge frank's Trash.
    dovecot.give_to_mail_user("incr-frank")
    dovecot.doveadm("expunge", "-u", "incr-frank", "mailbox", "Trash", "all")

    after = assert_equal_to_dovecot(dovecot, scanner, users, state=state, full=False)

    assert not scanner.last_full
    assert scanner.last_reused > 0, "the rescan listed every folder: the cache was not used"
    assert after[users[0]].messages == before[users[0]].messages + 2 + 1 + 1 - 1
    assert after[users[1]].messages < before[users[1]].messages
    assert after == scan(make_scanner(dovecot), users)  # and a full scan agrees


def test_a_folder_named_in_latin1_is_renamed_by_dovecot_then_counted(
    dovecot: DovecotServer,
) -> None:
    user = "latin1-grace"
    box = dovecot.maildir(user)
    make_mailbox(box, random.Random(3), 200, non_utf8_folder=True)
    folder_messages = sum(
        len(list(d.iterdir())) for d in message_dirs(box) if d.parent.name == NON_UTF8_FOLDER
    )
    assert folder_messages > 0
    scanner = make_scanner(dovecot)
    before = scan(scanner, [user])[user]

    # Observed with Dovecot 2.3.19: its first recount leaves the folder out
    # and renames it to the mUTF-7 form of "Bo\ufffdte"...
    first = dovecot.recalc(user)
    assert (box / ".Bo&,,0-te").is_dir()
    assert not (box / NON_UTF8_FOLDER).exists()
    # ...so that every later recount includes it.
    second = dovecot.recalc(user)
    assert second[1] == first[1] + folder_messages
    assert second[0] > first[0]

    # Each scan agrees with Dovecot's recount of the same tree.
    assert (before.message_bytes, before.messages) == first
    after = assert_equal_to_dovecot(dovecot, scanner, [user])[user]
    assert (after.message_bytes, after.messages) == second


@dataclass(frozen=True)
class Case:
    """One oddity in an otherwise plain mailbox, and what Dovecot counts for it."""

    build: Callable[[Path], object]
    # (bytes, messages) Dovecot adds for it; a callable when it depends on the filesystem.
    dovecot_adds: tuple[int, int] | Callable[[Path], tuple[int, int]]


def _folder(box: Path, name: str, parts: tuple[str, ...] = ("cur", "new", "tmp")) -> Path:
    folder = box / name
    for part in parts:
        (folder / part).mkdir(parents=True)
    return folder


PLAIN_MESSAGE = "1733900000.M0P1.mx1,S=100,W=102:2,S"
ODD_MESSAGE = "1733900001.M1P1.mx1:2,"  # no ,S=: Dovecot stats it


def message_in(
    folder: str, size: int = 99, parts: tuple[str, ...] = ("cur", "new", "tmp")
) -> Callable[[Path], None]:
    """A builder: FOLDER (with PARTS) holding one message of SIZE bytes in its first part."""

    def build(box: Path) -> None:
        write(_folder(box, folder, parts) / parts[0] / ODD_MESSAGE, size)

    return build


def _hard_link(box: Path) -> None:
    _folder(box, ".Archive")
    os.link(box / "cur" / PLAIN_MESSAGE, box / ".Archive" / "cur" / "1733900009.M9P1.mx1,S=100:2,S")


def _subdir(box: Path) -> None:
    (box / "cur" / "subdir").mkdir()
    write(box / "cur" / "subdir" / "inner", 66)


def _symlink(box: Path) -> None:
    (box / "store").mkdir()
    write(box / "store" / "blob", 500)
    (box / "cur" / "1733900006.M6P1.mx1:2,S").symlink_to("../store/blob")


def _symlinked_folder(box: Path) -> None:
    message_in("shared")(box.parent)  # beside the Maildir, in the user's home
    (box / ".Shared").symlink_to(box.parent / "shared")


def _symlinked_cur(box: Path) -> None:
    _folder(box, ".Lists", ("new", "tmp"))
    message_in("elsewhere")(box.parent)
    (box / ".Lists" / "cur").symlink_to(box.parent / "elsewhere" / "cur")


CASES = {
    "size-in-name": Case(
        lambda b: write(b / "cur" / "1733900001.M1P1.mx1,S=300,W=310:2,S", 300), (300, 1)
    ),
    "no-size-in-name": Case(lambda b: write(b / "new" / "1733900001.M1P1.mx1", 250), (250, 1)),
    "lying-size": Case(
        lambda b: write(b / "cur" / "1733900001.M1P1.mx1,S=100:2,S", 5000), (100, 1)
    ),
    "malformed-size": Case(
        lambda b: write(b / "cur" / "1733900001.M1P1.mx1,S=12x:2,S", 33), (33, 1)
    ),
    "empty-size": Case(lambda b: write(b / "cur" / "1733900001.M1P1.mx1,S=:2,S", 44), (0, 1)),
    "hidden-in-cur": Case(lambda b: write(b / "cur" / ".foo", 50), (50, 1)),
    "hidden-in-new": Case(lambda b: write(b / "new" / ".bar,S=70", 70), (70, 1)),
    "tmp-leftover": Case(lambda b: write(b / "tmp" / "1733900001.M1P1.mx1", 155), (0, 0)),
    "index-files": Case(lambda b: write(b / "dovecot.index.cache", 4000), (0, 0)),
    "trash": Case(message_in(".Trash", 144), (144, 1)),
    "hard-linked-copy": Case(_hard_link, (100, 1)),  # the copy counts again
    "symlink": Case(_symlink, (500, 1)),  # followed
    "dangling-symlink": Case(
        lambda b: (b / "cur" / ODD_MESSAGE).symlink_to("/nonexistent"), (0, 0)
    ),
    "directory-in-cur": Case(_subdir, lambda b: ((b / "cur" / "subdir").stat().st_size, 1)),
    "empty-folder": Case(lambda b: _folder(b, ".Empty"), (0, 0)),
    "folder-without-cur": Case(message_in(".NoCur", 77, ("new", "tmp")), (77, 1)),
    "folder-without-new": Case(message_in(".OnlyCur", 88, ("cur",)), (88, 1)),
    "nested-folder": Case(message_in(".Lists.dev.python"), (99, 1)),
    "folder-with-space": Case(message_in(". Space"), (99, 1)),
    "folder-ending-in-dot": Case(message_in(".Bar."), (99, 1)),
    "folder-with-empty-level": Case(message_in(".A..B"), (99, 1)),
    "not-a-folder": Case(message_in("backup"), (0, 0)),
    "mutf7-folder": Case(message_in(".&AOk-t&AOk-"), (99, 1)),  # "été" as Dovecot stores it
    # Dovecot follows symbolic links to folders and to cur/ (quotad's bytes never do).
    "symlinked-folder": Case(_symlinked_folder, (99, 1)),
    "symlinked-cur": Case(_symlinked_cur, (99, 1)),
    # Dovecot maps a folder name to its directory through modified UTF-7: a
    # name that does not survive the round trip is listed, then looked for
    # under another name, and never counted. Seen with 2.3.19.
    "utf8-folder": Case(message_in(".Café"), (0, 0)),
    "ampersand-folder": Case(message_in(".AT&T"), (0, 0)),  # Dovecot would store ".AT&-T"
    "non-canonical-mutf7-folder": Case(message_in(".&AGE-"), (0, 0)),  # "a", encoded
    "control-character-folder": Case(message_in(".tab\tname"), (0, 0)),
    # INBOX is the Maildir itself, in any case; ".INBOX" is never looked at.
    "folder-named-inbox": Case(message_in(".INBOX"), (0, 0)),
    "folder-named-inbox-lower": Case(message_in(".inbox"), (0, 0)),
    "folder-below-inbox": Case(message_in(".Inbox.Sub"), (0, 0)),
    # "..Foo" is folder ".Foo" below a folder "" whose directory is the
    # Maildir itself: Dovecot counts the folder, and INBOX a second time.
    "folder-name-starting-with-dot": Case(message_in("..Foo"), (99 + 100, 2)),
}


# Where quotad parts from Dovecot on purpose (README, "What a measurement
# means"): it never follows a symbolic link to a folder or to cur/, which a
# member could point at someone else's mail. Strict: the day they agree, say so.
DIFFERENT_ON_PURPOSE = {"symlinked-folder", "symlinked-cur"}


@pytest.mark.parametrize(
    ("name", "case"),
    [
        pytest.param(
            name,
            case,
            id=name,
            marks=[
                pytest.mark.xfail(
                    strict=True,
                    reason="quotad does not follow links to folders",
                    raises=AssertionError,
                )
            ]
            if name in DIFFERENT_ON_PURPOSE
            else [],
        )
        for name, case in CASES.items()
    ],
)
def test_dovecot_counts_each_oddity_and_the_scanner_agrees(
    dovecot: DovecotServer, name: str, case: Case
) -> None:
    user = f"odd-{name}"
    box = dovecot.maildir(user)
    for part in ("cur", "new", "tmp"):
        (box / part).mkdir(parents=True)
    write(box / "cur" / PLAIN_MESSAGE, 100)
    case.build(box)
    adds = case.dovecot_adds if isinstance(case.dovecot_adds, tuple) else case.dovecot_adds(box)

    assert dovecot.recalc(user) == (100 + adds[0], 1 + adds[1]), "Dovecot counts differently now"
    assert_equal_to_dovecot(dovecot, make_scanner(dovecot), [user])


def test_a_file_where_new_should_be_stops_dovecots_recount(dovecot: DovecotServer) -> None:
    user = "odd-new-is-a-file"
    box = dovecot.maildir(user)
    _folder(box, "", ("cur", "new", "tmp"))
    write(box / "cur" / PLAIN_MESSAGE, 100)
    _folder(box, ".Sent", ("cur", "tmp"))
    write(box / ".Sent" / "new", 20)

    # Observed with 2.3.19: doveadm exits 0, says "opendir(.../.Sent/new) failed:
    # Not a directory" and writes no maildirsize, so Dovecot's figure stays stale.
    with pytest.raises(DovecotError, match="Not a directory"):
        dovecot.recalc(user)
    # The scanner still measures the mailbox: the stray file is bytes, not a message.
    got = scan(make_scanner(dovecot), [user])[user]
    assert (got.bytes, got.files) == find_sizes(box)
    assert (got.messages, got.message_bytes) == (1, 100)
