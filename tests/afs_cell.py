"""A real OpenAFS cell on loopback, so the `afs` scanner meets the `vos` of production.

OpenAFS's servers run in user space: ptserver, vlserver and the
demand-attach file and volume servers make a complete cell here without a
kernel module or Kerberos, in about 5 s. It is a `-noauth` cell (anybody on
this host may change it), so everything listens on loopback only.

One cell per machine. OpenAFS compiles in its ports (7000-7005), the
partitions' paths (/vicepa, /vicepb) and the servers' local folder
(/var/lib/openafs/local); the file server also reads its cell from
/etc/openafs/server whatever `-config` says, and `afsio` (which has no
`-config`) from /etc/openafs. The cell makes those paths symbolic links
into its own folder and copies its cell files over those, after writing
down in a journal (JOURNAL) what was there; stopping it puts everything
back and deletes the journal. A cell whose test run was killed is stopped
and undone from its journal by the next run. Anything else on those ports
or paths (a real AFS server on this host) makes the tests skip, or fail
under CI, and is never touched.

Facts learned on the way:
- `vos` refuses servers on 127.0.x.x ("not found in host table"), so the
  file and volume servers bind FS_ADDR; ubik takes the database servers'
  address from the host name, which must therefore resolve to 127/8.
- Each server reads NetInfo once, at start: it is rewritten between phases.
- The file server stops cleanly on SIGQUIT only.
- Without a kernel client, a volume gets real data by `vos dump`, an ACL
  that lets anyone write, `vos restore`, and `afsio write` (see `fill`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import need

LIBEXEC = Path("/usr/lib/openafs")
VOS = Path("/usr/bin/vos")
PTS = Path("/usr/bin/pts")
AFSIO = Path("/usr/bin/afsio")
HOW_TO_INSTALL = (
    "apt-get install openafs-fileserver openafs-dbserver openafs-client "
    "(make system-deps does it); the cell needs root"
)

CELL = "test.example"
# Any 127/8 address but 127.0.x.x, which vos refuses as a server.
FS_ADDR = "127.1.0.1"
PARTITIONS = ("a", "b")
# fileserver, ptserver, vlserver, volserver: compiled in.
PORTS = (7000, 7002, 7003, 7005)
LOCAL = Path("/var/lib/openafs/local")
ETC_FILES = tuple(
    Path(f"/etc/openafs/{sub}{name}")
    for sub in ("", "server/")
    for name in ("ThisCell", "CellServDB")
)
# Outside the cell's folder: pytest deletes old temporary folders, and the
# journal must outlive a killed run to undo it.
JOURNAL = Path("/var/lib/openafs/quotad-test-cell.json")
# A file in a test cell's folder: a fixed path linking there is a test's.
# The second is the shell scripts' this fixture was ported from.
CELL_MARKERS = (".quotad-afs-test-cell", ".afs-test-cell")
# In start order; stopped in reverse, the volume server first (as bos does).
SERVERS = ("ptserver", "vlserver", "salvageserver", "dafileserver", "davolserver")
# SIGTERM leaves the file server running; SIGQUIT is its clean shutdown.
STOP_SIGNAL = {"dafileserver": signal.SIGQUIT}

START_WITHIN = 60.0
STOP_WITHIN = 10.0
VOS_TIMEOUT = 120.0


class AfsCellError(Exception):
    """The cell did not start, or a command against it failed."""


def available() -> str | None:
    """None when a cell can start here; else what is missing, to skip or fail with."""
    missing = [
        str(path)
        for path in (*(LIBEXEC / s for s in SERVERS), VOS, PTS, AFSIO)
        if not os.access(path, os.X_OK)
    ]
    if missing:
        return f"missing {', '.join(missing)}: {HOW_TO_INSTALL}"
    if os.geteuid() != 0:
        return f"the OpenAFS test cell needs root (its paths are fixed): {HOW_TO_INSTALL}"
    return None


def host_address() -> str:
    """The IPv4 address the host name resolves to, which ubik takes as its own."""
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except socket.gaierror as exc:
        raise AfsCellError(f"the host name does not resolve: {exc}") from None
    address = str(infos[0][4][0])
    if not address.startswith("127."):
        raise AfsCellError(
            f"the host name {socket.gethostname()!r} resolves to {address}, not a loopback "
            "address, and ubik binds the database servers to it: a -noauth cell would "
            "listen on the network. Map the name to 127.0.1.1 in /etc/hosts, as Debian does"
        )
    return address


def ports_in_use() -> list[int]:
    """Which of the cell's UDP ports something already listens on (from /proc)."""
    used: set[int] = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                local = line.split()[1]
                used.add(int(local.rsplit(":", 1)[1], 16))
    return sorted(used.intersection(PORTS))


def parse_examine(text: str) -> dict[str, str]:
    """The `key<TAB>value` lines of `vos examine -format`, up to the VLDB part.

    Deliberately separate from the scanner's parser: this is the oracle.
    """
    result = {}
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition("\t")
        result[key] = value.strip("\t")
    return result


@dataclass
class Journal:
    """What the cell changed outside its folder, written before each change."""

    cell_dir: str
    owner_pid: int
    # Path -> how it was: "absent", or "dir:MODE" for an empty directory.
    paths: dict[str, str]
    # File -> its content in base64, or None if it did not exist.
    files: dict[str, str | None]
    pids: dict[str, int]

    def save(self) -> None:
        tmp = JOURNAL.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=1), encoding="utf-8")
        tmp.replace(JOURNAL)

    @classmethod
    def load(cls) -> Journal | None:
        try:
            data: dict[str, Any] = json.loads(JOURNAL.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise AfsCellError(f"{JOURNAL} is unreadable ({exc}); undo it by hand") from None
        return cls(**data)


def _alive(pid: int, binary: str) -> bool:
    """Whether PID is still running BINARY (not a zombie, not a reused PID)."""
    try:
        exe = str(Path(f"/proc/{pid}/exe").readlink())
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return exe == str(LIBEXEC / binary) and state != "Z"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def undo(journal: Journal, processes: dict[str, subprocess.Popen[bytes]] | None = None) -> None:
    """Stop the journal's servers and put back every path and file it lists."""
    for name in reversed(SERVERS):
        pid = journal.pids.get(name)
        if pid is not None:
            _stop(name, pid, (processes or {}).get(name))
    for path_text, was in journal.paths.items():
        path = Path(path_text)
        if path.is_symlink():
            path.unlink()
        if was.startswith("dir:") and not path.exists():
            path.mkdir()
            path.chmod(int(was[4:], 8))
    for file_text, content in journal.files.items():
        file = Path(file_text)
        if content is None:
            file.unlink(missing_ok=True)
        else:
            file.write_bytes(base64.b64decode(content))
    JOURNAL.unlink(missing_ok=True)


def _stop(name: str, pid: int, process: subprocess.Popen[bytes] | None) -> None:
    """Stop server NAME (PID, our child PROCESS if we started it): its signal, then SIGKILL."""
    if not _alive(pid, name):
        if process is not None:
            process.wait()
        return
    os.kill(pid, STOP_SIGNAL.get(name, signal.SIGTERM))
    deadline = time.monotonic() + STOP_WITHIN
    while _alive(pid, name) and time.monotonic() < deadline:
        if process is not None:
            # Our own child stays a zombie until reaped.
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.1)
        else:
            time.sleep(0.1)
    if _alive(pid, name):
        # Each server leads its own process group: the salvager's children too.
        os.killpg(pid, signal.SIGKILL)
    if process is not None:
        process.wait()


def recover() -> None:
    """Undo a cell an earlier, killed run left behind; refuse one that is in use."""
    journal = Journal.load()
    if journal is None:
        return
    if journal.owner_pid != os.getpid() and _pid_alive(journal.owner_pid):
        raise AfsCellError(
            f"the OpenAFS test cell is in use by process {journal.owner_pid} "
            f"(journal {JOURNAL}): one cell per machine, run one test session at a time"
        )
    undo(journal)


class AfsCell:
    """One running cell: its folder, servers and the commands tests set volumes up with."""

    def __init__(self, cell_dir: Path) -> None:
        self.dir = cell_dir
        self.etc = cell_dir / "etc"
        self.db_addr = ""
        self.fs_addr = FS_ADDR
        self.partitions = PARTITIONS
        self.journal: Journal | None = None
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def vos_args(self) -> list[str]:
        """What every vos command against this cell takes (and the scanner's `vos_args`)."""
        return ["-noauth", "-config", str(self.etc)]

    # Starting and stopping.

    def start(self) -> None:
        """Start a fresh cell; AfsCellError with the servers' logs if it does not come up."""
        recover()
        self.db_addr = host_address()
        busy = ports_in_use()
        if busy:
            raise AfsCellError(
                f"UDP ports {busy} are in use: another AFS server runs on this host "
                "(a systemd openafs-fileserver, say); stop it to run these tests"
            )
        fixed = [Path(f"/vicep{p}") for p in self.partitions] + [LOCAL]
        paths = {str(path): self._was(path) for path in fixed}
        files = {
            str(f): base64.b64encode(f.read_bytes()).decode() if f.exists() else None
            for f in ETC_FILES
        }
        self.journal = Journal(str(self.dir), os.getpid(), paths, files, {})
        self.journal.save()
        try:
            self._start(fixed)
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _was(path: Path) -> str:
        """How PATH is before the cell takes it; AfsCellError if it is in real use."""
        if path.is_symlink():
            # Left by a test cell whose journal is gone (or by the shell
            # scripts this fixture was ported from): ours to replace. A link
            # anywhere else may be a real server's partition.
            target = path.readlink()
            if not any((target.parent / marker).exists() for marker in CELL_MARKERS):
                raise AfsCellError(
                    f"{path} is a symbolic link to {target}, not into a test cell: "
                    "is this host a real AFS server?"
                )
            return "absent"
        if not path.exists():
            return "absent"
        if path.is_dir() and not any(path.iterdir()):
            return f"dir:{stat.S_IMODE(path.stat().st_mode):o}"
        raise AfsCellError(f"{path} is in use (not empty): is this host a real AFS server?")

    def _start(self, fixed: list[Path]) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)
        for sub in ("etc", "db", "local", "logs", *(f"vicep{p}" for p in self.partitions)):
            (self.dir / sub).mkdir(parents=True, mode=0o700)
        (self.dir / CELL_MARKERS[0]).touch()
        (self.etc / "ThisCell").write_text(f"{CELL}\n")
        (self.etc / "CellServDB").write_text(
            f">{CELL} #quotad test cell\n{self.db_addr} #{socket.gethostname()}\n"
        )
        (self.dir / "local" / "NoAuth").touch()
        for partition in self.partitions:
            # Attach the folder although it is no mount point of its own.
            (self.dir / f"vicep{partition}" / "AlwaysAttach").touch()
        for path in fixed:
            if path.exists() and not path.is_symlink():
                path.rmdir()  # empty, checked by _was
            path.unlink(missing_ok=True)
            path.symlink_to(self.dir / path.name)
        for file in ETC_FILES:
            file.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.etc / file.name, file)

        netinfo = self.dir / "local" / "NetInfo"
        # "f": use the address although it is loopback.
        netinfo.write_text(f"f {self.db_addr}\n")
        config = ["-config", str(self.etc)]
        logs = self.dir / "logs"
        self._spawn(
            "ptserver",
            *config,
            "-database",
            str(self.dir / "db" / "prdb"),
            "-logfile",
            str(logs / "PtLog"),
            "-rxbind",
        )
        self._spawn(
            "vlserver",
            "-noauth",
            *config,
            "-database",
            str(self.dir / "db" / "vldb"),
            "-logfile",
            str(logs / "VLLog"),
            "-rxbind",
        )
        self._wait("the vlserver's quorum", lambda: self._ok([str(VOS), "listvldb"]))
        self._wait("the ptserver's quorum", lambda: self._ok([str(PTS), "listentries"]))
        netinfo.write_text(f"f {self.fs_addr}\n")
        self._spawn("salvageserver", "-logfile", str(logs / "SalsrvLog"))
        self._spawn("dafileserver", *config, "-logfile", str(logs / "FileLog"), "-rxbind")
        # The volume server retries slowly when the file server's socket is not there yet.
        sock = self.dir / "local" / "fssync.sock"
        self._wait("the file server's sync socket", sock.is_socket)
        self._spawn("davolserver", *config, "-logfile", str(logs / "VolserLog"), "-rxbind")
        self._wait("the file server's registration", self._registered)
        self._wait("the volume server", lambda: self._ok([str(VOS), "listpart", self.fs_addr]))

    def _spawn(self, name: str, *args: str) -> None:
        assert self.journal is not None
        with (self.dir / "logs" / f"{name}.out").open("ab") as log:
            process = subprocess.Popen(
                [str(LIBEXEC / name), *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Away from the terminal: ^C reaches pytest, which stops us.
                start_new_session=True,
            )
        self.processes[name] = process
        self.journal.pids[name] = process.pid
        self.journal.save()

    def _ok(self, command: list[str]) -> bool:
        return (
            subprocess.run(
                [*command, *self.vos_args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=VOS_TIMEOUT,
                check=False,
            ).returncode
            == 0
        )

    def _registered(self) -> bool:
        result = self.vos("listaddrs", check=False)
        return self.fs_addr in result.splitlines()

    def _wait(self, what: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + START_WITHIN
        while time.monotonic() < deadline:
            dead = [n for n, p in self.processes.items() if p.poll() is not None]
            if dead:
                raise AfsCellError(f"{', '.join(dead)} exited waiting for {what}\n{self.logs()}")
            if ready():
                return
            time.sleep(0.2)
        raise AfsCellError(f"no {what} within {START_WITHIN:.0f} s\n{self.logs()}")

    def logs(self) -> str:
        """The end of every server log, for a failure message."""
        parts = []
        for path in sorted((self.dir / "logs").glob("*")):
            text = path.read_text(errors="replace").splitlines()[-8:]
            parts.append(f"==> {path} <==\n" + "\n".join(text))
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop the servers and put every outside path back. Safe to call twice."""
        if self.journal is not None:
            undo(self.journal, self.processes)
            self.journal = None
            self.processes = {}

    # Volumes.

    def vos(self, *args: str, check: bool = True) -> str:
        """`vos ARGS -noauth -config ETC`'s standard output; AfsCellError when it fails."""
        result = subprocess.run(
            [str(VOS), *args, *self.vos_args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=VOS_TIMEOUT,
            check=False,
            env={**os.environ, "LC_ALL": "C"},
        )
        if check and result.returncode != 0:
            raise AfsCellError(
                f"vos {' '.join(args)} (exit {result.returncode}): "
                f"{result.stderr.decode(errors='replace')}{result.stdout.decode(errors='replace')}"
            )
        return result.stdout.decode("utf-8", "surrogateescape")

    def reset(self) -> None:
        """Remove every volume and VLDB entry: each test starts from an empty cell."""
        for partition in self.partitions:
            blocks = self.listvol(partition).split("BEGIN_OF_ENTRY\n")[1:]
            volumes = [parse_examine(block) for block in blocks]
            # Clones first: zapping a RW volume takes its clones along, and
            # zapping a clone that is gone then retries for seconds.
            volumes.sort(key=lambda fields: fields.get("type") == "RW")
            for fields in volumes:
                self.vos("zap", self.fs_addr, partition, fields["id"], "-force")
        if self.vos("listvldb", "-quiet").strip():
            self.vos("delentry", "-server", self.fs_addr)

    def create(self, name: str, partition: str = "a", maxquota_kb: int | None = None) -> int:
        """Create RW volume NAME; return its ID."""
        quota = ["-maxquota", str(maxquota_kb)] if maxquota_kb is not None else []
        out = self.vos("create", self.fs_addr, partition, name, *quota)
        match = re.search(r"Volume (\d+) created", out)
        if match is None:
            raise AfsCellError(f"vos create {name}: unexpected answer {out!r}")
        return int(match.group(1))

    def set_quota(self, name: str, maxquota_kb: int) -> None:
        """A volume's quota in KB (0 = unlimited), the way `fs setquota` would set it."""
        self.vos("setfields", "-id", name, "-maxquota", str(maxquota_kb))

    def backup(self, name: str) -> None:
        """Make or refresh NAME.backup, the clone that must never be counted."""
        self.vos("backup", name)

    def replicate(self, name: str) -> None:
        """Add a read-only site for NAME beside the RW volume and release it there.

        A volume's copies on one server share its partition (the RO is a
        clone of the RW): a site on another partition fails to release.
        """
        self.vos("addsite", *self._site(name), name)
        self.vos("release", name)

    def rename(self, old: str, new: str) -> None:
        self.vos("rename", old, new)

    def examine(self, name: str) -> dict[str, str]:
        """The oracle: `vos examine NAME -format`'s fields."""
        return parse_examine(self.vos("examine", name, "-format"))

    def listvol(self, partition: str | None = None) -> str:
        """Raw `vos listvol -format` output, as the scanner reads it."""
        where = [partition] if partition else []
        return self.vos("listvol", self.fs_addr, *where, "-format")

    def fill(self, name: str, size: int) -> None:
        """Store a SIZE-byte file in volume NAME: real data, so `diskused` grows.

        There is no kernel client to write through. `afsio` can write, but
        unauthenticated, and (in 1.8.9) only as "/FILE" in the root of
        root.cell: its path parsing crashes on deeper paths. So the volume
        root's ACL is opened to anyone (dump, patch, restore, which keeps
        the ID and the quota) and the volume is root.cell for the write.
        """
        if self.vos("listvldb", "-name", "root.cell", check=False).strip():
            raise AfsCellError("root.cell exists; fill() needs the name for a moment")
        with tempfile.TemporaryDirectory() as tmp:
            dump = Path(tmp) / "dump"
            self.vos("dump", name, "-file", str(dump))
            data = bytearray(dump.read_bytes())
            if _open_root_acl(data):
                dump.write_bytes(data)
                site = self._site(name)
                self.vos("restore", *site, name, "-file", str(dump), "-overwrite", "full")
        self.rename(name, "root.cell")
        try:
            result = subprocess.run(
                [str(AFSIO), "write", "-file", f"/fill.{time.time_ns()}", "-synthesize", str(size)],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=VOS_TIMEOUT,
                check=False,
            )
        finally:
            self.rename("root.cell", name)
        # afsio can exit 0 after a failed write (over quota, say); it is
        # silent only when the write worked.
        output = (result.stdout + result.stderr).decode(errors="replace").strip()
        if result.returncode != 0 or output:
            raise AfsCellError(f"afsio write into {name}: {output or result.returncode}")

    def _site(self, name: str) -> tuple[str, str]:
        """(server, partition) of NAME's RW volume."""
        fields = self.examine(name)
        return fields["serv"].split("\t")[0], fields["part"]

    @contextlib.contextmanager
    def busy(self, name: str) -> Iterator[int]:
        """Keep RW volume NAME busy (in a volume server transaction) for the block; yield its ID.

        `vos offline -busy -sleep` opens the transaction and holds it; the
        block starts once the listing shows the volume busy.
        """
        fields = self.examine(name)
        volume_id = int(fields["id"])
        partition = fields["part"]
        process = subprocess.Popen(
            [
                *(str(VOS), "offline", self.fs_addr, partition, name),
                *("-busy", "-sleep", "600", *self.vos_args),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + START_WITHIN
            while volume_id not in self._busy_ids(partition):
                if time.monotonic() > deadline or process.poll() is not None:
                    raise AfsCellError(f"{name} did not turn busy")
                time.sleep(0.1)
            yield volume_id
        finally:
            process.kill()
            process.wait()
            # The killed vos leaves its transaction open (until the volume
            # server times it out, minutes later): end it now.
            status = self.vos("status", self.fs_addr)
            for transaction, tid_volume in re.findall(
                r"^transaction: (\d+) .*?^volume: (\d+)", status, re.MULTILINE | re.DOTALL
            ):
                if int(tid_volume) == volume_id:
                    self.vos("endtrans", self.fs_addr, transaction)
            deadline = time.monotonic() + START_WITHIN
            while self._busy_ids(partition):
                if time.monotonic() > deadline:
                    raise AfsCellError(f"volumes on {partition} stay busy")
                time.sleep(0.1)

    def _busy_ids(self, partition: str) -> set[int]:
        """IDs of the volumes the listing of PARTITION shows busy."""
        busy = set()
        for block in self.listvol(partition).split("BEGIN_OF_ENTRY\n")[1:]:
            fields = parse_examine(block)
            if fields.get("status") == "BUSY":
                busy.add(int(fields["id"]))
        return busy


def _open_root_acl(dump: bytearray) -> bool:
    """Give system:anyuser all rights on the root directory's ACL in a volume DUMP.

    False when it already has them. The ACL record is `A`, then big-endian
    int32s: size, total, positive entries, negative entries, then (id,
    rights) pairs; `vos create` writes system:administrators (-204) with
    rlidwka (0x7f) only, and the record is followed by zero padding.
    """
    old = b"A" + struct.pack(">7i", 28, 1, 1, 1, 0, -204, 0x7F)
    new = b"A" + struct.pack(">9i", 36, 1, 2, 2, 0, -204, 0x7F, -101, 0x7F)
    if new in dump:
        return False
    at = dump.find(old)
    if at < 0 or dump[at + len(old) : at + len(new)] != bytes(len(new) - len(old)):
        raise AfsCellError("unexpected root ACL in the volume dump")
    dump[at : at + len(new)] = new
    return True


# One cell for the whole session, even though several modules import the
# fixture (each import is a fixture of its own to pytest).
_cell: AfsCell | None = None
_failed: str | None = None


@pytest.fixture(scope="session")
def afs_cell(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AfsCell]:
    """The session's OpenAFS cell, started on first use and stopped (and undone) at the end."""
    global _cell, _failed  # noqa: PLW0603 - the one cell shared across modules
    missing = available()
    if missing is not None:
        need("OpenAFS", missing)
    if _failed is not None:
        need("an OpenAFS test cell", _failed)
    if _cell is None:
        cell = AfsCell(tmp_path_factory.mktemp("afs-cell"))
        try:
            cell.start()
        except AfsCellError as exc:
            _failed = f"it did not start earlier in this session: {exc}"
            need("an OpenAFS test cell", str(exc))
        _cell = cell
    yield _cell
    if _cell is not None:
        _cell.stop()
        _cell = None


@pytest.fixture
def afs(afs_cell: AfsCell) -> AfsCell:
    """The session's cell, emptied of volumes for this test."""
    afs_cell.reset()
    return afs_cell
