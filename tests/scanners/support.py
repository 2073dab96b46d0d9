"""Helpers and fixtures shared by the scanner tests."""

from __future__ import annotations

import multiprocessing
import multiprocessing.popen_fork
import multiprocessing.synchronize
import os
import pickle
import shutil
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

IN_CI = os.environ.get("CI") == "true"
NOBODY = 65534
# Imported above for run_unprivileged: the pool imports them lazily, and
# nobody may not be able to read the standard library (say, under /root).
_PRELOADED = (multiprocessing.popen_fork, multiprocessing.synchronize)
T = TypeVar("T")


def write(path: Path | bytes, size: int) -> int:
    """Create the file PATH holding SIZE bytes; return SIZE."""
    with open(path, "wb") as handle:  # noqa: PTH123 -- Path cannot take a raw bytes name
        handle.write(b"q" * size)
    return size


def make_dir(path: bytes) -> None:
    """Create directory PATH, whose name need not be UTF-8."""
    os.mkdir(path)  # noqa: PTH102 -- Path cannot take a raw bytes name


def run_unprivileged(function: Callable[[], T]) -> T:
    """FUNCTION's result, computed as user nobody when we are root (root reads everything)."""
    if os.geteuid() != 0:
        return function()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover -- the child reports through the pipe
        os.close(read_end)
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            payload = pickle.dumps((True, function()))
        except BaseException:  # everything must reach the parent
            payload = pickle.dumps((False, traceback.format_exc()))
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(payload)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    ok, value = pickle.loads(data)
    if not ok:
        raise AssertionError(f"unprivileged child failed:\n{value}")
    return value  # type: ignore[no-any-return]


def need_root(what: str) -> None:
    """Skip (fail under CI) unless we are root."""
    if os.geteuid() != 0:
        message = f"{what} needs root"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A fresh directory any user can traverse (pytest's tmp_path sits below a 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="quotad-tree-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for directory, _dirs, _files in os.walk(path):
            Path(directory).chmod(0o755)
        shutil.rmtree(path)


@pytest.fixture(params=[1, 2], ids=["in-process", "pool"])
def workers(request: pytest.FixtureRequest) -> int:
    value: int = request.param
    return value
