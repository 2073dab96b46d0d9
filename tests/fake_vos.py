"""A stand-in `vos` that replays real output, for what no real cell shows on demand.

The real cell (tests/afs_cell.py) is the contract; this covers the rest: a
`vos` that fails, hangs, prints garbage, or lists 20,000 volumes. Its output
is the verbatim `vos` 1.8.9 output captured from the test cell under
tests/data/afs/ (see the README there), so the scanner parses what real
`vos` prints. The tests and the benchmark share it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "afs"
# The server the captured output was listed from.
CAPTURED_SERVER = "127.1.0.1"
# Where the fake keeps its answers and its log, beside the executable.
SPEC = "fake-vos.json"
LOG = "fake-vos.log"

# Reads which answer to give from SPEC, keyed by the command words before
# the first switch ("listvol SERVER /vicepa"), and logs every call.
_SCRIPT = """\
import json, shutil, sys, time
from pathlib import Path

here = Path(__file__).resolve().parent
spec = json.loads((here / {spec!r}).read_text())
args = sys.argv[1:]
with (here / {log!r}).open("a") as log:
    log.write(json.dumps(args) + "\\n")
words = []
for arg in args:
    if arg.startswith("-"):
        break
    words.append(arg)
key = " ".join(words)
sys.stderr.write(spec["stderr"])
if key not in spec["outputs"]:
    sys.stderr.write(f"fake vos: no answer for {{key!r}}\\n")
    sys.exit(1)
with (here / spec["outputs"][key]).open("rb") as answer:
    shutil.copyfileobj(answer, sys.stdout.buffer, 1 << 20)
sys.exit(spec["exit"])
"""

# Hangs, and its child holds the pipes open: a timeout that killed only
# the script would still wait for the child.
_HANGING = """\
#!/bin/sh
sleep 600 &
echo $! > "$(dirname "$0")/child.pid"
wait
"""


def captured(name: str) -> str:
    """A verbatim capture from tests/data/afs/."""
    return (DATA / name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class FakeVos:
    """The executable and where it logs its calls."""

    path: Path

    def calls(self) -> list[list[str]]:
        """The argument lists it was run with, in order."""
        log = self.path.parent / LOG
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]


def fake_vos(
    directory: Path,
    outputs: Mapping[str, str | bytes],
    *,
    exit_code: int = 0,
    stderr: str = "",
) -> FakeVos:
    """A `vos` in DIRECTORY answering each command key (e.g. "listvol S") with OUTPUTS[key]."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for number, (key, output) in enumerate(outputs.items()):
        name = f"answer-{number}.txt"
        data = output.encode() if isinstance(output, str) else output
        (directory / name).write_bytes(data)
        files[key] = name
    spec = {"outputs": files, "exit": exit_code, "stderr": stderr}
    (directory / SPEC).write_text(json.dumps(spec), encoding="utf-8")
    path = directory / "vos"
    path.write_text(f"#!{sys.executable}\n" + _SCRIPT.format(spec=SPEC, log=LOG))
    path.chmod(0o755)
    return FakeVos(path)


def hanging_vos(directory: Path) -> Path:
    """A `vos` that never answers; its child's PID lands in DIRECTORY/child.pid."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "vos"
    path.write_text(_HANGING)
    path.chmod(0o755)
    return path


def template_block() -> str:
    """user.alice's real block (filled, with a quota and a backup clone), verbatim."""
    listing = captured("listvol-a.txt")
    for block in listing.split("BEGIN_OF_ENTRY\n")[1:]:
        if block.startswith("name\t\tuser.alice\n"):
            return "BEGIN_OF_ENTRY\n" + block.split("END_OF_ENTRY\n", 1)[0] + "END_OF_ENTRY\n\n"
    raise AssertionError("no user.alice entry in the captured listing")


# The kinds of volume each member has in the big listing.
PREFIXES = ("user", "mail", "web", "proj")
BIG_PATTERN = rf"^({'|'.join(PREFIXES)})\.(?P<member>[a-z][a-z0-9_-]*)$"


def big_listing(volumes: int, server: str = CAPTURED_SERVER) -> tuple[str, int, int]:
    """A `vos listvol SERVER -format` listing of VOLUMES RW volumes on /vicepa.

    Each is the real user.alice block with its own name, ID and sizes;
    members own len(PREFIXES) volumes each. Returns the listing and the
    total bytes and files it holds.
    """
    block = template_block()
    parts = [f"Total number of volumes on server {server} partition /vicepa: {volumes} \n"]
    total_bytes = total_files = 0
    for number in range(volumes):
        member, kind = divmod(number, len(PREFIXES))
        diskused, files = 2 + number * 7 % 100_003, number % 977
        total_bytes += diskused * 1024
        total_files += files
        parts.append(
            block.replace("user.alice", f"{PREFIXES[kind]}.m{member:05d}")
            .replace("536870912", str(536_870_912 + 3 * number))
            .replace("diskused\t2932\n", f"diskused\t{diskused}\n")
            .replace("filecount\t2\n", f"filecount\t{files}\n")
        )
    return "".join(parts), total_bytes, total_files
