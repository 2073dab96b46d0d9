"""`quotad serve` as a real process on a free port."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from quotad.auth.service import TokenService
from quotad.db import session_scope
from quotad.members.service import MemberService
from tests.api.conftest import PLAN
from tests.conftest import Ledger


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get(url: str, token: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_serve_answers_healthz_and_me_usage(ledger: Ledger) -> None:
    config = ledger.config_file(PLAN)
    with session_scope(ledger.engine, write=True) as session:
        MemberService(session, "test").add("alice")
        _, token = TokenService(session, "test").create(role="member", member="alice")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "api", "--config", str(config), "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, body = get(f"{base}/healthz")
                break
            except (urllib.error.URLError, ConnectionError):
                assert process.poll() is None, process.communicate()[0]
                assert time.monotonic() < deadline, "quotad serve did not start in 30 s"
                time.sleep(0.1)
        assert (status, body) == (200, {"status": "ok"})
        status, body = get(f"{base}/me/usage", token)
        assert status == 200, body
        assert body["member"] == "alice"
        assert body["total"] == {"bytes": 0, "files": 0}
        status, body = get(f"{base}/me/usage")
        assert status == 401
        assert body["error"] == "unauthorized"
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    # uvicorn shuts down cleanly, then re-raises the signal it caught, as a
    # well-behaved process does (systemd counts that as a clean stop).
    assert process.returncode in {0, -signal.SIGTERM}, output
    assert "Application shutdown complete" in output
