"""Deterministic Maildir++ mailboxes, laid out as Dovecot 2.3 leaves them.

Used by the Dovecot contract tests and by bench/maildir_scan.py. Nothing here
computes an expected size: the oracles are Dovecot itself (message counts and
bytes) and GNU find (bytes and files on disk).

Layout of one mailbox at ROOT: `cur/`, `new/`, `tmp/` for INBOX and a
`.Folder/` with the same three for every other folder (Maildir++ nests with
dots: `.Archive.2025`). Message names are Dovecot's:
`1733000000.M123456P4567.mx1,S=<size>,W=<size + lines>:2,<flags>` in `cur/`,
the same without `:2,...` in `new/`.
"""

from __future__ import annotations

import functools
import math
import os
import random
from pathlib import Path

DEFAULT_FOLDERS = ("Sent", "Drafts", "Trash", "Archive.2025", "Lists.dev")
# A Latin-1 folder name ("Boîte" with a raw 0xEE byte): not UTF-8, not mUTF-7.
NON_UTF8_FOLDER = os.fsdecode(b".Bo\xeete")
HOST = "mx1.example.org"
FIRST_TIME = 1_733_000_000
MEDIAN_SIZE = 5_000
SMALLEST = 300
LARGE_MIN = 1 << 20
LARGE_MAX = 5 << 20
CUR_FLAGS = ("S", "S", "S", "RS", "FS", "", "ST")
# Dovecot's own files and typical sizes: they are on disk (so in `bytes`)
# but never messages.
INDEX_FILES = {
    "dovecot.index": 2_048,
    "dovecot.index.cache": 18_000,
    "dovecot.index.log": 9_000,
    "dovecot-uidlist": 0,  # written with one line per message instead
}
HEADER = (
    b"Return-Path: <sender@example.net>\n"
    b"From: Sender <sender@example.net>\n"
    b"To: member@example.org\n"
    b"Subject: generated\n"
    b"Message-ID: <%d@example.net>\n"
    b"\n"
)
LINE = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tem\n"


@functools.cache
def _body() -> bytes:
    """Text for the largest message, made once: every message body is a prefix of it."""
    return LINE * (LARGE_MAX // len(LINE) + 2)


def message_bytes(serial: int, size: int) -> bytes:
    """A plausible RFC 5322 message of exactly SIZE bytes (at least the header's length)."""
    header = HEADER % serial
    if size <= len(header):
        return header[:size]
    return header + _body()[: size - len(header)]


class Namer:
    """Unique Dovecot-style base names: the time part only ever grows."""

    def __init__(self, rng: random.Random, start: int = FIRST_TIME) -> None:
        self.rng = rng
        self.time = start

    def base(self) -> str:
        self.time += 1 + self.rng.randrange(60)
        usec = self.rng.randrange(1_000_000)
        pid = self.rng.randrange(100, 65_536)
        return f"{self.time}.M{usec}P{pid}.{HOST}"


def message_name(base: str, size: int, lines: int, *, in_cur: bool, flags: str, sized: bool) -> str:
    """BASE with Dovecot's `,S=` and `,W=` (unless not SIZED) and, in `cur/`, the flags."""
    name = f"{base},S={size},W={size + lines}" if sized else base
    return f"{name}:2,{flags}" if in_cur else name


def write_message(
    directory: Path,
    rng: random.Random,
    namer: Namer,
    size: int,
    *,
    sized: bool = True,
    named_size: int | None = None,
    flags: str | None = None,
) -> Path:
    """Write one message of SIZE bytes into DIRECTORY (`cur/` or `new/`); return its path.

    NAMED_SIZE, when given, is the size the name claims (a name that lies).
    """
    in_cur = directory.name == "cur"
    if flags is None:
        flags = rng.choice(CUR_FLAGS)
    content = message_bytes(namer.time, size)
    lines = content.count(b"\n")
    claimed = size if named_size is None else named_size
    name = message_name(namer.base(), claimed, lines, in_cur=in_cur, flags=flags, sized=sized)
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, content)
    finally:
        os.close(fd)
    return path


def message_size(rng: random.Random, large_fraction: float) -> int:
    """Lognormal around MEDIAN_SIZE, or a 1-5 MiB attachment with LARGE_FRACTION."""
    if rng.random() < large_fraction:
        return rng.randint(LARGE_MIN, LARGE_MAX)
    return max(SMALLEST, int(rng.lognormvariate(math.log(MEDIAN_SIZE), 0.9)))


def make_folder(path: Path, *, subfolder: bool) -> None:
    """PATH with `cur/`, `new/`, `tmp/`, and Dovecot's `maildirfolder` marker in a subfolder."""
    for part in ("cur", "new", "tmp"):
        (path / part).mkdir(parents=True, exist_ok=True, mode=0o700)
    if subfolder:
        (path / "maildirfolder").touch()


def make_mailbox(
    root: Path,
    rng: random.Random,
    messages: int,
    *,
    folders: tuple[str, ...] = DEFAULT_FOLDERS,
    no_size_fraction: float = 0.02,
    large_fraction: float = 0.002,
    hardlinked_copies: int = 1,
    tmp_leftovers: int = 1,
    index_files: bool = True,
    non_utf8_folder: bool = False,
    lying_names: int = 0,
) -> None:
    """Write a Maildir++ mailbox at ROOT with MESSAGES messages spread over its folders.

    About half the messages are in INBOX, one in ten in `new/`. NO_SIZE_FRACTION
    of the names lack `,S=` (Dovecot then stats the file); LYING_NAMES names
    claim a `,S=` other than the file's size (Dovecot believes the name).
    HARDLINKED_COPIES messages get a second name in another folder, as
    `doveadm copy` makes them. TMP_LEFTOVERS files sit in `tmp/`, as a
    crashed delivery leaves them.
    """
    namer = Namer(rng)
    dirs = [root]
    make_folder(root, subfolder=False)
    names = [f".{folder}" for folder in folders]
    if non_utf8_folder:
        names.append(NON_UTF8_FOLDER)
    for name in names:
        dirs.append(root / name)
        make_folder(dirs[-1], subfolder=True)

    written: dict[Path, list[str]] = {d: [] for d in dirs}
    for _ in range(messages):
        folder = dirs[0] if len(dirs) == 1 or rng.random() < 0.5 else rng.choice(dirs[1:])
        part = "new" if rng.random() < 0.1 else "cur"
        sized = rng.random() >= no_size_fraction
        path = write_message(
            folder / part, rng, namer, message_size(rng, large_fraction), sized=sized
        )
        written[folder].append(f"{part}/{path.name}")

    for _ in range(lying_names):
        size = message_size(rng, 0.0)
        path = write_message(root / "cur", rng, namer, size, named_size=size // 3 + 1)
        written[root].append(f"cur/{path.name}")

    if len(dirs) > 1:
        for _ in range(hardlinked_copies):
            copy_by_link(written, rng, namer)

    for i in range(tmp_leftovers):
        content = message_bytes(i, message_size(rng, 0.0))
        (dirs[i % len(dirs)] / "tmp" / namer.base()).write_bytes(content)

    if index_files:
        write_index_files(root, written, folders, rng)


def copy_by_link(written: dict[Path, list[str]], rng: random.Random, namer: Namer) -> None:
    """Give one written message a second name in another folder's `cur/`, as `doveadm copy` does."""
    candidates = [(folder, name) for folder, names in written.items() for name in names]
    if not candidates:
        return
    source, name = rng.choice(candidates)
    target = rng.choice([folder for folder in written if folder != source])
    # Dovecot's hard-link copy keeps the size parts and makes a new base.
    old = name.split("/", 1)[1]
    cut = min((i for i in (old.find(","), old.find(":")) if i >= 0), default=len(old))
    new_name = namer.base() + old[cut:]
    if ":2," not in new_name:
        new_name += ":2,S"
    os.link(source / name, target / "cur" / new_name)


def write_index_files(
    root: Path, written: dict[Path, list[str]], folders: tuple[str, ...], rng: random.Random
) -> None:
    """Dovecot's index and list files, as a mailbox that has been used over IMAP has them."""
    for folder, names in written.items():
        for index_name, size in INDEX_FILES.items():
            if index_name == "dovecot-uidlist":
                (folder / index_name).write_text(uidlist(names, rng), encoding="ascii")
            else:
                (folder / index_name).write_bytes(rng.randbytes(size + rng.randrange(size)))
    (root / "dovecot-keywords").write_bytes(b"0 $Junk\n1 $NotJunk\n")
    (root / "subscriptions").write_text("".join(f"{f}\n" for f in folders), encoding="utf-8")


def uidlist(names: list[str], rng: random.Random) -> str:
    """A `dovecot-uidlist` for NAMES (`cur/...` or `new/...`), in Dovecot's version 3 format."""
    lines = [f"3 V{FIRST_TIME} N{len(names) + 1} G{rng.getrandbits(128):032x}"]
    for uid, name in enumerate(names, 1):
        lines.append(f"{uid} :{name.split('/', 1)[1].split(':', 1)[0]}")
    return "\n".join(lines) + "\n"


def deliver(directory: Path, rng: random.Random, *, serial: int) -> Path:
    """A new message in DIRECTORY (`cur/` or `new/`), as an MDA or an IMAP APPEND leaves it."""
    namer = Namer(rng, FIRST_TIME + 100_000_000 + serial * 1_000)
    return write_message(directory, rng, namer, message_size(rng, 0.0), flags="S")


def member_names(members: int) -> list[str]:
    """The names generate_tree uses: m0000, m0001, ..."""
    return [f"m{i:04d}" for i in range(members)]


def generate_tree(base: Path, members: int, messages_per_member: int, seed: int) -> list[Path]:
    """MEMBERS mailboxes at `BASE/<member>/Maildir`; return their paths."""
    rng = random.Random(seed)
    roots = []
    for member in member_names(members):
        root = base / member / "Maildir"
        make_mailbox(root, rng, messages_per_member)
        roots.append(root)
    return roots


def message_dirs(root: Path) -> list[Path]:
    """Every existing `cur/` and `new/` of the mailbox at ROOT, INBOX first, sorted."""
    folders = [root, *sorted(p for p in root.iterdir() if p.name.startswith(".") and p.is_dir())]
    return [
        folder / part for folder in folders for part in ("cur", "new") if (folder / part).is_dir()
    ]


def chown_tree(root: Path, uid: int, gid: int) -> None:
    """Give ROOT and everything below it (links not followed) to UID:GID."""
    os.chown(root, uid, gid, follow_symlinks=False)
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(Path(directory) / name, uid, gid, follow_symlinks=False)
