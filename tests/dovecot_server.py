"""A real Dovecot 2.3 for contract tests: its own config, in a temporary folder.

Dovecot is the oracle for what the `maildir` scanner reports as `messages`
and `message_bytes`: `doveadm quota recalc` counts a mailbox with its
Maildir++ quota backend and writes the result to `maildirsize`.

Nothing here touches the system's Dovecot (/etc/dovecot, its service): the
server runs from a config of its own, with every runtime file under one
temporary folder, and listens on no network port (`protocols =` empty; doveadm
talks to it through sockets in that folder). Mail belongs to an unprivileged
uid, as on a real mail host; running as another user than root, mail belongs
to that user and Dovecot runs rootless.
"""

from __future__ import annotations

import getpass
import grp
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import need

# The uid:gid that owns the mail when we are root (Debian's vmail convention).
MAIL_UID = 5000
MAIL_GID = 5000
QUOTA_LIMIT = 1 << 30
START_TIMEOUT = 15.0
HOW_TO_INSTALL = "apt-get install dovecot-core (make system-deps does it)"


class DovecotError(Exception):
    """Dovecot did not start, or a doveadm command failed."""


def find_binaries() -> tuple[str, str] | None:
    """(dovecot, doveadm), looked up on PATH and in /usr/sbin, or None."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"])
    dovecot = shutil.which("dovecot", path=path)
    doveadm = shutil.which("doveadm", path=path)
    if dovecot is None or doveadm is None:
        return None
    return dovecot, doveadm


def find_lda() -> str:
    """dovecot-lda, where Debian's dovecot-core puts it or on PATH."""
    path = os.pathsep.join(["/usr/lib/dovecot", os.environ.get("PATH", "")])
    lda = shutil.which("dovecot-lda", path=path)
    if lda is None:
        raise DovecotError(f"dovecot-lda not found: {HOW_TO_INSTALL}")
    return lda


def parse_maildirsize(text: str) -> tuple[int, int]:
    """(bytes, messages) from a Maildir++ `maildirsize`: every line after the limits summed."""
    lines = text.splitlines()
    if not lines:
        raise DovecotError("maildirsize is empty")
    total_bytes = total_count = 0
    for line in lines[1:]:
        if not line.strip():
            continue
        size, count = line.split()
        total_bytes += int(size)
        total_count += int(count)
    return total_bytes, total_count


@dataclass
class DovecotServer:
    """A running Dovecot whose users live at `mail_root/<user>/Maildir`."""

    base: Path
    binaries: tuple[str, str]
    uid: int
    gid: int
    users: list[str] = field(default_factory=list, repr=False)
    # A passwd-file read as a second userdb that only adds fields (quotad's
    # Dovecot enforcer writes quota rules there), or None for one userdb.
    quota_file: Path | None = None
    start_seconds: float = 0.0
    recalc_seconds: list[float] = field(default_factory=list, repr=False)

    @property
    def conf(self) -> Path:
        return self.base / "dovecot.conf"

    @property
    def mail_root(self) -> Path:
        return self.base / "mail"

    @property
    def log(self) -> Path:
        return self.base / "dovecot.log"

    @property
    def internal_group(self) -> str:
        """The group Dovecot's auth process runs as: it must be able to read userdb files."""
        return "dovecot" if os.geteuid() == 0 else grp.getgrgid(os.getegid()).gr_name

    def home(self, user: str) -> Path:
        return self.mail_root / user

    def maildir(self, user: str) -> Path:
        """USER's Maildir (not created), after making USER known to Dovecot."""
        if user not in self.users:
            self.users.append(user)
            self.write_user(user)
        return self.home(user) / "Maildir"

    def write_user(self, user: str) -> None:
        # One passwd-file per user: Dovecot re-reads a changed file at most
        # once a second, so a user added to a shared file may not exist yet.
        line = f"{user}:{{PLAIN}}x:{self.uid}:{self.gid}::{self.home(user)}::\n"
        (self.base / "users" / user).write_text(line, encoding="utf-8")

    def give_to_mail_user(self, user: str) -> None:
        """Give USER's home and everything in it to the mail uid, as delivery would have made it.

        Only what belongs to someone else is changed: a chown moves the
        ctime, and the scanner's cache rightly distrusts a directory whose
        ctime moved.
        """
        home = self.home(user)
        for directory, dirnames, filenames in os.walk(home):
            for name in [".", *dirnames, *filenames]:
                path = Path(directory) / name if name != "." else Path(directory)
                st = path.lstat()
                if (st.st_uid, st.st_gid) != (self.uid, self.gid):
                    os.chown(path, self.uid, self.gid, follow_symlinks=False)

    def doveadm(self, *args: str) -> str:
        """Run `doveadm -c CONF ARGS...`; its standard output, or DovecotError naming stderr."""
        return self._doveadm(*args).stdout

    def _doveadm(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [self.binaries[1], "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
        if done.returncode != 0:
            raise DovecotError(
                f"doveadm {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}"
            )
        return done

    def recalc(self, user: str) -> tuple[int, int]:
        """(bytes, messages) Dovecot's Maildir++ quota counts for USER, recounted from disk now.

        Beware: Dovecot opens every folder while recounting, so this also
        rewrites index files, and renames a folder whose name is not UTF-8.
        """
        self.give_to_mail_user(user)
        # A failed recount exits 0 and leaves the old file: start without one.
        maildirsize = self.maildir(user) / "maildirsize"
        maildirsize.unlink(missing_ok=True)
        start = time.perf_counter()
        done = self._doveadm("quota", "recalc", "-u", user)
        self.recalc_seconds.append(time.perf_counter() - start)
        try:
            text = maildirsize.read_text(encoding="ascii")
        except FileNotFoundError:
            raise DovecotError(
                f"doveadm quota recalc -u {user} wrote no maildirsize: {done.stderr.strip()}"
            ) from None
        return parse_maildirsize(text)

    def deliver(self, user: str, body: str) -> subprocess.CompletedProcess[str]:
        """Deliver BODY to USER through dovecot-lda, as an MTA would; its exit status tells.

        0 is delivered, 77 (EX_NOPERM) refused for good, as over quota; `-e`
        makes the LDA say why on stderr instead of mailing a bounce.
        """
        self.maildir(user)
        home = self.home(user)
        home.mkdir(exist_ok=True)
        self.give_to_mail_user(user)
        return subprocess.run(
            [find_lda(), "-c", str(self.conf), "-d", user, "-f", "sender@example.org", "-e"],
            input=body,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    def stop(self) -> None:
        """Stop the server and wait for its master process to go."""
        pid_file = self.base / "run" / "master.pid"
        try:
            pid = int(pid_file.read_text(encoding="ascii").split()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            self.doveadm("stop")
        except (DovecotError, subprocess.TimeoutExpired):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def write_config(server: DovecotServer) -> None:
    """A minimal dovecot.conf: no network, passwd-file users, the Maildir++ quota."""
    base = server.base
    first_userdb, quota_userdb = "", ""
    if server.quota_file is not None:
        # As docs/enforcers/dovecot.md tells admins: the first userdb finds
        # the user, the second adds its fields if it has a line for the user.
        first_userdb = "  result_success = continue-ok\n"
        quota_userdb = (
            "userdb {\n"
            "  driver = passwd-file\n"
            f"  args = {server.quota_file}\n"
            "  skip = notfound\n"
            "  result_internalfail = return-fail\n"
            "}\n"
        )
    rootless = ""
    if os.geteuid() != 0:
        # Every service runs as us; nothing may chroot or change user.
        user = getpass.getuser()
        group = grp.getgrgid(os.getegid()).gr_name
        rootless = (
            f"default_internal_user = {user}\n"
            f"default_internal_group = {group}\n"
            f"default_login_user = {user}\n"
            "service anvil {\n  chroot =\n}\n"
        )
    server.conf.write_text(
        f"""# Written by tests/dovecot_server.py for one test session.
protocols =
base_dir = {base}/run
state_dir = {base}/state
log_path = {server.log}
ssl = no
first_valid_uid = {server.uid}
first_valid_gid = {server.gid}
mail_location = maildir:{server.mail_root}/%u/Maildir
{rootless}
namespace inbox {{
  inbox = yes
}}
passdb {{
  driver = passwd-file
  args = {base}/users/%u
}}
userdb {{
  driver = passwd-file
  args = {base}/users/%u
{first_userdb}}}
{quota_userdb}mail_plugins = $mail_plugins quota
plugin {{
  quota = maildir:User quota
  quota_rule = *:storage={QUOTA_LIMIT // (1 << 20)}M
}}
""",
        encoding="utf-8",
    )


def start_dovecot(binaries: tuple[str, str], *, quota_file: bool = False) -> DovecotServer:
    """Write a config into a fresh folder and start Dovecot on it; ready when this returns.

    With QUOTA_FILE, Dovecot also reads `quota-users` in that folder as a
    userdb of quota rules (created empty).
    """
    # Short and world-traversable: Dovecot's services run as other users,
    # and socket paths must stay under the kernel's 108 bytes.
    base = Path(tempfile.mkdtemp(prefix="quotad-dovecot-"))
    base.chmod(0o755)
    if os.geteuid() == 0:
        uid, gid = MAIL_UID, MAIL_GID
    else:
        uid, gid = os.geteuid(), os.getegid()
    server = DovecotServer(base, binaries, uid, gid)
    for part in ("run", "state", "mail", "users"):
        (base / part).mkdir(mode=0o755)
    if quota_file:
        server.quota_file = base / "quota-users"
        server.quota_file.touch(mode=0o644)
    write_config(server)
    start = time.perf_counter()
    # The master daemonizes: given our pipes it would hold them open forever,
    # so its complaints before the log opens go to a file.
    errors = base / "start.err"
    with errors.open("wb") as sink:
        started = subprocess.run(
            [binaries[0], "-c", str(server.conf)],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
            check=False,
            timeout=60,
        )
    if started.returncode != 0:
        message = errors.read_text(errors="replace").strip()
        shutil.rmtree(base, ignore_errors=True)
        raise DovecotError(f"dovecot exited {started.returncode}: {message}")
    ready = base / "run" / "auth-userdb"
    deadline = time.monotonic() + START_TIMEOUT
    while not ready.exists() or not (base / "run" / "master.pid").exists():
        if time.monotonic() > deadline:
            server.stop()
            tail = server.log_tail()
            shutil.rmtree(base, ignore_errors=True)
            raise DovecotError(f"Dovecot did not start within {START_TIMEOUT}s; its log:\n{tail}")
        time.sleep(0.01)
    server.start_seconds = time.perf_counter() - start
    return server


def _running(*, quota_file: bool) -> Iterator[DovecotServer]:
    binaries = find_binaries()
    if binaries is None:
        need("Dovecot (dovecot, doveadm)", HOW_TO_INSTALL)
        raise AssertionError("unreachable")
    # Installed but not starting is a fault of this fixture or the host: an error, never a skip.
    server = start_dovecot(binaries, quota_file=quota_file)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.base, ignore_errors=True)


@pytest.fixture(scope="session")
def dovecot() -> Iterator[DovecotServer]:
    """A Dovecot for the whole session; each test uses users of its own."""
    yield from _running(quota_file=False)


@pytest.fixture(scope="session")
def dovecot_with_quota_file() -> Iterator[DovecotServer]:
    """A Dovecot that also takes quota rules from `server.quota_file`; users of its own per test."""
    yield from _running(quota_file=True)
