"""A real Mailman 3 core for the tests, from the virtual environment `make mailman-env` builds.

One server per test session (it takes seconds to start): SQLite, the REST API
on a free loopback port, the null MTA so no mail goes anywhere. Tests create
their own domain, lists and owners through REST, with names unique to the
test, so they never see each other's lists by name.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import need

REPO = Path(__file__).resolve().parent.parent
MAILMAN_VENV = Path(os.environ.get("MAILMAN_VENV", REPO / ".venv-mailman"))
USER = "restadmin"
# A throwaway server's, on loopback.
PASSWORD = "rest-pass-not-secret"

# How long Mailman may take to answer REST after `start` (about 7 to 15 s here).
READY_WITHIN = 90.0
# How long `stop` may take before the leftovers are killed.
STOPPED_WITHIN = 20.0


def free_port() -> int:
    """A TCP port nothing listens on at the moment (and, once closed, for a while)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class MailmanServer:
    """One Mailman 3 core: its config, its processes and a small REST client for the tests."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.config = workdir / "mailman.cfg"
        self.log = workdir / "mailman.log"
        self.rest_url = f"http://127.0.0.1:{self.port}/3.1"
        self.master_pid: int | None = None
        self.password_file = workdir / "rest-password"
        # A trailing newline and spaces, as an editor leaves them: the
        # scanner must strip them.
        self.password_file.write_text(f"  {PASSWORD}\n", encoding="utf-8")
        self.config.write_text(
            f"""\
[mailman]
layout: here
site_owner: admin@example.org

[paths.here]
var_dir: {workdir / "var"}

[webservice]
hostname: 127.0.0.1
port: {self.port}
admin_user: {USER}
admin_pass: {PASSWORD}

[mta]
incoming: mailman.mta.null.NullMTA
outgoing: mailman.mta.deliver.deliver
lmtp_host: 127.0.0.1
lmtp_port: {free_port()}
smtp_host: 127.0.0.1
smtp_port: {free_port()}

# Writes each archived post into a Maildir under var/archives/prototype/,
# so that a test can see whether a post was archived.
[archiver.prototype]
enable: yes
""",
            encoding="utf-8",
        )

    def _command(self, *args: str) -> list[str]:
        command = [str(MAILMAN_VENV / "bin" / "mailman")]
        if os.geteuid() == 0:
            # Mailman refuses root unless told; a top-level option.
            command.append("--run-as-root")
        return [*command, "-C", str(self.config), *args]

    def start(self) -> None:
        """Start the core and wait for REST; pytest.fail with the log if it never answers."""
        started = time.monotonic()
        with self.log.open("ab") as log:
            # `start` daemonizes, and the daemons keep its stdout and stderr:
            # anything but a file there would hang whoever reads the pipe.
            process = subprocess.Popen(
                self._command("start"),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        process.wait(timeout=60)
        while time.monotonic() - started < READY_WITHIN:
            with contextlib.suppress(OSError, ValueError):
                # A short timeout: something else on the port must not
                # hold us past the deadline.
                self.request("GET", "system/versions", timeout=2)
                self.master_pid = self._read_master_pid()
                return
            time.sleep(0.25)
        # Read before stopping: the shutdown's own lines would push the cause out.
        logs = [
            f"{path}:\n{path.read_text(encoding='utf-8', errors='replace')[-3000:]}"
            for path in (self.log, self.workdir / "var" / "logs" / "mailman.log")
            if path.exists()
        ]
        self.stop()
        pytest.fail(
            f"Mailman REST at {self.rest_url} did not answer within {READY_WITHIN:.0f} s\n"
            + "\n".join(logs)
        )

    def _read_master_pid(self) -> int | None:
        try:
            return int((self.workdir / "var" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        """Stop the core; kill what is left of it. Safe to call twice."""
        master = self.master_pid or self._read_master_pid()
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            subprocess.run(
                self._command("stop"),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=30,
                check=False,
            )
        if master is None:
            return
        # The master calls setsid, so its session holds every runner.
        deadline = time.monotonic() + STOPPED_WITHIN
        while _session_pids(master) and time.monotonic() < deadline:
            time.sleep(0.25)
        for pid in _session_pids(master):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.master_pid = None

    # REST, for setting up what a test needs.

    def request(
        self, method: str, path: str, data: dict[str, str] | None = None, timeout: float = 30
    ) -> Any:
        """The decoded JSON answer (None for an empty one); urllib.error.HTTPError on errors."""
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        request = urllib.request.Request(
            f"{self.rest_url}/{path}",
            data=body,
            method=method,
            headers={"Authorization": f"Basic {token}"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def new_domain(self) -> str:
        """A fresh mail domain, unique to the caller."""
        domain = f"d{uuid.uuid4().hex[:10]}.example.org"
        self.request("POST", "domains", {"mail_host": domain})
        return domain

    def create_list(self, name: str, domain: str, owners: tuple[str, ...] = ()) -> str:
        """Create list NAME@DOMAIN with OWNERS; return its list_id."""
        self.request("POST", "lists", {"fqdn_listname": f"{name}@{domain}"})
        list_id = f"{name}.{domain}"
        for owner in owners:
            self.add_owner(list_id, owner)
        return list_id

    def add_owner(self, list_id: str, address: str) -> None:
        self.request(
            "POST", "members", {"list_id": list_id, "subscriber": address, "role": "owner"}
        )

    def delete_list(self, list_id: str) -> None:
        self.request("DELETE", f"lists/{list_id}")

    def subscribe(self, list_id: str, address: str) -> str:
        """Subscribe ADDRESS as a regular member, with no confirmation; return its member_id."""
        self.request(
            "POST",
            "members",
            {
                "list_id": list_id,
                "subscriber": address,
                "pre_verified": "true",
                "pre_confirmed": "true",
                "pre_approved": "true",
            },
        )
        return self.member_id(list_id, address, "member")

    def member_id(self, list_id: str, address: str, role: str) -> str:
        found = self.request(
            "POST", "members/find", {"list_id": list_id, "subscriber": address, "role": role}
        )
        (entry,) = found["entries"]
        member_id: str = entry["member_id"]
        return member_id

    def post(self, list_id: str, sender: str, subject: str) -> str:
        """Queue a post from SENDER to the list as if it came in by mail; return its Message-ID."""
        list_name, _, domain = list_id.partition(".")
        message_id = f"<{uuid.uuid4().hex}@{domain}>"
        message = (
            f"From: {sender}\nTo: {list_name}@{domain}\nSubject: {subject}\n"
            f"Message-ID: {message_id}\n\n{subject}\n"
        )
        subprocess.run(
            self._command("inject", "-q", "in", list_id),
            input=message.encode(),
            capture_output=True,
            timeout=60,
            check=True,
        )
        return message_id

    def archived(self, list_id: str) -> set[str]:
        """The Message-IDs of the list's posts in the prototype archiver's Maildir."""
        list_name, _, domain = list_id.partition(".")
        folder = self.workdir / "var" / "archives" / "prototype" / f"{list_name}@{domain}"
        found = set()
        for path in [*folder.glob("new/*"), *folder.glob("cur/*")]:
            with contextlib.suppress(OSError):
                for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                    if line.lower().startswith("message-id:"):
                        found.add(line.partition(":")[2].strip())
                        break
        return found

    def held(self, list_id: str) -> set[str]:
        """The Message-IDs of the list's posts held for moderation."""
        data = self.get(f"lists/{list_id}/held")
        return {entry["message_id"] for entry in data.get("entries", [])}


def _session_pids(session: int) -> list[int]:
    """The processes of session SESSION (Linux /proc), so only Mailman's own are killed."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name, in parentheses, may hold spaces: split after it.
        fields = stat.rpartition(")")[2].split()
        if int(fields[3]) == session:
            pids.append(int(entry.name))
    return pids


# One server for the whole session, even though the fixture is imported by
# several modules (each import is a fixture of its own to pytest).
_server: MailmanServer | None = None
_failed: str | None = None


@pytest.fixture(scope="session")
def mailman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailmanServer]:
    """The session's Mailman 3 core, started on first use and stopped at the end."""
    global _server, _failed  # noqa: PLW0603 - the one server shared across modules
    if not (MAILMAN_VENV / "bin" / "mailman").exists():
        need("Mailman 3 core", f"run `make mailman-env` to install it into {MAILMAN_VENV}")
    if _failed is not None:
        pytest.fail(_failed)
    if _server is None:
        server = MailmanServer(tmp_path_factory.mktemp("mailman"))
        try:
            server.start()
        except BaseException as exc:
            _failed = f"Mailman did not start earlier in this session: {exc}"
            raise
        _server = server
    yield _server
    if _server is not None:
        _server.stop()
        _server = None
