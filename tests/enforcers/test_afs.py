"""The `afs` enforcer against a real OpenAFS cell (tests/afs_cell.py), `vos examine` the oracle.

Targets come from a real scan of the cell, as the enforcement service gets
them. Writes go through the real file server (`AfsCell.fill`, which raises
when `afsio` reports a failed write), so "restricted" means the file server
refused the data, and "lifted" that it took it again.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from quotad.enforcers.afs import MAX_QUOTA_KB, AfsEnforcer
from quotad.enforcers.base import EnforcerError, Saved, Target
from scanners.afs import AfsScanner
from scanners.base import Measurement, OptionError
from scanners.tree import TreeScanner
from tests.afs_cell import HOW_TO_INSTALL, VOS, AfsCell, AfsCellError, afs, afs_cell
from tests.conftest import need

__all__ = ["afs", "afs_cell"]  # fixtures, used by name

MB = 1_000_000
# Examine fields that are the volume's settings, not its use or its clock.
SETTINGS = ("name", "id", "serv", "part", "type", "maxquota", "minquota", "status", "flags")


def scanner(cell: AfsCell) -> AfsScanner:
    options = {"servers": [cell.fs_addr], "vos_args": cell.vos_args}
    return AfsScanner.from_options("afs", options, Path())


def enforcer(cell: AfsCell, **options: object) -> AfsEnforcer:
    """CELL's enforcer with OPTIONS, the enforcer's own keys of the source's table."""
    return AfsEnforcer.from_options(scanner(cell), options, Path())


def target(cell: AfsCell, volume: str, hard_bytes: int | None = None) -> Target:
    """VOLUME's resource from a real scan of CELL, as the enforcement service passes it."""
    found = {item.name: item for item in scanner(cell).scan() if isinstance(item, Measurement)}
    item = found[volume]
    return Target(
        member=item.member or "",
        source="afs",
        kind=item.kind,
        name=item.name,
        bytes=item.bytes,
        files=item.files,
        detail=item.detail,
        hard_bytes=hard_bytes,
    )


def settings(cell: AfsCell, volume: str) -> dict[str, str]:
    fields = cell.examine(volume)
    return {key: fields[key] for key in SETTINGS}


def quota(cell: AfsCell, volume: str) -> int:
    return int(cell.examine(volume)["maxquota"])


def used(cell: AfsCell, volume: str) -> int:
    return int(cell.examine(volume)["diskused"])


def refused(cell: AfsCell, volume: str, size: int) -> bool:
    """Whether the file server refused a SIZE-byte write into VOLUME (its use unchanged then)."""
    before = used(cell, volume)
    try:
        cell.fill(volume, size)
    except AfsCellError:
        assert used(cell, volume) == before
        return True
    return False


def snapshot_stored(enforcer: AfsEnforcer, resource: Target) -> Saved:
    """The snapshot as the ledger gives it back: through JSON."""
    saved = enforcer.snapshot(resource)
    stored: Saved = json.loads(json.dumps(saved))
    assert stored == saved
    return stored


@pytest.mark.real
@pytest.mark.parametrize("initial_kb", [10_000, 0], ids=["finite", "unlimited"])
def test_restrict_stops_writes_and_lift_restores_the_quota_exactly(
    afs: AfsCell, initial_kb: int
) -> None:
    afs.create("user.alice", maxquota_kb=initial_kb)
    afs.fill("user.alice", 3 * MB)
    before = settings(afs, "user.alice")
    use = used(afs, "user.alice")
    afs_enforcer = enforcer(afs)
    alice = target(afs, "user.alice")

    saved = snapshot_stored(afs_enforcer, alice)
    assert saved == {
        "volume": "user.alice",
        "id": int(before["id"]),
        "server": afs.fs_addr,
        "partition": "/vicepa",
        "maxquota_kb": initial_kb,
        "diskused_kb": use,
    }

    shown = "unlimited" if initial_kb == 0 else f"{initial_kb} KB"
    assert afs_enforcer.restrict(alice, saved) == (
        f"volume user.alice: quota {shown} -> {use} KB (its use): no more writes"
    )
    assert quota(afs, "user.alice") == use
    # Refused outright, not after the ~1 MB a write that starts under the
    # quota may run over it: the volume is at its quota already.
    assert refused(afs, "user.alice", 2 * MB)
    assert refused(afs, "user.alice", 1000)

    assert afs_enforcer.lift(alice, saved) == (
        f"volume user.alice: quota {use} KB -> {shown} (as before the restriction)"
    )
    assert settings(afs, "user.alice") == before
    assert not refused(afs, "user.alice", 1 * MB)


@pytest.mark.real
def test_restrict_and_lift_are_idempotent(afs: AfsCell) -> None:
    afs.create("user.bob", maxquota_kb=50_000)
    afs.fill("user.bob", 1 * MB)
    afs_enforcer = enforcer(afs)
    bob = target(afs, "user.bob")
    saved = snapshot_stored(afs_enforcer, bob)
    use = used(afs, "user.bob")

    afs_enforcer.restrict(bob, saved)
    # A retry (after a crash, say) with the snapshot taken before the first attempt.
    assert afs_enforcer.restrict(bob, saved) == (
        f"volume user.bob: quota already {use} KB with {use} KB used, no writes possible: unchanged"
    )
    assert quota(afs, "user.bob") == use

    afs_enforcer.lift(bob, saved)
    assert afs_enforcer.lift(bob, saved) == "volume user.bob: quota already 50000 KB: unchanged"
    assert quota(afs, "user.bob") == 50_000


@pytest.mark.real
def test_a_quota_already_under_the_use_is_never_raised(afs: AfsCell) -> None:
    afs.create("user.carol", maxquota_kb=10_000)
    afs.fill("user.carol", 2 * MB)
    # An admin lowered it below what the volume holds.
    afs.set_quota("user.carol", 500)
    afs_enforcer = enforcer(afs)
    carol = target(afs, "user.carol")
    saved = snapshot_stored(afs_enforcer, carol)

    message = afs_enforcer.restrict(carol, saved)

    assert message.startswith("volume user.carol: quota already 500 KB with ")
    assert quota(afs, "user.carol") == 500
    assert afs_enforcer.lift(carol, saved) == "volume user.carol: quota already 500 KB: unchanged"
    assert quota(afs, "user.carol") == 500


@pytest.mark.real
def test_a_vanished_volume_is_not_an_error_and_its_successor_is_left_alone(afs: AfsCell) -> None:
    afs.create("user.dora", maxquota_kb=4000)
    afs_enforcer = enforcer(afs)
    dora = target(afs, "user.dora")
    saved = snapshot_stored(afs_enforcer, dora)
    afs_enforcer.restrict(dora, saved)

    afs.vos("remove", "-id", "user.dora")
    gone = f"volume user.dora (ID {saved['id']}) no longer exists"
    assert afs_enforcer.lift(dora, saved) == f"{gone}: nothing to restore"
    assert afs_enforcer.restrict(dora, saved) == f"{gone}: nothing to restrict"
    with pytest.raises(EnforcerError, match=r"^volume user\.dora does not exist \(the VLDB"):
        afs_enforcer.snapshot(dora)

    # A new volume under the old name is another volume: not given the old quota.
    afs.create("user.dora", maxquota_kb=777)
    assert afs_enforcer.lift(dora, saved) == f"{gone}: nothing to restore"
    assert quota(afs, "user.dora") == 777


@pytest.mark.real
def test_a_renamed_volume_gets_its_quota_back(afs: AfsCell) -> None:
    afs.create("user.erin", maxquota_kb=8000)
    afs.fill("user.erin", 1 * MB)
    afs_enforcer = enforcer(afs)
    erin = target(afs, "user.erin")
    saved = snapshot_stored(afs_enforcer, erin)
    afs_enforcer.restrict(erin, saved)

    afs.rename("user.erin", "user.erin2")

    assert afs_enforcer.lift(erin, saved) == (
        f"volume user.erin2 (was user.erin): quota {saved['diskused_kb']} KB -> 8000 KB "
        "(as before the restriction)"
    )
    assert quota(afs, "user.erin2") == 8000


@pytest.mark.real
def test_a_busy_volume_is_an_error_and_a_clone_no_target(afs: AfsCell) -> None:
    afs.create("user.frank", maxquota_kb=3000)
    afs.backup("user.frank")
    afs_enforcer = enforcer(afs)
    frank = target(afs, "user.frank")
    saved = snapshot_stored(afs_enforcer, frank)

    with afs.busy("user.frank") as volume_id, pytest.raises(EnforcerError) as caught:
        afs_enforcer.restrict(frank, saved)
    assert str(caught.value).endswith(
        f"unexpected answer for volume {volume_id}: "
        f"volume {volume_id} is busy (another vos operation holds it)"
    )
    assert quota(afs, "user.frank") == 3000

    clone = Target("frank", "afs", "afs_volume", "user.frank.backup", 0)
    with pytest.raises(EnforcerError, match="is not a RW volume"):
        afs_enforcer.snapshot(clone)


@pytest.mark.real
def test_database_servers_that_do_not_answer(tmp_path: Path) -> None:
    if not os.access(VOS, os.X_OK):
        need("OpenAFS vos", HOW_TO_INSTALL)
    # The cell's name, its database server on loopback where nothing listens.
    (tmp_path / "ThisCell").write_text("test.example\n")
    (tmp_path / "CellServDB").write_text(">test.example #nowhere\n127.1.0.9 #nowhere\n")
    scan = AfsScanner.from_options(
        "afs",
        {"servers": ["127.1.0.9"], "vos_args": ["-noauth", "-config", str(tmp_path)]},
        Path(),
    )
    afs_enforcer = AfsEnforcer.from_options(scan, {"native_quota": True}, Path())
    alice = Target("alice", "afs", "afs_volume", "user.alice", 0, hard_bytes=MB)
    saved = {"volume": "user.alice", "id": 536870912, "maxquota_kb": 0}
    by_name = "Possible communication failure"
    # What vos also says of an ID the VLDB does not have: only the VLDB's
    # own answer can tell a vanished volume, and here it gives none.
    by_id = "Could not fetch the entry for volume number 536870912 from VLDB"

    started = time.monotonic()
    for act, volume, why in (
        (lambda: afs_enforcer.snapshot(alice), "user.alice", by_name),
        (lambda: afs_enforcer.restrict(alice, saved), "536870912", by_id),
        (lambda: afs_enforcer.lift(alice, saved), "536870912", by_id),
        (lambda: afs_enforcer.push_limit(alice), "user.alice", by_name),
    ):
        with pytest.raises(EnforcerError) as caught:
            act()
        # The examine's failure, not that of the VLDB check after it.
        assert str(caught.value) == (
            f"vos examine -id {volume} -format -noauth -config {tmp_path} failed for "
            f"volume {volume} (exit status 255): {why}"
        )
    assert time.monotonic() - started < 60


def test_a_missing_vos_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-vos"
    scan = AfsScanner.from_options("afs", {"servers": ["127.1.0.1"], "vos": str(missing)}, Path())
    afs_enforcer = AfsEnforcer.from_options(scan, {}, Path())
    alice = Target("alice", "afs", "afs_volume", "user.alice", 0)

    with pytest.raises(EnforcerError) as caught:
        afs_enforcer.lift(alice, {"id": 536870912, "maxquota_kb": 0})

    assert str(caught.value) == (
        f"{missing} examine -id 536870912 -format: cannot run {str(missing)!r} for volume "
        "536870912: No such file or directory (is openafs-client installed? see the source's "
        "`vos`)"
    )


@pytest.mark.parametrize(
    "saved", [{}, {"id": "536870912", "maxquota_kb": 0}, {"id": 1, "maxquota_kb": True}]
)
def test_a_snapshot_of_another_kind_is_refused(tmp_path: Path, saved: Saved) -> None:
    scan = AfsScanner.from_options("afs", {"servers": ["127.1.0.1"]}, Path())
    alice = Target("alice", "afs", "afs_volume", "user.alice", 0)

    with pytest.raises(EnforcerError, match="not an afs snapshot"):
        AfsEnforcer.from_options(scan, {}, tmp_path).lift(alice, saved)


# Native quotas.


@pytest.mark.real
def test_push_limit_sets_the_hard_limit_rounded_up_to_kb(afs: AfsCell) -> None:
    afs.create("user.gina", maxquota_kb=0)
    afs.fill("user.gina", 2 * MB)
    native = enforcer(afs, native_quota=True)

    assert enforcer(afs).push_limit(target(afs, "user.gina", 5 * MB)) is None
    assert native.push_limit(target(afs, "user.gina", None)) is None
    assert quota(afs, "user.gina") == 0

    # 5,000,001 bytes are 4882.8 KB: rounded up, never under the limit.
    gina = target(afs, "user.gina", 5 * MB + 1)
    assert native.push_limit(gina) == (
        "volume user.gina: quota unlimited -> 4883 KB (the hard limit of 5000001 bytes)"
    )
    assert quota(afs, "user.gina") == 4883
    assert native.push_limit(gina) is None

    # 0 KB would mean unlimited in AFS.
    assert native.push_limit(target(afs, "user.gina", 0)) is not None
    assert quota(afs, "user.gina") == 1

    too_large = target(afs, "user.gina", (MAX_QUOTA_KB + 1) * 1024)
    with pytest.raises(EnforcerError, match="over the largest AFS quota"):
        native.push_limit(too_large)
    assert quota(afs, "user.gina") == 1

    afs.vos("remove", "-id", "user.gina")
    assert native.push_limit(gina) is None


@pytest.mark.real
def test_the_file_server_holds_a_member_to_a_pushed_limit(afs: AfsCell) -> None:
    afs.create("user.hugo")
    afs.fill("user.hugo", 2 * MB)
    native = enforcer(afs, native_quota=True)

    native.push_limit(target(afs, "user.hugo", 1024 * 1024))

    assert refused(afs, "user.hugo", 1 * MB)
    native.push_limit(target(afs, "user.hugo", 10 * 1024 * 1024))
    assert not refused(afs, "user.hugo", 1 * MB)


@pytest.mark.real
def test_restrict_saves_the_pushed_limit_and_lift_restores_it(afs: AfsCell) -> None:
    afs.create("user.ivy", maxquota_kb=0)
    afs.fill("user.ivy", 1 * MB)
    native = enforcer(afs, native_quota=True)
    ivy = target(afs, "user.ivy", 10 * 1024 * 1024)
    native.push_limit(ivy)

    saved = snapshot_stored(native, ivy)
    assert saved["maxquota_kb"] == 10 * 1024
    native.restrict(ivy, saved)
    assert quota(afs, "user.ivy") == used(afs, "user.ivy")
    native.lift(ivy, saved)

    assert quota(afs, "user.ivy") == 10 * 1024
    assert native.push_limit(ivy) is None


# Options.


def test_options() -> None:
    scan = AfsScanner.from_options("afs", {"servers": ["127.1.0.1"]}, Path())

    assert AfsEnforcer.from_options(scan, {}, Path()).native_quota is False
    assert AfsEnforcer.from_options(scan, {"native_quota": True}, Path()).native_quota is True
    with pytest.raises(OptionError) as caught:
        AfsEnforcer.from_options(scan, {"native_quota": "yes"}, Path())
    assert caught.value.key == "native_quota"
    with pytest.raises(OptionError) as caught:
        AfsEnforcer.from_options(scan, {"native_quotas": True}, Path())
    assert (caught.value.key, caught.value.problem) == ("native_quotas", "unknown key")

    assert AfsEnforcer.available(scan) is None
    tree = TreeScanner.from_options("homes", {"path": "/srv/home/{member}"}, Path())
    assert AfsEnforcer.available(tree) == "the afs enforcer needs an afs source, not 'tree'"
    assert {"native_quota"} == set(AfsEnforcer.OPTIONS)
