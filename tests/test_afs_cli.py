"""The `afs` source end to end through the `quotad` command, on both ledgers.

Against the session's real OpenAFS cell (tests/afs_cell.py), with `vos
examine -format` as the oracle for every figure; a fake `vos`
(tests/fake_vos.py) for a `vos` that fails and for 20,000 volumes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.afs_cell import AfsCell, afs, afs_cell
from tests.conftest import Ledger
from tests.fake_vos import BIG_PATTERN, CAPTURED_SERVER, big_listing, fake_vos
from tests.helpers import report_by_member, run, run_json, unattributed_rows

__all__ = ["afs", "afs_cell"]  # fixtures, used by name

PATTERN = r"^(user|mail)\.(?P<member>[a-z][a-z0-9_-]*)$"
MB = 1_000_000


def source(cell: AfsCell, *, vos: str = "/usr/bin/vos", servers: list[str] | None = None) -> str:
    """The `[[sources]]` table of an afs source on CELL."""
    return (
        '[[sources]]\nname = "afs"\nkind = "afs"\n'
        f"servers = {json.dumps(servers or [cell.fs_addr])}\n"
        f"volume_pattern = '{PATTERN}'\n"
        f"vos = {json.dumps(vos)}\n"
        f"vos_args = {json.dumps(cell.vos_args)}\n"
    )


def usage(capsys: pytest.CaptureFixture[str], config: Path) -> dict[str, dict[str, Any]]:
    """Member -> volume -> its resource object, from `quotad report --json`."""
    return report_by_member(capsys, config)


def unattributed(report_text: str) -> dict[str, int]:
    """Name -> bytes from the "unattributed resources" table of `quotad report`."""
    return {row[2]: int(row[3]) for row in unattributed_rows(report_text)}


def expected(cell: AfsCell, volume: str) -> dict[str, Any]:
    """What the report must say of VOLUME, from `vos examine -format`."""
    fields = cell.examine(volume)
    return {
        "bytes": int(fields["diskused"]) * 1024,
        "files": int(fields["filecount"]),
        "detail": {
            "id": int(fields["id"]),
            "server": cell.fs_addr,
            "partition": fields["part"],
            "maxquota_kb": int(fields["maxquota"]),
        },
    }


def shown(resource: dict[str, Any]) -> dict[str, Any]:
    return {key: resource[key] for key in ("bytes", "files", "detail")}


@pytest.mark.real
@pytest.mark.parametrize("failure", ["vos exits 1", "wrong server"])
def test_scan_report_and_a_failing_vos_keeps_the_earlier_values(
    ledger: Ledger,
    afs: AfsCell,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    failure: str,
) -> None:
    afs.create("user.alice", maxquota_kb=10_000)
    afs.fill("user.alice", 2 * MB)
    afs.backup("user.alice")
    afs.create("user.bob", maxquota_kb=0)
    afs.replicate("user.bob")
    afs.create("mail.carol", "b", maxquota_kb=3000)
    afs.fill("mail.carol", 1 * MB)
    afs.create("common.software")
    afs.create("user.Bad-Name")
    good = ledger.config_file(source(afs))

    scans = run_json(capsys, "--config", str(good), "scan", "--json")

    assert [(s["source"], s["kind"], s["status"], s["error"]) for s in scans] == [
        ("afs", "afs", "complete", None)
    ]
    rw = ("user.alice", "user.bob", "mail.carol", "common.software", "user.Bad-Name")
    oracle = {name: expected(afs, name) for name in rw}
    assert scans[0]["resources"] == len(rw)  # no backup, no read-only clone
    assert scans[0]["bytes"] == sum(o["bytes"] for o in oracle.values())
    earlier = usage(capsys, good)
    assert {m: {n: shown(r) for n, r in res.items()} for m, res in earlier.items()} == {
        "alice": {"user.alice": oracle["user.alice"]},
        "bob": {"user.bob": oracle["user.bob"]},
        "carol": {"mail.carol": oracle["mail.carol"]},
    }
    assert {r["kind"] for res in earlier.values() for r in res.values()} == {"afs_volume"}
    code, out, _ = run(capsys, "--config", str(good), "report")
    assert code == 0
    assert unattributed(out) == {
        "common.software": oracle["common.software"]["bytes"],
        "user.Bad-Name": oracle["user.Bad-Name"]["bytes"],
    }

    # alice writes more, but vos cannot answer: the source fails as a whole
    # and every earlier value stands.
    afs.fill("user.alice", 1 * MB)
    if failure == "vos exits 1":
        fake = fake_vos(tmp_path / "fake", {}, stderr="vos: server unreachable\n")
        bad = ledger.config_file(source(afs, vos=str(fake.path)))
        why = (
            f"{fake.path} listvol {afs.fs_addr} -format -noauth -config {afs.etc} failed for "
            f"server {afs.fs_addr} (exit status 1): vos: server unreachable; "
            f"fake vos: no answer for 'listvol {afs.fs_addr}'"
        )
    else:
        bad = ledger.config_file(source(afs, servers=["127.1.0.9"]))
        why = (
            f"/usr/bin/vos listvol 127.1.0.9 -format -noauth -config {afs.etc} failed for "
            "server 127.1.0.9 (exit status 1): Possible communication failure"
        )
    code, out, err = run(capsys, "--config", str(bad), "scan", "--json")

    assert code == 1
    (result,) = json.loads(out)
    assert (result["source"], result["status"]) == ("afs", "failed")
    assert result["error"].startswith(why)
    assert f"quotad: source afs failed: {why}" in err
    assert usage(capsys, bad) == earlier
    code, out, _ = run(capsys, "--config", str(bad), "report")
    assert "sources whose last scan did not complete:" in out
    assert why in out

    # vos answers again: the growth shows.
    run_json(capsys, "--config", str(good), "scan", "--json")
    alice = usage(capsys, good)["alice"]["user.alice"]
    assert shown(alice) == expected(afs, "user.alice")
    assert alice["bytes"] >= earlier["alice"]["user.alice"]["bytes"] + MB


@pytest.mark.real
def test_a_busy_volume_keeps_its_earlier_value_and_the_rest_counts(
    ledger: Ledger, afs: AfsCell, capsys: pytest.CaptureFixture[str]
) -> None:
    afs.create("user.erin", maxquota_kb=10_000)
    afs.fill("user.erin", 1 * MB)
    afs.create("user.frank")
    config = ledger.config_file(source(afs))
    run_json(capsys, "--config", str(config), "scan", "--json")
    before = usage(capsys, config)["erin"]["user.erin"]
    afs.fill("user.frank", 1 * MB)

    with afs.busy("user.erin") as volume_id:
        code, out, err = run(capsys, "--config", str(config), "scan", "--json")

    assert code == 1
    (result,) = json.loads(out)
    why = f"volume {volume_id} on {afs.fs_addr} /vicepa is busy (another vos operation holds it)"
    assert (result["status"], result["error"]) == ("partial", None)
    assert result["failures"] == [
        {"kind": "afs_volume", "name": "user.erin", "member": "erin", "error": why}
    ]
    assert "quotad: source afs partial: 1 resources could not be measured" in err
    now = usage(capsys, config)
    assert now["erin"]["user.erin"]["bytes"] == before["bytes"]
    assert now["erin"]["user.erin"]["error"] == why
    assert shown(now["frank"]["user.frank"]) == expected(afs, "user.frank")


@pytest.mark.real
def test_a_removed_volume_counts_zero_from_the_next_scan(
    ledger: Ledger, afs: AfsCell, capsys: pytest.CaptureFixture[str]
) -> None:
    afs.create("user.gina")
    afs.fill("user.gina", 500_000)
    afs.create("user.hank")
    config = ledger.config_file(source(afs))
    run_json(capsys, "--config", str(config), "scan", "--json")

    afs.vos("remove", "-id", "user.gina")
    (result,) = run_json(capsys, "--config", str(config), "scan", "--json")

    assert result["zeroed"] == 1
    now = usage(capsys, config)
    assert now["gina"] == {}
    assert shown(now["hank"]["user.hank"]) == expected(afs, "user.hank")


def test_twenty_thousand_volumes_are_parsed_and_recorded(
    ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """20,000 volumes of 5,000 members through `quotad scan`; bench/afs_listing.py times it."""
    listing, total_bytes, total_files = big_listing(20_000)
    vos = fake_vos(tmp_path / "fake", {f"listvol {CAPTURED_SERVER} /vicepa": listing})
    config = ledger.config_file(
        '[[sources]]\nname = "afs"\nkind = "afs"\n'
        f'servers = ["{CAPTURED_SERVER}"]\npartitions = ["a"]\n'
        f"volume_pattern = '{BIG_PATTERN}'\nvos = \"{vos.path}\"\n"
    )

    timings = []
    for _ in range(2):  # the first scan creates the resources and members
        start = time.perf_counter()
        (result,) = run_json(capsys, "--config", str(config), "scan", "--json")
        timings.append(time.perf_counter() - start)
        assert (result["status"], result["resources"]) == ("complete", 20_000)
        assert (result["bytes"], result["files"]) == (total_bytes, total_files)

    # Measured, never asserted: timings depend on the machine.
    with capsys.disabled():
        print(
            f"\n20,000 AFS volumes, {ledger.backend}: first scan {timings[0]:.2f} s, "
            f"rescan {timings[1]:.2f} s (parse + record through `quotad scan`)"
        )
    members = run_json(capsys, "--config", str(config), "member", "list", "--json")
    assert len(members) == 5000
