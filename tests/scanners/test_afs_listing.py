"""The `vos` output parsers, on verbatim output captured from a real cell (tests/data/afs/).

No cell needed: what `vos` 1.8.9 printed is replayed, then cut short,
garbled or extended to see that nothing but the real format gets through.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scanners.afs import ListingError, VolumeEntry, parse_listing, parse_vldb
from tests.afs_cell import parse_examine
from tests.fake_vos import big_listing, captured, template_block

LISTING_A = captured("listvol-a.txt")
LISTING_ALL = captured("listvol-all.txt")
BUSY_ID = 536870927


def by_name(entries: list[VolumeEntry]) -> dict[str | None, VolumeEntry]:
    return {entry.name: entry for entry in entries}


def test_a_real_listing_of_one_partition() -> None:
    entries = parse_listing(LISTING_A).entries

    assert [(e.name, e.type, e.status) for e in entries] == [
        (None, None, "BUSY"),
        ("common.software", "RW", "OK"),
        ("user.Bad-Name", "RW", "OK"),
        ("user.alice", "RW", "OK"),
        ("user.alice.backup", "BK", "OK"),
        ("user.bob", "RW", "OK"),
        ("user.bob.readonly", "RO", "OK"),
    ]
    assert {e.partition for e in entries} == {"/vicepa"}
    assert {e.address for e in entries} == {"127.1.0.1"}
    alice = by_name(entries)["user.alice"]
    assert (alice.id, alice.diskused_kb, alice.maxquota_kb, alice.filecount) == (
        536870912,
        2932,
        5000,
        2,
    )
    assert by_name(entries)["common.software"].maxquota_kb == 0


def test_the_listing_agrees_with_vos_examine() -> None:
    alice = by_name(parse_listing(LISTING_A).entries)["user.alice"]
    examined = parse_examine(captured("examine-user.alice.txt"))

    assert alice.id == int(examined["id"])
    assert alice.diskused_kb == int(examined["diskused"])
    assert alice.maxquota_kb == int(examined["maxquota"])
    assert alice.filecount == int(examined["filecount"])
    assert alice.partition == examined["part"]


def test_a_busy_volume_has_an_id_and_no_name_or_sizes() -> None:
    busy = parse_listing(LISTING_A).entries[0]

    assert busy == VolumeEntry(BUSY_ID, "/vicepa", "127.1.0.1", "BUSY")


def test_an_unattachable_volume_stops_after_its_status_like_a_busy_one() -> None:
    text = LISTING_A.replace("status\t\tBUSY", "status\t\tUNATTACHABLE")

    assert parse_listing(text).entries[0] == VolumeEntry(
        BUSY_ID, "/vicepa", "127.1.0.1", "UNATTACHABLE"
    )


def test_an_older_vos_names_a_busy_volume() -> None:
    text = LISTING_A.replace(f"id\t\t{BUSY_ID}\n", f"name\t\tuser.erin\nid\t\t{BUSY_ID}\n", 1)

    assert parse_listing(text).entries[0].name == "user.erin"


def test_every_partition_under_its_own_header() -> None:
    entries = parse_listing(LISTING_ALL).entries

    assert [(e.partition, e.name) for e in entries if e.partition == "/vicepb"] == [
        ("/vicepb", "abcdefghijklmnopqrstuv"),
        ("/vicepb", "mail.carol"),
    ]
    assert len(entries) == 9
    carol = by_name(entries)["mail.carol"]
    assert (carol.diskused_kb, carol.maxquota_kb, carol.filecount) == (1467, 2000000, 1)


def test_partitions_without_volumes() -> None:
    text = (
        "Total number of volumes on server 127.1.0.1 partition /vicepa: 0 \n"
        "Total number of volumes on server 127.1.0.1 partition /vicepb: 0 \n"
    )
    listing = parse_listing(text)

    assert listing.partitions == ("/vicepa", "/vicepb")
    assert listing.entries == []


@pytest.mark.parametrize(
    "name",
    [
        "user.Bad-Name",
        "abcdefghijklmnopqrstuv",
        "x",
        # Not names the VLDB takes, but a volume header can hold them (a
        # restored dump, a zapped entry): the parser passes them on as data.
        "END_OF_ENTRY",
        "BEGIN_OF_ENTRY",
        "has space",
        "tab\tinside",
        "rm -rf $(x); `y`",
        "caf\udcc3\udca9",  # undecodable bytes, as surrogate escapes
    ],
)
def test_odd_names_are_data(name: str) -> None:
    text = LISTING_A.replace("name\t\tuser.bob\n", f"name\t\t{name}\n")

    names = [e.name for e in parse_listing(text).entries]

    assert name in names
    assert "user.bob" not in names


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (("diskused\t2932\n", "diskused\t-1\n"), "diskused is not a whole number: '-1'"),
        (("diskused\t2932\n", "diskused\t2.9K\n"), "diskused is not a whole number"),
        (("filecount\t2\n", "filecount\t\u0662\n"), "filecount is not a whole number"),
        (("diskused\t2932\n", ""), "has no 'diskused'"),
        (("maxquota\t5000\nminquota", "minquota"), "has no 'maxquota'"),
        (("type\t\tRW\ncreationDate", "creationDate"), "has no 'type'"),
        (("id\t\t536870912\n", ""), "no 'id' line"),
        (
            ("part\t\t/vicepa\n", "part\t\t/vicepb\n"),
            "partition '/vicepb' under the /vicepa header",
        ),
        (("diskused\t2932\n", "diskused\t2932\ndiskused\t1\n"), "expected a field"),
        (("diskused\t2932\n", "diskused 2932\n"), "expected a field or END_OF_ENTRY"),
        (("name\t\tuser.alice\n", "name\t\t\n"), "has no 'name'"),
    ],
)
def test_a_damaged_entry_is_refused(change: tuple[str, str], problem: str) -> None:
    block = template_block()
    old, new = change
    assert old in block
    text = LISTING_A.replace(block, block.replace(old, new, 1))

    with pytest.raises(ListingError, match=problem.replace("(", r"\(")):
        parse_listing(text)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("vos: server 'afs9' not found in host table\n", "line 1: unexpected"),
        ("<html><body>502 Bad Gateway</body></html>\n", "line 1: unexpected"),
        ("BEGIN_OF_ENTRY\nid\t\t1\nEND_OF_ENTRY\n", "an entry before any partition header"),
        (
            (
                "Total number of volumes on server s partition /vicepa: 1 \nBEGIN_OF_ENTRY\n"
                "BEGIN_OF_ENTRY\n"
            ),
            "line 3: expected a field",
        ),
        (
            "Total number of volumes on server s partition /vicepa: 2 \n",
            "/vicepa: the header announces 2 volumes, 0 listed",
        ),
        (
            # -extended output: a summary the -format listing never has.
            LISTING_A + "VOLUMES_ONLINE\t6\n",
            "unexpected 'VOLUMES_ONLINE\\\\t6'",
        ),
        ("x" * 500, r"unexpected 'x{80}\.\.\.'"),
        ("", "no partition header"),
        ("\n\n", "no partition header"),
    ],
)
def test_anything_but_a_listing_is_refused(text: str, problem: str) -> None:
    with pytest.raises(ListingError, match=problem):
        parse_listing(text)


def test_output_cut_short_anywhere_is_refused() -> None:
    lines = LISTING_ALL.split("\n")
    last_end = max(i for i, line in enumerate(lines) if line == "END_OF_ENTRY")
    # Cut just before the second partition's header, the output is a whole
    # listing of one partition: only vos's exit status can tell, and the
    # scanner takes nothing but 0.
    second = lines.index("Total number of volumes on server 127.1.0.1 partition /vicepb: 2 ")
    for cut in range(1, last_end + 1):
        text = "\n".join(lines[:cut])
        if second - 1 <= cut <= second:
            assert [e.partition for e in parse_listing(text).entries] == ["/vicepa"] * 7
            continue
        with pytest.raises(ListingError):
            parse_listing(text)
    # Every entry there: only the trailing blank line is missing.
    assert len(parse_listing("\n".join(lines[: last_end + 1])).entries) == 9


@given(st.integers(min_value=0, max_value=len(LISTING_A) - 1))
def test_output_cut_at_any_character_is_refused_or_whole(cut: int) -> None:
    text = LISTING_A[:cut]
    try:
        entries = parse_listing(text).entries
    except ListingError:
        return
    # Only a cut in the trailing blank line leaves a whole listing.
    assert entries == parse_listing(LISTING_A).entries
    assert text.rstrip("\n") == LISTING_A.rstrip("\n")


def test_a_big_generated_listing_parses_to_its_totals() -> None:
    text, total_bytes, total_files = big_listing(2000)

    entries = parse_listing(text).entries

    assert len(entries) == 2000
    assert len({e.name for e in entries}) == 2000
    assert sum((e.diskused_kb or 0) * 1024 for e in entries) == total_bytes
    assert sum(e.filecount or 0 for e in entries) == total_files


def test_the_vldb_names_every_id_with_its_role() -> None:
    vldb = parse_vldb(captured("listvldb.txt"))

    assert vldb[BUSY_ID] == ("user.erin", "RWrite")
    assert vldb[536870912] == ("user.alice", "RWrite")
    assert vldb[536870914] == ("user.alice", "Backup")
    assert vldb[536870916] == ("user.bob", "ROnly")
    assert len(vldb) == 9


def test_the_vldb_listing_with_its_header_and_total() -> None:
    text = "VLDB entries for all servers \n" + captured("listvldb.txt") + "\nTotal entries: 7\n"

    assert parse_vldb(text) == parse_vldb(captured("listvldb.txt"))
