"""The `afs` scanner against a real OpenAFS cell (tests/afs_cell.py), `vos examine` the oracle.

Every figure the scanner reports is compared with what `vos examine
-format` says of the same volume. What a real cell does not show on demand
(a `vos` that is missing, fails, hangs or prints garbage, a volume listed
on two servers) uses a fake `vos` replaying real output (tests/fake_vos.py).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from scanners.afs import AfsScanner
from scanners.base import Measurement, OptionError, ResourceFailure, ScanItem, SourceError
from tests.afs_cell import AfsCell, afs, afs_cell
from tests.fake_vos import CAPTURED_SERVER, captured, fake_vos, hanging_vos

__all__ = ["afs", "afs_cell"]  # fixtures, used by name

KIND = "afs_volume"
PATTERN = r"^(user|mail)\.(?P<member>[a-z][a-z0-9_-]*)$"
MB = 1_000_000


def scanner(cell: AfsCell | None = None, **options: object) -> AfsScanner:
    """A scanner of CELL's file server (or of the captured one), options overriding."""
    base: dict[str, object] = {"volume_pattern": PATTERN}
    if cell is not None:
        base |= {"servers": [cell.fs_addr], "vos_args": cell.vos_args}
    else:
        base |= {"servers": [CAPTURED_SERVER]}
    return AfsScanner.from_options("afs", base | options, Path())


def measured(items: list[ScanItem]) -> dict[str, Measurement]:
    """Name -> measurement, asserting nothing failed and no name came twice."""
    result: dict[str, Measurement] = {}
    for item in items:
        assert isinstance(item, Measurement), item
        assert item.kind == KIND
        assert item.name not in result
        result[item.name] = item
    return result


def oracle(cell: AfsCell, volume: str) -> tuple[int, int, dict[str, object]]:
    """(bytes, files, detail) of VOLUME as `vos examine -format` has it."""
    fields = cell.examine(volume)
    assert fields["type"] == "RW"
    detail = {
        "id": int(fields["id"]),
        "server": cell.fs_addr,
        "partition": fields["part"],
        "maxquota_kb": int(fields["maxquota"]),
    }
    return int(fields["diskused"]) * 1024, int(fields["filecount"]), detail


def assert_matches_examine(cell: AfsCell, found: dict[str, Measurement]) -> None:
    for name, item in found.items():
        assert (item.bytes, item.files, dict(item.detail)) == oracle(cell, name), name


# Against the real cell.


@pytest.mark.real
def test_every_rw_volume_equals_vos_examine_and_clones_are_not_counted(afs: AfsCell) -> None:
    afs.create("user.alice", maxquota_kb=10_000)
    afs.fill("user.alice", 3 * MB)
    afs.set_quota("user.alice", 5000)
    afs.backup("user.alice")
    afs.create("user.bob")
    afs.replicate("user.bob")
    afs.create("mail.carol", "b", maxquota_kb=2_000_000)
    afs.fill("mail.carol", 1 * MB)
    afs.create("common.software", maxquota_kb=0)
    afs.create("user.Bad-Name")

    found = measured(list(scanner(afs).scan()))

    # No .backup, no .readonly: only the RW volumes, on both partitions.
    assert set(found) == {
        "user.alice",
        "user.bob",
        "mail.carol",
        "common.software",
        "user.Bad-Name",
    }
    assert_matches_examine(afs, found)
    assert {name: item.member for name, item in found.items()} == {
        "user.alice": "alice",
        "user.bob": "bob",
        "mail.carol": "carol",
        # Of no member: recorded unattributed, never dropped.
        "common.software": None,
        "user.Bad-Name": None,
    }
    # Real data: the 3 MB written are in diskused (KB, rounded up to blocks).
    assert 3 * MB <= found["user.alice"].bytes < 3 * MB + 64 * 1024
    assert found["user.alice"].detail["maxquota_kb"] == 5000
    assert found["common.software"].detail["maxquota_kb"] == 0
    assert found["mail.carol"].detail["partition"] == "/vicepb"


@pytest.mark.real
def test_the_backup_clone_changes_nothing(afs: AfsCell) -> None:
    afs.create("user.dora")
    afs.fill("user.dora", 2 * MB)
    before = measured(list(scanner(afs).scan()))

    afs.backup("user.dora")
    afs.fill("user.dora", 1 * MB)
    after = measured(list(scanner(afs).scan()))

    assert set(after) == {"user.dora"}
    assert_matches_examine(afs, after)
    # The RW grew by what was written; the clone's copy of the old blocks is
    # not the member's.
    assert after["user.dora"].bytes - before["user.dora"].bytes >= 1 * MB


@pytest.mark.real
@pytest.mark.parametrize(
    ("partitions", "expected"),
    [
        ([], {"user.alice", "mail.carol"}),
        (["a", "b"], {"user.alice", "mail.carol"}),
        (["/vicepb"], {"mail.carol"}),
        (["vicepa"], {"user.alice"}),
    ],
)
def test_partitions_listed_or_all(afs: AfsCell, partitions: list[str], expected: set[str]) -> None:
    afs.create("user.alice", "a")
    afs.create("mail.carol", "b")

    found = measured(list(scanner(afs, partitions=partitions).scan()))

    assert set(found) == expected
    assert_matches_examine(afs, found)


@pytest.mark.real
def test_a_busy_volume_fails_alone_under_its_name(afs: AfsCell) -> None:
    afs.create("user.alice")
    afs.create("user.erin", maxquota_kb=100)
    afs.fill("user.erin", 50_000)

    with afs.busy("user.erin") as volume_id:
        items = list(scanner(afs).scan())

    failures = [item for item in items if isinstance(item, ResourceFailure)]
    assert failures == [
        ResourceFailure(
            "erin",
            KIND,
            "user.erin",
            f"volume {volume_id} on {afs.fs_addr} /vicepa is busy (another vos operation holds it)",
        )
    ]
    found = measured([item for item in items if isinstance(item, Measurement)])
    assert set(found) == {"user.alice"}
    assert_matches_examine(afs, found)


@pytest.mark.real
def test_an_offline_volume_is_still_measured(afs: AfsCell) -> None:
    afs.create("user.alice")
    afs.fill("user.alice", 200_000)
    afs.vos("offline", afs.fs_addr, "a", "user.alice")

    found = measured(list(scanner(afs).scan()))

    assert set(found) == {"user.alice"}
    assert_matches_examine(afs, found)
    assert found["user.alice"].bytes >= 200_000


@pytest.mark.real
def test_a_renamed_volume_is_a_new_resource(afs: AfsCell) -> None:
    afs.create("user.alice")
    afs.rename("user.alice", "user.alicia")

    found = measured(list(scanner(afs).scan()))

    assert {name: item.member for name, item in found.items()} == {"user.alicia": "alicia"}


@pytest.mark.real
def test_an_empty_cell_has_no_volumes(afs: AfsCell) -> None:
    assert list(scanner(afs).scan()) == []


@pytest.mark.real
def test_a_server_that_is_not_there(afs: AfsCell) -> None:
    absent = "127.1.0.9"  # loopback, where nothing listens

    with pytest.raises(SourceError) as caught:
        list(scanner(afs, servers=[absent]).scan())

    message = str(caught.value)
    assert message.startswith(f"vos listvol {absent} -format -noauth -config {afs.etc} failed")
    assert f"for server {absent} (exit status 1): " in message
    assert "Possible communication failure" in message


@pytest.mark.real
def test_a_partition_that_is_not_there(afs: AfsCell) -> None:
    with pytest.raises(SourceError, match=r"exit status 1.*partition /vicepc does not exist"):
        list(scanner(afs, partitions=["c"]).scan())


@pytest.mark.real
def test_a_live_listing_still_has_the_captured_shape(afs: AfsCell) -> None:
    """The parser tests replay tests/data/afs/; this says when real vos stops printing that."""
    afs.create("user.alice")

    def keys(listing: str, name: str) -> list[str]:
        block = listing.split(f"name\t\t{name}\n", 1)[1].split("END_OF_ENTRY", 1)[0]
        return ["name", *(line.split("\t", 1)[0] for line in block.splitlines())]

    live = afs.listvol("a")
    assert live.startswith(
        f"Total number of volumes on server {afs.fs_addr} partition /vicepa: 1 \n"
    )
    assert keys(live, "user.alice") == keys(captured("listvol-a.txt"), "user.alice")


# Failure modes no real cell shows on demand: a fake vos.


def test_a_missing_vos(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-vos"

    with pytest.raises(SourceError) as caught:
        list(scanner(vos=str(missing)).scan())

    assert str(caught.value) == (
        f"{missing} listvol {CAPTURED_SERVER} -format: cannot run {str(missing)!r} for server "
        f"{CAPTURED_SERVER}: No such file or directory (is openafs-client installed? "
        "see the source's `vos`)"
    )


def test_a_vos_that_fails_names_the_command_server_and_its_message(tmp_path: Path) -> None:
    vos = fake_vos(
        tmp_path,
        {},
        stderr="lots of noise\nmore noise\nvos: Could not fetch the list of partitions\n"
        "Possible communication failure\nError in vos listvol command.\n",
    )

    with pytest.raises(SourceError) as caught:
        list(scanner(vos=str(vos.path), vos_args=["-localauth"]).scan())

    assert str(caught.value) == (
        f"{vos.path} listvol {CAPTURED_SERVER} -format -localauth failed for server "
        f"{CAPTURED_SERVER} (exit status 1): Possible communication failure; "
        "Error in vos listvol command.; fake vos: no answer for 'listvol 127.1.0.1'"
    )


def test_a_vos_that_hangs_is_killed_with_its_children(tmp_path: Path) -> None:
    vos = hanging_vos(tmp_path)

    with pytest.raises(SourceError) as caught:
        list(scanner(vos=str(vos), timeout="1s").scan())

    assert str(caught.value) == (
        f"{vos} listvol {CAPTURED_SERVER} -format: no answer from server {CAPTURED_SERVER} "
        "within 1 s (timeout)"
    )
    # Its child held the pipes; it is gone too (or a zombie, until init reaps it).
    child = int((tmp_path / "child.pid").read_text())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{child}/stat").read_text()
        except FileNotFoundError:
            break
        if stat.rpartition(")")[2].split()[0] == "Z":
            break
        time.sleep(0.05)
    else:
        os.kill(child, 9)
        pytest.fail("the hanging vos's child survived the timeout")


@pytest.mark.parametrize(
    ("output", "problem"),
    [
        ("Usage: vos listvol ...\n", "line 1: unexpected 'Usage: vos listvol ...'"),
        # -extended's summary, say from a vos_args that changes the format.
        (captured("listvol-all.txt") + "VOLUMES_ONLINE\t8\n", "unexpected 'VOLUMES_ONLINE"),
        (captured("listvol-all.txt").rsplit("spare3", 1)[0], "the output ends inside an entry"),
    ],
)
def test_output_that_is_not_a_listing(tmp_path: Path, output: str, problem: str) -> None:
    vos = fake_vos(tmp_path, {f"listvol {CAPTURED_SERVER}": output})

    with pytest.raises(SourceError) as caught:
        list(scanner(vos=str(vos.path)).scan())

    assert str(caught.value).startswith(
        f"{vos.path} listvol {CAPTURED_SERVER} -format: unexpected output from {CAPTURED_SERVER}: "
    )
    assert problem in str(caught.value)


def test_a_server_without_partitions_fails_rather_than_counting_nothing(tmp_path: Path) -> None:
    vos = fake_vos(tmp_path, {f"listvol {CAPTURED_SERVER}": ""})

    with pytest.raises(SourceError, match="reports no partitions"):
        list(scanner(vos=str(vos.path)).scan())


def test_a_listing_of_another_partition_than_asked(tmp_path: Path) -> None:
    vos = fake_vos(tmp_path, {f"listvol {CAPTURED_SERVER} /vicepa": captured("listvol-b.txt")})

    with pytest.raises(SourceError, match=r"asked for /vicepa, 127\.1\.0\.1 listed /vicepb"):
        list(scanner(vos=str(vos.path), partitions=["a"]).scan())


def test_captured_output_through_the_scanner(tmp_path: Path) -> None:
    vos = fake_vos(
        tmp_path,
        {
            f"listvol {CAPTURED_SERVER}": captured("listvol-all.txt"),
            "listvldb": captured("listvldb.txt"),
        },
    )

    items = list(scanner(vos=str(vos.path), vos_args=["-noauth"]).scan())

    assert [(type(i).__name__, i.name, i.member) for i in items] == [
        ("Measurement", "abcdefghijklmnopqrstuv", None),
        ("Measurement", "common.software", None),
        ("Measurement", "mail.carol", "carol"),
        ("Measurement", "user.Bad-Name", None),
        ("Measurement", "user.alice", "alice"),
        ("Measurement", "user.bob", "bob"),
        ("ResourceFailure", "user.erin", "erin"),
    ]
    alice = measured(items[4:5])["user.alice"]
    assert (alice.bytes, alice.files) == (2932 * 1024, 2)
    assert alice.detail == {
        "id": 536870912,
        "server": CAPTURED_SERVER,
        "partition": "/vicepa",
        "maxquota_kb": 5000,
    }
    # One listing, and the VLDB once, for the busy volume's name; no
    # volume name ever reaches a command line.
    assert vos.calls() == [
        ["listvol", CAPTURED_SERVER, "-format", "-noauth"],
        ["listvldb", "-quiet", "-noauth"],
    ]


def test_the_vldb_is_not_asked_when_nothing_is_busy(tmp_path: Path) -> None:
    vos = fake_vos(tmp_path, {f"listvol {CAPTURED_SERVER} /vicepb": captured("listvol-b.txt")})

    found = measured(list(scanner(vos=str(vos.path), partitions=["b"]).scan()))

    assert set(found) == {"abcdefghijklmnopqrstuv", "mail.carol"}
    assert vos.calls() == [["listvol", CAPTURED_SERVER, "/vicepb", "-format"]]


def test_a_busy_volume_the_vldb_does_not_know(tmp_path: Path) -> None:
    vldb = captured("listvldb.txt").replace("RWrite: 536870927", "RWrite: 536870999")
    vos = fake_vos(
        tmp_path,
        {f"listvol {CAPTURED_SERVER} /vicepa": captured("listvol-a.txt"), "listvldb": vldb},
    )

    items = list(scanner(vos=str(vos.path), partitions=["a"]).scan())

    assert items[-1] == ResourceFailure(
        None,
        KIND,
        "(volume 536870927)",
        f"volume 536870927 on {CAPTURED_SERVER} /vicepa is busy (another vos operation "
        "holds it), and the VLDB does not know it: its name is unknown",
    )


def test_a_busy_clone_is_not_counted(tmp_path: Path) -> None:
    # The busy ID is user.alice's backup clone in this VLDB.
    vldb = (
        captured("listvldb.txt")
        .replace("RWrite: 536870927", "RWrite: 536870999")
        .replace("Backup: 536870914", "Backup: 536870927")
    )
    vos = fake_vos(
        tmp_path,
        {f"listvol {CAPTURED_SERVER} /vicepa": captured("listvol-a.txt"), "listvldb": vldb},
    )

    items = list(scanner(vos=str(vos.path), partitions=["a"]).scan())

    assert all(isinstance(item, Measurement) for item in items)
    assert "user.erin" not in {item.name for item in items}


def test_the_vldb_failing_fails_the_source(tmp_path: Path) -> None:
    vos = fake_vos(tmp_path, {f"listvol {CAPTURED_SERVER}": captured("listvol-all.txt")})

    why = r"listvldb -quiet failed for the VLDB \(to name volumes 536870927\) \(exit status 1\)"
    with pytest.raises(SourceError, match=why):
        list(scanner(vos=str(vos.path)).scan())


def test_a_volume_on_two_servers_fails_rather_than_charging_twice(tmp_path: Path) -> None:
    listing_b = captured("listvol-b.txt")
    # A second server holds another copy of mail.carol (a move in progress).
    copy = listing_b.replace("127.1.0.1", "127.1.0.2").replace("536870918", "536870940")
    vos = fake_vos(
        tmp_path,
        {f"listvol {CAPTURED_SERVER} /vicepb": listing_b, "listvol 127.1.0.2 /vicepb": copy},
    )

    items = list(
        scanner(vos=str(vos.path), servers=[CAPTURED_SERVER, "127.1.0.2"], partitions=["b"]).scan()
    )

    by_name = {item.name: item for item in items}
    assert by_name["mail.carol"] == ResourceFailure(
        "carol",
        KIND,
        "mail.carol",
        "volume listed 2 times (ID 536870918 on 127.1.0.1 /vicepb, ID 536870940 on "
        "127.1.0.2 /vicepb); cannot tell which copy is the volume (a vos move in progress?)",
    )


def test_one_server_under_two_names_counts_each_volume_once(tmp_path: Path) -> None:
    listing = captured("listvol-b.txt")
    vos = fake_vos(
        tmp_path,
        {
            f"listvol {CAPTURED_SERVER} /vicepb": listing,
            "listvol afs1.test /vicepb": listing.replace(
                f"server {CAPTURED_SERVER} partition", "server afs1.test partition"
            ),
        },
    )

    found = measured(
        list(
            scanner(
                vos=str(vos.path), servers=[CAPTURED_SERVER, "afs1.test"], partitions=["b"]
            ).scan()
        )
    )

    assert set(found) == {"abcdefghijklmnopqrstuv", "mail.carol"}
    assert found["mail.carol"].detail["server"] == CAPTURED_SERVER


def test_undecodable_names_are_escaped_the_same_way_every_scan(tmp_path: Path) -> None:
    listing = captured("listvol-b.txt").encode().replace(b"mail.carol", b"mail.caf\xe9")
    vos = fake_vos(tmp_path, {f"listvol {CAPTURED_SERVER} /vicepb": listing})
    afs_scanner = scanner(vos=str(vos.path), partitions=["b"])

    first = measured(list(afs_scanner.scan()))
    second = measured(list(afs_scanner.scan()))

    assert set(first) == set(second) == {"abcdefghijklmnopqrstuv", "mail.caf\\xe9"}
    # "caf\xe9" is no member name: unattributed.
    assert first["mail.caf\\xe9"].member is None


def test_progress_reports_each_listing(tmp_path: Path) -> None:
    listing = captured("listvol-b.txt")
    vos = fake_vos(tmp_path, {f"listvol {CAPTURED_SERVER} /vicepb": listing})
    calls: list[tuple[str, int, int | None]] = []

    list(scanner(vos=str(vos.path), partitions=["b"]).scan(lambda *a: calls.append(a)))

    assert calls == [(f"{CAPTURED_SERVER} /vicepb", 1, 1)]


@pytest.mark.parametrize(
    ("options", "key", "problem"),
    [
        ({"servers": None}, "servers", "is required"),
        ({"servers": []}, "servers", "must list at least one file server"),
        ({"servers": "afs1"}, "servers", "must be a list of strings"),
        ({"servers": ["-localauth"]}, "servers", "not a server name or address: '-localauth'"),
        ({"servers": ["afs1 afs2"]}, "servers", "not a server name"),
        ({"servers": ["afs1", "AFS1"]}, "servers", "'AFS1' is listed twice"),
        ({"partitions": ["a", "/vicepa"]}, "partitions", "/vicepa is listed twice"),
        ({"partitions": ["/vicepz9"]}, "partitions", "not a partition: '/vicepz9'"),
        ({"partitions": ["iw"]}, "partitions", "not a partition"),
        ({"volume_pattern": "user\\.(.*)"}, "volume_pattern", "needs a named group"),
        ({"volume_pattern": "("}, "volume_pattern", "not a regular expression"),
        ({"vos": ""}, "vos", "must name the vos program"),
        ({"vos_args": "-localauth"}, "vos_args", "must be a list of strings"),
        ({"timeout": "0s"}, "timeout", "must be more than 0 seconds"),
        ({"timeout": "soon"}, "timeout", "not a duration"),
        ({"server": ["afs1"]}, "server", "unknown key"),
    ],
)
def test_option_errors_name_the_key(options: dict[str, object], key: str, problem: str) -> None:
    raw: dict[str, object] = {"servers": ["afs1"], **options}
    raw = {k: v for k, v in raw.items() if v is not None}

    with pytest.raises(OptionError) as caught:
        AfsScanner.from_options("afs", raw, Path("/etc/quotad"))

    assert caught.value.key == key
    assert problem in caught.value.problem


def test_options_and_their_defaults() -> None:
    plain = AfsScanner.from_options("afs", {"servers": ["afs1"]}, Path("/etc/quotad"))
    assert (plain.partitions, plain.vos, plain.vos_args, plain.timeout) == ((), "vos", (), 300)
    assert plain.member_for("user.alice") == "alice"
    assert plain.member_for("user.Alice") is None
    assert plain.member_for("mail.alice") is None

    full = AfsScanner.from_options(
        "afs",
        {
            "servers": ["afs1", "10.0.0.2"],
            "partitions": ["a", "vicepb", "/vicepiv"],
            "vos": "bin/vos",
            "vos_args": ["-noauth", "-config", "/etc/x"],
            "timeout": "90s",
        },
        Path("/etc/quotad"),
    )
    assert full.partitions == ("a", "b", "iv")
    # Relative to the config file's folder, like every path in it.
    assert full.vos == "/etc/quotad/bin/vos"
    assert full.timeout == 90
