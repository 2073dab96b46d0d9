"""Helpers the tests share: running the CLI in-process, and GNU find as an oracle."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from quotad.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`quotad ARGV...`: (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    """`quotad ARGV...`'s JSON output, asserting it succeeded."""
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    return json.loads(out)


def find_sizes(root: Path) -> tuple[int, int]:
    """Independent oracle: GNU find's own stat, each inode once, regular files only."""
    out = subprocess.run(
        ["find", str(root), "-xdev", "-type", "f", "-printf", r"%i %s\n"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    inodes = dict(line.split() for line in out.splitlines())
    return sum(int(size) for size in inodes.values()), len(inodes)
