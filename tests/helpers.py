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


def report_by_member(
    capsys: pytest.CaptureFixture[str], config: Path
) -> dict[str, dict[str, dict[str, Any]]]:
    """Member -> resource name -> resource, from `quotad report --json`.

    Checks on the way that each member's total is the sum of its resources.
    """
    report = run_json(capsys, "--config", str(config), "report", "--json")
    result = {}
    for entry in report:
        resources = {r["name"]: r for r in entry["resources"]}
        assert entry["total"]["bytes"] == sum(r["bytes"] for r in resources.values()), entry
        result[entry["member"]] = resources
    return result


def unattributed_rows(report_text: str) -> list[list[str]]:
    """The rows (source, kind, name, bytes, files) of `quotad report`'s unattributed table."""
    section = report_text.split("unattributed resources:\n", 1)[1].split("\n\n", 1)[0]
    return [line.split() for line in section.splitlines()[1:]]
