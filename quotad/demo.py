"""`quotad demo`: a config and sample data to try quotad without any real server."""

from __future__ import annotations

import json
import os
from pathlib import Path

from quotad.errors import InvalidInput

MARKER = ".quotad-demo"

# Deterministic content, so that every run of the demo measures the same.
# Large files are sparse: their apparent size counts (as the contract says)
# while costing the demo no disk space.
HOMES: dict[str, dict[str, int]] = {
    "alice": {
        "public_html/index.html": 2_345,
        "notes.txt": 12_000,
        "photos/2026/beach.jpg": 3_500_000,
    },
    "bob": {"public_html/index.html": 1_024, "backup.tar": 57 * 1024**2, "src/main.c": 8_200},
    "carol": {"thesis.pdf": 5 * 1024**2, ".profile": 807},
    "dave": {"game-server/world.dat": 70 * 1024**2},
}
MESSAGES: dict[str, list[tuple[str, str, int]]] = {
    # (folder, subdir, size); the size also goes in the name as ",S=" like Dovecot's.
    "alice": [
        ("", "cur", 4_120),
        ("", "cur", 18_002),
        ("", "new", 950),
        (".Sent", "cur", 2_200),
        (".Trash", "cur", 77_000),
    ],
    "bob": [("", "cur", 1_500), ("", "new", 2_048), (".Lists", "cur", 3_333)],
    "carol": [("", "cur", 250_000), (".Archive.2025", "cur", 1_200_000)],
}
# (owners, archive size): a list with two owners is split evenly between
# them; one nobody owns is recorded unattributed, for an admin to sort out.
LISTS: dict[str, tuple[tuple[str, ...], int]] = {
    "alice-announce": (("alice",), 40_000),
    "bob-dev": (("bob",), 123_456),
    "carol-and-alice": (("carol", "alice"), 55_555),
    "orphans": ((), 9_999),
}

CONFIG = """\
# quotad demo configuration, written by `quotad demo`. Paths are relative to
# this file's folder.
database_url = "sqlite:///quotad.db"

[members]
auto_register = true

[server]
host = "127.0.0.1"
port = 8640

[defaults.quota.total]
soft = "50MiB"
hard = "60MiB"
grace = "7d"

[enforcement]
dry_run = true
stale_after = "36h"

[billing]
currency = "USD"
free = "10MiB"
price_per_gib_month = "0.10"

[[sources]]
name = "homes"
kind = "tree"
path = "data/homes/{member}"
schedule = "*/30 * * * *"

[[sources]]
name = "mail"
kind = "maildir"
path = "data/mail/{member}/Maildir"
schedule = "0 * * * *"

[[sources]]
name = "lists"
kind = "mailman"
archive_root = "data/lists/archives/private"
owners_file = "data/lists/list-owners.toml"
schedule = "15 3 * * *"
"""


def _write(path: Path, size: int, seed: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    chunk = (seed.encode() * (4096 // max(len(seed), 1) + 1))[:4096]
    with path.open("wb") as handle:
        if size > 1024**2:
            handle.truncate(size)  # sparse
        else:
            written = 0
            while written < size:
                written += handle.write(chunk[: min(len(chunk), size - written)])


def write_demo(target: Path) -> Path:
    """Write the demo under TARGET and return the config's path."""
    if target.exists() and any(target.iterdir()) and not (target / MARKER).exists():
        raise InvalidInput(
            f"{target} is not empty and holds no earlier demo; choose another folder"
        )
    data = target / "data"
    for member, files in HOMES.items():
        for rel, size in files.items():
            _write(data / "homes" / member / rel, size, f"{member}:{rel}")
    bob_backup = data / "homes" / "bob" / "backup.tar"
    link = data / "homes" / "bob" / "backup-copy.tar"
    if not link.exists():
        # A hard link: counted once, as a user would expect of one file.
        os.link(bob_backup, link)
    for member, messages in MESSAGES.items():
        root = data / "mail" / member / "Maildir"
        for folder in {"", ".Sent", ".Trash"} | {f for f, _, _ in messages}:
            for sub in ("cur", "new", "tmp"):
                (root / folder / sub).mkdir(parents=True, exist_ok=True)
        for index, (folder, sub, size) in enumerate(messages):
            flags = ":2,S" if sub == "cur" else ""
            name = f"17950000{index:02d}.M{index}P100.demo,S={size}{flags}"
            _write(root / folder / sub / name, size, f"{member} message {index}")
        # Dovecot's own files and a delivery cut short: bytes, but not messages.
        _write(root / "dovecot.index.cache", 8_192, f"{member} index")
        _write(root / "tmp" / "1795000099.M99P100.demo", 1_000, f"{member} partial")
    archives = data / "lists" / "archives" / "private"
    for listname, (_owners, size) in LISTS.items():
        _write(archives / listname / "index.html", size // 4, listname)
        _write(archives / f"{listname}.mbox" / f"{listname}.mbox", size - size // 4, listname)
    # A TOML array of strings is written as JSON writes it.
    owners = "\n".join(
        f'"{name}" = {json.dumps(list(list_owners))}'
        for name, (list_owners, _) in LISTS.items()
        if list_owners
    )
    (data / "lists" / "list-owners.toml").write_text(
        "# list name = the members (or their addresses) who own it\n" + owners + "\n",
        encoding="utf-8",
    )
    config = target / "quotad.toml"
    config.write_text(CONFIG, encoding="utf-8")
    (target / MARKER).write_text("written by quotad demo\n", encoding="utf-8")
    return config
