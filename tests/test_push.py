"""`quotad scan --push`: an agent sends its scans to a central quotad over HTTP.

The server is real every time (uvicorn in a thread, or `quotad serve` as a
process); the end-to-end tests run the agent as a process of its own, with its
own config, and kill the server in the middle of a push.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from sqlalchemy import func, select

from api.app import create_app
from quotad.auth.service import TokenService
from quotad.db import session_scope, table_of
from quotad.ledger.models import Scan, Source, UsageSample
from quotad.ledger.service import ScanInput
from quotad.push import (
    PENDING,
    RECORDED,
    REJECTED,
    REPLAYED,
    Answer,
    Outbox,
    Pusher,
    scan_body,
    scan_from_body,
)
from scanners.base import Measurement
from tests.api.conftest import PLAN
from tests.conftest import Ledger
from tests.helpers import find_sizes, run

# --------------------------------------------------------------------------
# helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get(url: str, token: str) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def wait_listening(port: int, process: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if process is not None:
                assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, f"nothing listens on {port} after 30 s"
            time.sleep(0.05)


def token(
    ledger: Ledger, role: str, member: str | None = None, sources: tuple[str, ...] = ()
) -> str:
    with session_scope(ledger.engine, write=True) as session:
        _, raw = TokenService(session, "test").create(role=role, member=member, sources=sources)
    return raw


def scans_of(ledger: Ledger, source: str) -> list[str]:
    with session_scope(ledger.engine) as session:
        ids = session.scalars(
            select(Scan.id).join(Source, Scan.source_id == Source.id).where(Source.name == source)
        )
        return [str(i) for i in ids]


def sample_count(ledger: Ledger) -> int:
    with session_scope(ledger.engine) as session:
        return int(session.scalar(select(func.count()).select_from(table_of(UsageSample))) or 0)


@contextmanager
def serving(ledger: Ledger, extra: str = "") -> Iterator[str]:
    """quotad's app on the test ledger, served over real HTTP from a thread."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(ledger.settings(PLAN + extra)),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_listening(port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def homes(root: Path, sizes: dict[str, int]) -> None:
    """A home tree per member: SIZE bytes in one file each."""
    for member, size in sizes.items():
        (root / member).mkdir(parents=True, exist_ok=True)
        (root / member / "data").write_bytes(b"q" * size)


def agent_config(tmp_path: Path, root: Path, source: str = "homes") -> Path:
    """An agent's own config: a tree source, its cache folder, and no ledger it uses."""
    path = tmp_path / "agent" / "quotad.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'cache_dir = "{tmp_path}/agent/cache"\n'
        f'[[sources]]\nname = "{source}"\nkind = "tree"\npath = "{root}/{{member}}"\n',
        encoding="utf-8",
    )
    return path


def token_file(tmp_path: Path, raw: str) -> Path:
    path = tmp_path / "agent" / "token"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(raw + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def push(
    capsys: pytest.CaptureFixture[str], config: Path, url: str, tokens: Path, *extra: str
) -> tuple[int, str, str]:
    """The agent, in this process: `quotad --config CONFIG scan --push URL --token-file TOKENS`."""
    return run(
        capsys, "--config", str(config), "scan", "--push", url, "--token-file", str(tokens), *extra
    )


def outbox_of(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "agent" / "cache" / "outbox")


# --------------------------------------------------------------------------
# in-process agent against a real HTTP server


def test_push_sends_each_scan_and_the_member_sees_it(
    ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "homes"
    homes(root, {"alice": 3000, "bob": 500})
    config = agent_config(tmp_path, root)
    tokens = token_file(tmp_path, token(ledger, "scanner", sources=("homes",)))
    with serving(ledger, "[members]\nauto_register = true\n") as base:
        code, out, err = push(capsys, config, base, tokens, "--json")
        assert code == 0, err
        [result] = json.loads(out)
        assert result["source"] == "homes"
        assert result["status"] == "complete"
        assert result["push"] == {
            "outcome": RECORDED,
            "status": 201,
            "detail": result["push"]["detail"],
        }
        assert result["earlier"] is False
        alice = token(ledger, "member", "alice")
        status, usage = get(f"{base}/me/usage", alice)
    assert status == 200, usage
    assert usage["total"]["bytes"] == find_sizes(root / "alice")[0]
    assert [r["name"] for r in usage["resources"]] == ["alice"]
    # Sent, so nothing waits; and the agent wrote no ledger of its own.
    assert outbox_of(tmp_path).pending() == []
    assert not (config.parent / "var").exists()
    assert len(scans_of(ledger, "homes")) == 1


def test_a_server_that_is_down_keeps_the_scan_for_the_next_run(
    ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "homes"
    homes(root, {"alice": 100})
    config = agent_config(tmp_path, root)
    tokens = token_file(tmp_path, token(ledger, "scanner"))
    nobody = f"http://127.0.0.1:{free_port()}"
    code, out, err = push(capsys, config, nobody, tokens, "--retry-for", "0", "--json")
    assert code == 1
    [first] = json.loads(out)
    assert first["push"]["outcome"] == PENDING
    assert first["push"]["status"] is None
    assert "not delivered" in err
    assert "kept in the outbox" in err
    [kept] = outbox_of(tmp_path).pending()
    assert first["scan_id"] in kept.name

    # The next run, with the server back, sends the kept scan first, then its own.
    (root / "alice" / "more").write_bytes(b"m" * 50)
    with serving(ledger, "[members]\nauto_register = true\n") as base:
        code, out, err = push(capsys, config, base, tokens, "--json")
        assert code == 0, err
        earlier, now = json.loads(out)
        assert (earlier["scan_id"], earlier["earlier"]) == (first["scan_id"], True)
        assert earlier["bytes"] == 100
        assert (now["earlier"], now["bytes"]) == (False, 150)
        assert {earlier["push"]["outcome"], now["push"]["outcome"]} == {RECORDED}
        status, usage = get(f"{base}/me/usage", token(ledger, "member", "alice"))
    assert status == 200, usage
    assert usage["total"]["bytes"] == 150  # the newer scan is what holds now
    assert outbox_of(tmp_path).pending() == []
    assert len(scans_of(ledger, "homes")) == 2


def test_a_scan_the_server_refuses_is_set_aside_not_lost(
    ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "homes"
    homes(root, {"alice": 100})
    # The server knows "homes" as a Maildir source: a tree scan of it is a conflict.
    config = agent_config(tmp_path, root)
    tokens = token_file(tmp_path, token(ledger, "scanner"))
    server_sources = (
        f'[[sources]]\nname = "homes"\nkind = "maildir"\npath = "{tmp_path}/m/{{member}}"\n'
    )
    with serving(ledger, server_sources) as base:
        code, out, err = push(capsys, config, base, tokens, "--json")
    assert code == 1
    [result] = json.loads(out)
    assert result["push"]["outcome"] == REJECTED
    assert result["push"]["status"] == 409
    assert "refused" in err
    box = outbox_of(tmp_path)
    assert box.pending() == []
    [kept] = box.rejected.glob("*.json")
    assert scan_from_body(kept.read_bytes()).measurements[0].bytes == 100
    assert "maildir" in kept.with_suffix(".why").read_text()
    assert scans_of(ledger, "homes") == []


@pytest.mark.parametrize("which", ["revoked", "wrong source"])
def test_a_token_the_server_refuses_keeps_every_scan_pending(
    ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str], which: str
) -> None:
    root = tmp_path / "homes"
    homes(root, {"alice": 100})
    config = agent_config(tmp_path, root)
    raw = token(ledger, "scanner", sources=("mail",) if which == "wrong source" else ())
    if which == "revoked":
        with session_scope(ledger.engine, write=True) as session:
            service = TokenService(session, "test")
            token_id = service.authenticate(raw).token_id
            assert token_id is not None
            service.revoke(token_id)
    tokens = token_file(tmp_path, raw)
    with serving(ledger) as base:
        code, out, err = push(capsys, config, base, tokens, "--json")
    assert code == 1
    [result] = json.loads(out)
    assert result["push"]["outcome"] == PENDING
    assert result["push"]["status"] == (401 if which == "revoked" else 403)
    assert "not delivered" in err
    # A new token makes it deliverable: the scan is still there to send.
    assert len(outbox_of(tmp_path).pending()) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--push", "http://127.0.0.1:1"], "--push and --token-file go together"),
        (["--token-file", "t"], "--push and --token-file go together"),
        (["--push", "ftp://example.org", "--token-file", "TOKEN"], "http:// or https://"),
        (["--push", "http://127.0.0.1:1", "--token-file", "missing"], "cannot read the token"),
        (["--push", "http://127.0.0.1:1", "--token-file", "EMPTY"], "must hold one token"),
        (
            ["--push", "http://127.0.0.1:1", "--token-file", "TOKEN", "--retry-for", "-1"],
            "0 or more",
        ),
    ],
)
def test_push_arguments_are_checked_before_anything_is_measured(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    root = tmp_path / "homes"
    homes(root, {"alice": 100})
    config = agent_config(tmp_path, root)
    (tmp_path / "TOKEN").write_text("abc\n")
    (tmp_path / "EMPTY").write_text("\n")
    argv = [str(tmp_path / a) if a in {"TOKEN", "EMPTY", "missing"} else a for a in argv]
    code, _, err = run(capsys, "--config", str(config), "scan", *argv)
    assert code == 2
    assert message in err
    assert outbox_of(tmp_path).pending() == []


def test_an_outbox_that_cannot_be_written_stops_the_run_before_measuring(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "homes"
    homes(root, {"alice": 100})
    config = agent_config(tmp_path, root)
    (tmp_path / "agent" / "cache").write_text("a file where the folder should be")
    tokens = token_file(tmp_path, "qd_x")
    code, out, err = push(capsys, config, "http://127.0.0.1:1", tokens)
    assert code == 2
    assert out == ""
    assert "cannot keep scans in the outbox" in err


# --------------------------------------------------------------------------
# the retry loop, on a scripted server and a fake clock


@dataclass
class Script:
    answers: list[Answer]
    sent: list[bytes] = field(default_factory=list)
    slept: list[float] = field(default_factory=list)
    now: float = 0.0


def scripted(script: Script, retry_for: float) -> Pusher:
    def sleep(seconds: float) -> None:
        script.slept.append(seconds)
        script.now += seconds

    pusher = Pusher(
        "http://quotad.example", "t", retry_for=retry_for, sleep=sleep, clock=lambda: script.now
    )

    def post(body: bytes) -> Answer:
        script.sent.append(body)
        return script.answers.pop(0)

    pusher.post = post  # type: ignore[method-assign]
    return pusher


def one_scan(tmp_path: Path) -> tuple[Outbox, Path]:
    at = dt.datetime(2026, 11, 26, 3, tzinfo=dt.UTC)
    scan = ScanInput(
        uuid.uuid4(), "homes", "tree", at, at, [Measurement("alice", "tree", "alice", 1, 1)]
    )
    box = Outbox(tmp_path / "outbox")
    return box, box.put(scan)


def test_network_errors_and_5xx_are_retried_with_growing_delays_and_the_same_bytes(
    tmp_path: Path,
) -> None:
    box, path = one_scan(tmp_path)
    kept = path.read_bytes()
    script = Script(
        [
            Answer(None, "ConnectionRefusedError"),
            Answer(503, "down"),
            Answer(502, "proxy"),
            Answer(201, "complete"),
        ]
    )
    [delivery] = scripted(script, retry_for=60).deliver(box)
    assert delivery.outcome == RECORDED
    assert script.sent == [kept] * 4  # every retry is the very same scan
    assert len(script.slept) == 3
    assert script.slept[0] < script.slept[1] < script.slept[2]
    assert box.pending() == []


def test_retrying_stops_at_the_deadline_and_keeps_the_scan(tmp_path: Path) -> None:
    box, path = one_scan(tmp_path)
    script = Script([Answer(None, "refused")] * 100)
    [delivery] = scripted(script, retry_for=10).deliver(box)
    assert delivery.outcome == PENDING
    assert script.now <= 10
    assert box.pending() == [path]


def test_a_transient_conflict_is_retried_but_a_real_one_is_not(tmp_path: Path) -> None:
    box, _ = one_scan(tmp_path)
    script = Script([Answer(409, "try again", retry_after=1.0), Answer(200, "complete")])
    [delivery] = scripted(script, retry_for=60).deliver(box)
    assert delivery.outcome == REPLAYED
    assert script.slept
    assert script.slept[0] >= 1.0

    box, _ = one_scan(tmp_path / "2")
    script = Script([Answer(409, "different content")])
    [delivery] = scripted(script, retry_for=60).deliver(box)
    assert delivery.outcome == REJECTED
    assert script.slept == []


def test_a_scan_another_run_sent_meanwhile_is_skipped(tmp_path: Path) -> None:
    box, path = one_scan(tmp_path)
    script = Script([])
    # Listed as pending, then sent and removed by a run at the same time.
    path.unlink()
    assert scripted(script, retry_for=60).deliver(box, [path]) == []
    assert script.sent == []


def test_the_outbox_file_is_the_scan(tmp_path: Path) -> None:
    _, path = one_scan(tmp_path)
    scan = scan_from_body(path.read_bytes())
    assert scan_body(scan) == path.read_bytes()


# --------------------------------------------------------------------------
# real processes: `quotad serve` and `quotad scan --push`, and a server killed mid-push


class CuttingProxy:
    """A TCP relay in front of the server that lets the test kill it mid-push.

    The first POST is forwarded whole; then, either at once (the server is
    reading or recording it) or once the server has answered (it is
    recorded), CUT is called and the connection dropped: the agent never
    learns what became of its scan. Later connections are relayed untouched.
    """

    def __init__(self, upstream: int, cut: Callable[[], None], *, after_answer: bool) -> None:
        self.upstream = upstream
        self.on_cut = cut
        self.after_answer = after_answer
        self.cut = threading.Event()
        self.swallowed = b""
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        with client:
            request = _read_request(client)
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=60)
            except OSError:
                return  # the agent sees the connection close: a network error
            with server:
                server.sendall(request)
                first = request.startswith(b"POST") and not self.cut.is_set()
                if first:
                    self.cut.set()
                if first and not self.after_answer:
                    time.sleep(0.2)  # the server is reading or recording it
                    self.on_cut()
                    return
                answer = b""
                while chunk := server.recv(65536):
                    answer += chunk
                if first:
                    self.swallowed = answer
                    self.on_cut()
                    return
                client.sendall(answer)

    def close(self) -> None:
        self.listener.close()


def _read_request(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


class Server:
    """`quotad serve` as a process, that can be killed and started again on its port."""

    def __init__(self, config: Path, port: int) -> None:
        self.config = config
        self.port = port
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "api",
                "--config",
                str(self.config),
                "serve",
                "--port",
                str(self.port),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        wait_listening(self.port, self.process)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.communicate(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.communicate(timeout=30)


def agent(config: Path, url: str, tokens: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "api",
            "--config",
            str(config),
            "scan",
            "--push",
            url,
            "--token-file",
            str(tokens),
            "--json",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


MEMBERS = 2000


@pytest.mark.slow
@pytest.mark.parametrize("when", ["before the answer", "after the answer"])
def test_killing_the_server_mid_push_loses_nothing_and_counts_nothing_twice(
    ledger: Ledger, tmp_path: Path, when: str
) -> None:
    # Enough resources that recording takes a while, so a kill lands inside it.
    root = tmp_path / "homes"
    homes(root, {f"m{i:04d}": 100 + i for i in range(MEMBERS)})
    config = agent_config(tmp_path, root)
    tokens = token_file(tmp_path, token(ledger, "scanner", sources=("homes",)))
    server = Server(ledger.config_file(PLAN + "[members]\nauto_register = true\n"), free_port())
    server.start()

    def kill_and_restart() -> None:
        server.kill()
        restart = threading.Timer(1.0, server.start)
        restart.daemon = True
        restart.start()

    proxy = CuttingProxy(server.port, kill_and_restart, after_answer=when == "after the answer")
    try:
        process = agent(config, f"http://127.0.0.1:{proxy.port}", tokens, "--retry-for", "90")
        out, err = process.communicate(timeout=180)
        assert process.returncode == 0, err
        assert proxy.cut.is_set()
        [result] = json.loads(out)
        # The agent retried after the cut; a scan the server had recorded is
        # answered as a replay, and counted once.
        if when == "after the answer":
            assert proxy.swallowed.startswith(b"HTTP/1.1 201 ")
            assert result["push"]["outcome"] == REPLAYED
        else:
            assert result["push"]["outcome"] in {RECORDED, REPLAYED}
        assert "trying again" in err

        assert scans_of(ledger, "homes") == [result["scan_id"]]
        assert sample_count(ledger) == MEMBERS
        status, usage = get(
            f"http://127.0.0.1:{server.port}/me/usage", token(ledger, "member", "m0007")
        )
        assert status == 200, usage
        assert usage["total"] == {"bytes": 107, "files": 1}
        assert outbox_of(tmp_path).pending() == []
    finally:
        proxy.close()
        server.stop()
