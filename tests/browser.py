"""A real `quotad serve` and a real headless Chromium, for tests of the pages.

The browser is Debian's `chromium` (the Makefile installs it), driven by the
`playwright` package without its browser download. Import the fixtures you
use, and `browser` with them, into a conftest.py or the test module
(`pytest_plugins = ["tests.browser"]` would clash with importing the helpers:
pytest refuses a plugin module that is already imported). A missing browser or
`playwright` fails the run under CI=true and skips it elsewhere, like every
other real component.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import need

if TYPE_CHECKING:
    # Only for annotations: the module must import without playwright, so
    # that the fixtures can skip (or fail under CI) with a useful message.
    from playwright.sync_api import Browser, BrowserContext, Page

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHROMIUM = "/usr/bin/chromium"
START_LIMIT_S = 30
STOP_LIMIT_S = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    """A running `quotad serve`: its address, its config and its log."""

    base: str
    config: Path
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def output(self) -> str:
        """Everything the process has written so far (stdout and stderr)."""
        return self.log.read_text(encoding="utf-8", errors="replace")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            status: int = response.status
            return status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextmanager
def serve(config: Path, env: Mapping[str, str] | None = None) -> Iterator[Server]:
    """`python -m api --config CONFIG serve` on a free port, stopped with SIGTERM.

    quotad reads every QUOTAD_* variable as a config override, so the server
    gets none of the caller's: CONFIG is the whole config, plus what ENV adds.
    The log goes to a file beside CONFIG rather than a pipe: nobody reads a
    pipe while a page test runs, and a full one (access lines) would stall
    the server. The log is printed on exit, so pytest shows it with a failure.
    """
    port = free_port()
    log = config.with_name(f"{config.stem}-serve-{port}.log")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("QUOTAD_")}
    environ.update(env or {})
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "api", "--config", str(config), "serve", "--port", str(port)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            env=environ,
        )
    server = Server(f"http://127.0.0.1:{port}", config, log, process)
    try:
        deadline = time.monotonic() + START_LIMIT_S
        while not _healthy(f"{server.base}/healthz"):
            if process.poll() is not None:
                pytest.fail(
                    f"quotad serve exited with {process.returncode} before answering "
                    f"/healthz:\n{server.output}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"quotad serve did not answer /healthz in {START_LIMIT_S} s:\n{server.output}"
                )
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_LIMIT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        print(f"--- quotad serve log ({server.base}) ---\n{server.output}")


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Headless Chromium for the whole run (CHROMIUM overrides the path)."""
    try:
        from playwright.sync_api import sync_playwright  # noqa: PLC0415
    except ImportError as exc:
        need("The playwright package", f"run `make deps` ({exc})")
        raise AssertionError("unreachable") from exc
    executable = os.environ.get("CHROMIUM", DEFAULT_CHROMIUM)
    if not os.access(executable, os.X_OK):
        need(f"Chromium at {executable}", "apt-get install chromium, or set CHROMIUM")
    playwright = sync_playwright().start()
    try:
        # Playwright passes --no-sandbox itself (chromium_sandbox defaults to
        # False), which Chromium needs when the tests run as root.
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield launched
        finally:
            launched.close()
    finally:
        playwright.stop()


def _local(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname
    return host is None or host in {"127.0.0.1", "localhost", "::1"}


def _offline(context: BrowserContext) -> None:
    """Refuse every request off this machine.

    The pages must work without third-party hosts, and a test's time must not
    hang on whether the network answers (an unreachable CDN can stall a page
    load until Playwright's 30 s timeout).
    """
    context.route(lambda url: not _local(url), lambda route: route.abort())


@pytest.fixture
def desktop(browser: Browser) -> Iterator[Page]:
    """A fresh context and page at 1280x900; `page.context` is its BrowserContext."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    _offline(context)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture
def phone(browser: Browser) -> Iterator[Page]:
    """A fresh touch context and page the size of a phone (390x844 CSS px, 2x)."""
    context = browser.new_context(
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    _offline(context)
    try:
        yield context.new_page()
    finally:
        context.close()


def output_dir() -> Path:
    """Where page screenshots go: var/test-output/pages/, or TEST_OUTPUT_DIR."""
    override = os.environ.get("TEST_OUTPUT_DIR")
    folder = Path(override) if override else REPO_ROOT / "var" / "test-output" / "pages"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def screenshot(page: Page, name: str) -> Path:
    """A full-page PNG of PAGE named NAME (made file-name safe) in output_dir()."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", name.removesuffix(".png")).strip("-.") or "page"
    path = output_dir() / f"{stem}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
