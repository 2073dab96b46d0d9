"""Log lines: text and JSON, the scan and request ids they carry, X-Request-ID."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from quotad import logs
from quotad.config import LoggingSettings
from tests.api.conftest import NOW, PLAN, Api, bearer, z
from tests.conftest import Ledger

REPO = Path(__file__).resolve().parent.parent
TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
JSON = LoggingSettings(format="json", level="DEBUG")

log = logging.getLogger("quotad.test")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Each test configures the root logger; the next one finds it as it was."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)


def capture(settings: LoggingSettings = JSON, *, verbose: bool = False) -> io.StringIO:
    stream = io.StringIO()
    logs.configure(settings, verbose=verbose, stream=stream)
    return stream


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().split("\n") if line]


def test_json_lines_carry_the_context_and_the_extras() -> None:
    stream = capture()
    scan_id = uuid.uuid4()
    with logs.log_context(scan_id=scan_id, source="mail"), logs.log_context(member="alice"):
        log.info(
            "measured %s",
            "alice",
            extra={
                "bytes": 1024,
                "names": ["a", "b"],
                "odd": object(),
                "nan": float("nan"),
                "tuple_keys": {(1, 2): 3},
            },
        )
    log.warning("outside")
    inside, outside = lines(stream)
    assert re.fullmatch(TIME, inside.pop("time"))
    assert inside.pop("odd").startswith("<object object at")
    assert inside == {
        "level": "INFO",
        "logger": "quotad.test",
        "message": "measured alice",
        "scan_id": str(scan_id),
        "source": "mail",
        "member": "alice",
        "bytes": 1024,
        "names": ["a", "b"],
        "nan": "nan",
        "tuple_keys": "{(1, 2): 3}",
    }
    # Out of the block the fields are gone.
    assert {k: v for k, v in outside.items() if k != "time"} == {
        "level": "WARNING",
        "logger": "quotad.test",
        "message": "outside",
    }


def test_text_lines() -> None:
    stream = capture(LoggingSettings(format="text", level="INFO"))
    with logs.log_context(scan_id="s-1", request_id="r-1", source="homes"):
        log.info("scanned %d", 3)
    log.info("plain")
    empty: dict[str, int] = {}
    try:
        empty["k"]
    except KeyError:
        log.exception("failed")
    first, second, third, *trace = stream.getvalue().splitlines()
    assert re.fullmatch(TIME + r" ERROR quotad\.test failed", third)
    assert trace[0] == "Traceback (most recent call last):"
    assert trace[-1] == "KeyError: 'k'"
    assert re.fullmatch(
        TIME + r" INFO quotad\.test \[request=r-1 scan=s-1 source=homes\] scanned 3", first
    )
    assert re.fullmatch(TIME + r" INFO quotad\.test plain", second)


def test_the_level_is_the_configured_one_and_verbose_shows_debug() -> None:
    stream = capture(LoggingSettings(format="json", level="WARNING"))
    log.info("dropped")
    log.warning("kept")
    assert [line["message"] for line in lines(stream)] == ["kept"]
    stream = capture(LoggingSettings(format="json", level="WARNING"), verbose=True)
    log.debug("shown")
    assert [line["message"] for line in lines(stream)] == ["shown"]


def test_a_command_logs_warnings_unless_verbose() -> None:
    def level(configured: str, *, verbose: bool) -> str:
        settings = LoggingSettings(format="json", level=configured)
        return logs.command_settings(settings, verbose=verbose).level

    assert level("INFO", verbose=False) == "WARNING"
    assert level("ERROR", verbose=False) == "ERROR"
    assert level("INFO", verbose=True) == "INFO"
    assert level("WARNING", verbose=True) == "INFO"
    assert level("DEBUG", verbose=True) == "DEBUG"


def test_an_exception_is_one_line_with_its_traceback() -> None:
    stream = capture()
    try:
        _ = 1 / 0
    except ZeroDivisionError:
        log.exception("it broke")
    assert stream.getvalue().count("\n") == 1
    (line,) = lines(stream)
    assert line["message"] == "it broke"
    assert line["exc"].startswith("Traceback (most recent call last):")
    assert line["exc"].endswith("ZeroDivisionError: division by zero")


def test_configuring_again_replaces_the_handler() -> None:
    first = capture()
    second = capture()
    log.warning("once")
    assert first.getvalue() == ""
    assert [line["message"] for line in lines(second)] == ["once"]


def test_threads_keep_their_own_context() -> None:
    stream = capture()
    barrier = threading.Barrier(2)

    def work(scan_id: str) -> None:
        with logs.log_context(scan_id=scan_id):
            # Both threads are inside their blocks before either logs.
            barrier.wait()
            log.info(scan_id)
            barrier.wait()

    with logs.log_context(job="main-only"):
        threads = [threading.Thread(target=work, args=(n,)) for n in ("one", "two")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    got = lines(stream)
    assert sorted(line["message"] for line in got) == ["one", "two"]
    for line in got:
        assert line["scan_id"] == line["message"]
        # A new thread starts with an empty context, not its starter's.
        assert "job" not in line


# The HTTP API: X-Request-ID


@pytest.fixture
def api(ledger: Ledger) -> Iterator[Api]:
    settings = ledger.settings(PLAN)
    app = create_app(settings)
    with TestClient(app) as client:
        yield Api(ledger, settings, app, client)


def test_a_sane_request_id_is_echoed_and_others_replaced(api: Api) -> None:
    given = "req-0b6f6c1e/42:x"
    assert (
        api.client.get("/healthz", headers={"X-Request-ID": given}).headers["X-Request-ID"] == given
    )
    fresh = api.client.get("/healthz").headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", fresh)
    assert api.client.get("/healthz").headers["X-Request-ID"] != fresh
    for bad in ("x" * 129, "has space", "semi\x7f", "é"):
        raw = bad.encode("latin-1")
        response = api.client.get("/healthz", headers=[(b"X-Request-ID", raw)])
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"]), bad
    assert (
        api.client.get("/healthz", headers={"X-Request-ID": "y" * 128}).headers["X-Request-ID"]
        == "y" * 128
    )


def test_errors_carry_the_request_id_too(api: Api) -> None:
    for response in (
        api.client.get("/no/such/path", headers={"X-Request-ID": "e-404"}),
        api.client.get("/members", headers={"X-Request-ID": "e-401"}),
        api.client.get("/members", headers={"X-Request-ID": "e-401-bad", **bearer("nonsense")}),
    ):
        assert response.status_code in {401, 404}
        assert response.headers["X-Request-ID"] == response.request.headers["X-Request-ID"]


def test_an_unexpected_error_is_logged_with_its_request_id(api: Api) -> None:
    def explode() -> None:
        raise RuntimeError("boom")

    api.app.add_api_route("/explode", explode)
    stream = capture()
    with TestClient(api.app, raise_server_exceptions=False) as client:
        response = client.get("/explode", headers={"X-Request-ID": "crash-1"})
    assert response.status_code == 500
    assert response.headers["X-Request-ID"] == "crash-1"
    (error,) = [line for line in lines(stream) if line["logger"] == "api.errors"]
    assert error["request_id"] == "crash-1"
    assert "RuntimeError: boom" in error["exc"]


def test_a_pushed_scan_logs_its_scan_and_request_ids(api: Api) -> None:
    stream = capture()
    scan_id = str(uuid.uuid4())
    body: dict[str, Any] = {
        "scan_id": scan_id,
        "source": "homes",
        "started_at": z(NOW),
        "finished_at": z(NOW),
        "measurements": [
            {"member": "alice", "kind": "tree", "name": "alice", "bytes": 10, "files": 1}
        ],
    }
    headers = {"X-Request-ID": "push-7", **bearer(api.token("scanner"))}
    response = api.client.post("/scans", json=body, headers=headers)
    assert response.status_code == 201, response.text
    got = lines(stream)
    # POST /scans is a sync route: it runs in a worker thread, which must see the id.
    (recorded,) = [line for line in got if line["logger"] == "quotad.ingest"]
    assert recorded["request_id"] == "push-7"
    assert recorded["scan_id"] == scan_id
    assert recorded["source"] == "homes"
    assert recorded["level"] == "INFO"
    (access,) = [line for line in got if line["logger"] == "quotad.access"]
    assert access["request_id"] == "push-7"
    assert access["method"] == "POST"
    assert access["route"] == "/scans"
    assert access["status"] == 201
    assert access["duration_ms"] >= 0
    assert "scan_id" not in access

    # Refused: logged as a warning, with the ids.
    body["measurements"][0]["bytes"] = 11
    response = api.client.post("/scans", json=body, headers={**headers, "X-Request-ID": "p-8"})
    assert response.status_code == 409
    (refused,) = [
        line
        for line in lines(stream)
        if line["logger"] == "quotad.ingest" and line.get("request_id") == "p-8"
    ]
    assert refused["level"] == "WARNING"
    assert refused["scan_id"] == scan_id


# The command line


def test_a_scan_logs_its_scan_id(ledger: Ledger, tmp_path: Path) -> None:
    (tmp_path / "t" / "alice").mkdir(parents=True)
    (tmp_path / "t" / "alice" / "f").write_bytes(b"x" * 100)
    config = ledger.config_file(
        '[logging]\nformat = "json"\n'
        f'[[sources]]\nname = "t"\nkind = "tree"\npath = "{tmp_path}/t/{{member}}"\n'
    )
    command = [sys.executable, "-m", "quotad", "-v", "--config", str(config), "scan", "--json"]
    proc = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    (scan,) = json.loads(proc.stdout)
    got = [json.loads(line) for line in proc.stderr.splitlines()]
    mine = [line for line in got if line["logger"] == "quotad.scanning"]
    assert [line["message"] for line in mine] == [
        "scanned source t: 1 resources measured, 0 failed",
        "recorded scan of t: complete, 0 zeroed",
    ]
    for line in mine:
        assert line["scan_id"] == scan["scan_id"]
        assert line["source"] == "t"

    # Without -v a command logs warnings only: nothing here.
    command.remove("-v")
    proc = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
