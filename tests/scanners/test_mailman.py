"""The `mailman` scanner: list archives on disk, owners from a file or a real Mailman 3 core.

Expected sizes come from the bytes each test writes. The REST tests run
against the session's real Mailman 3 core (tests/mailman_server.py); a few
failure modes no real server shows on demand (a hang, an HTML page) use a
tiny local HTTP server instead.
"""

from __future__ import annotations

import http.server
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scanners import mailman as mailman_module
from scanners.base import Measurement, OptionError, ResourceFailure, ScanItem, SourceError
from scanners.mailman import MailmanScanner, measure_folders, split
from scanners.tree import measure_tree
from tests.mailman_server import PASSWORD, MailmanServer, free_port, mailman
from tests.scanners.support import make_dir, public_dir, run_unprivileged, write

__all__ = ["mailman", "public_dir"]  # fixtures, used by name

KIND = "mailman_archive"


def scanner(archive_root: Path, **options: object) -> MailmanScanner:
    return MailmanScanner.from_options(
        "lists", {"archive_root": str(archive_root), **options}, Path()
    )


def with_owners(archive_root: Path, owners: str, **options: object) -> MailmanScanner:
    """A scanner whose owners file holds the TOML text OWNERS."""
    path = archive_root.parent / f"owners-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(owners, encoding="utf-8")
    path.chmod(0o644)
    return scanner(archive_root, owners_file=str(path), **options)


def measured(items: list[ScanItem]) -> dict[str, tuple[str | None, int, int]]:
    """Name -> (member, bytes, files), asserting that nothing failed."""
    result = {}
    for item in items:
        assert isinstance(item, Measurement), item
        assert item.kind == KIND
        assert item.name not in result
        result[item.name] = (item.member, item.bytes, item.files)
    return result


def details(items: list[ScanItem]) -> dict[str, object]:
    """Name -> detail of every measurement."""
    return {item.name: item.detail for item in items if isinstance(item, Measurement)}


def archive(root: Path, name: str, html: int | None = 0, mbox: int | None = 0) -> int:
    """Write list NAME's HTML archive and mbox folders with those sizes (None: no folder)."""
    total = 0
    if html is not None:
        (root / name / "2026-November").mkdir(parents=True)
        total += write(root / name / "index.html", 100)
        total += write(root / name / "2026-November" / "000001.html", html)
    if mbox is not None:
        (root / f"{name}.mbox").mkdir(parents=True)
        total += write(root / f"{name}.mbox" / f"{name}.mbox", mbox)
    return total


# The archive on disk


def test_both_folders_make_one_list_and_strays_are_ignored(tmp_path: Path) -> None:
    root = tmp_path / "private"
    root.mkdir()
    both = archive(root, "announce", html=5000, mbox=70_000)
    html_only = archive(root, "html-only", html=1234, mbox=None)
    mbox_only = archive(root, "mbox-only", html=None, mbox=4321)
    write(root / "README", 999)  # a file at the top: not a list
    (root / "elsewhere").symlink_to(tmp_path)  # a symlink: not a list
    (root / ".snapshot").mkdir()  # hidden: not a list
    (root / "lost+found").mkdir()
    owners = 'announce = "alice"\nhtml-only = "bob"\nmbox-only = "carol"\n'

    items = list(with_owners(root, owners).scan())

    assert [item.name for item in items] == ["announce", "html-only", "mbox-only"]
    assert measured(items) == {
        "announce": ("alice", both, 3),
        "html-only": ("bob", html_only, 2),
        "mbox-only": ("carol", mbox_only, 1),
    }
    assert details(items)["announce"] == {"list": "announce", "owners": 1}
    # The same numbers as the tree walk gives each folder.
    tree = [measure_tree(root / "announce"), measure_tree(root / "announce.mbox")]
    assert measured(items)["announce"][1:] == (sum(b for b, _ in tree), sum(f for _, f in tree))


def test_a_file_linked_into_both_folders_counts_once(tmp_path: Path) -> None:
    root = tmp_path / "private"
    root.mkdir()
    total = archive(root, "dev", html=10, mbox=20_000)
    os.link(root / "dev.mbox" / "dev.mbox", root / "dev" / "attachment.bin")
    # A second link inside the same folder, too.
    os.link(root / "dev" / "index.html", root / "dev" / "index-copy.html")

    items = list(with_owners(root, 'dev = "alice"').scan())

    assert measured(items) == {"dev": ("alice", total, 3)}


def test_one_directory_under_two_names_counts_once(tmp_path: Path) -> None:
    # What a bind mount of the mbox folder onto the archive folder looks
    # like to the walk: the same directory inode given twice.
    root = tmp_path / "private"
    root.mkdir()
    total = archive(root, "ops", html=300, mbox=None)

    assert measure_folders([root / "ops", root / "ops"]) == (total, 2)
    assert measure_folders([root / "gone", root / "gone.mbox"]) is None


def test_a_folder_name_that_is_not_utf8_is_recorded_escaped(tmp_path: Path) -> None:
    root = tmp_path / "private"
    root.mkdir()
    make_dir(os.fsencode(root) + b"/r\xe9sum\xe9")
    make_dir(os.fsencode(root) + b"/r\xe9sum\xe9.mbox")
    size = write(os.fsencode(root) + b"/r\xe9sum\xe9.mbox/r\xe9sum\xe9.mbox", 321)

    items = list(with_owners(root, "").scan())

    assert measured(items) == {"r\\xe9sum\\xe9": (None, size, 1)}
    assert details(items) == {"r\\xe9sum\\xe9": {"list": "r\\xe9sum\\xe9", "owners": 0}}


def test_lists_and_owners_the_other_side_does_not_know(tmp_path: Path) -> None:
    root = tmp_path / "private"
    root.mkdir()
    orphan = archive(root, "orphan", html=10, mbox=10)
    owners = 'orphan-not-here = "alice"\nnobody = []\n'
    nobody = archive(root, "nobody", html=7, mbox=None)

    items = list(with_owners(root, owners).scan())

    # On disk but unknown to the owners source, or without owners:
    # unattributed, never dropped. Known but not on disk: nothing.
    assert measured(items) == {
        "nobody": (None, nobody, 2),
        "orphan": (None, orphan, 3),
    }
    assert details(items)["nobody"] == {"list": "nobody", "owners": 0}


def test_owner_addresses_become_members(tmp_path: Path) -> None:
    root = tmp_path / "private"
    root.mkdir()
    sizes = {name: archive(root, name, html=i * 100) for i, name in enumerate("abcdef", 1)}
    owners = """\
a = "alice@example.org"             # the local part, by the default pattern
b = "Bob@Example.ORG"               # addresses are compared in lower case
c = "c.private@mailbox.example"     # mapped explicitly below
d = "Not+A.Member@example.org"      # "not+a.member" is no member name
e = "Weird Name"                    # neither an address nor a member name
f = "frank"                         # a member name as it is
"""
    found = with_owners(root, owners, owners_map={"C.Private@mailbox.example": "carol"}).scan()

    assert measured(list(found)) == {
        "a": ("alice", sizes["a"], 3),
        "b": ("bob", sizes["b"], 3),
        "c": ("carol", sizes["c"], 3),
        "d": (None, sizes["d"], 3),
        "e": (None, sizes["e"], 3),
        "f": ("frank", sizes["f"], 3),
    }


def test_a_custom_owner_pattern(tmp_path: Path) -> None:
    root = tmp_path / "private"
    root.mkdir()
    total = archive(root, "l1", html=5)
    other = archive(root, "l2", html=6)
    owners = 'l1 = "member-alice@coop.example"\nl2 = "alice@elsewhere.example"\n'
    pattern = r"^member-(?P<member>[a-z]+)@coop\.example$"

    items = list(with_owners(root, owners, owner_pattern=pattern).scan())

    assert measured(items) == {"l1": ("alice", total, 3), "l2": (None, other, 3)}


def test_two_owners_split_the_list_exactly(tmp_path: Path) -> None:
    root = tmp_path / "private"
    root.mkdir()
    # 3 files, 10_101 bytes: neither divides by 2 or 3.
    total = archive(root, "team", html=9_901, mbox=100)
    assert total == 10_101
    owners = """\
team = ["bob@example.org", "alice@example.org", "alice@home.example"]
"""
    items = list(with_owners(root, owners, owners_map={"alice@home.example": "alice"}).scan())

    # Two members (alice has two addresses): halves, the odd byte and file
    # to the first in sorted order.
    assert measured(items) == {
        "team/alice": ("alice", 5051, 2),
        "team/bob": ("bob", 5050, 1),
    }
    assert details(items) == {
        "team/alice": {"list": "team", "owners": 2, "shares": 1},
        "team/bob": {"list": "team", "owners": 2, "shares": 1},
    }


def test_unknown_co_owners_keep_their_share_unattributed(tmp_path: Path) -> None:
    root = tmp_path / "private"
    root.mkdir()
    total = archive(root, "mixed", html=1000, mbox=None)  # 1100 bytes, 2 files
    owners = 'mixed = ["carol", "Ext+Guest@partner.example", "x+y@partner.example", "bob"]\n'

    items = list(with_owners(root, owners).scan())

    # Four owners: bob and carol a quarter each, the two unknown ones half,
    # under a name no member can have.
    assert measured(items) == {
        "mixed/bob": ("bob", 275, 1),
        "mixed/carol": ("carol", 275, 1),
        "mixed/(unknown)": (None, 550, 0),
    }
    assert sum(size for _, size, _ in measured(items).values()) == total
    assert details(items)["mixed/(unknown)"] == {"list": "mixed", "owners": 4, "shares": 2}


@given(
    st.integers(min_value=0, max_value=10**15),
    st.integers(min_value=0, max_value=10**9),
    st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=8),
)
def test_split_is_exact_and_even(size: int, files: int, weights: list[int]) -> None:
    parts = split(size, files, weights)

    assert sum(b for b, _ in parts) == size
    assert sum(f for _, f in parts) == files
    owners = sum(weights)
    for (part_bytes, part_files), weight in zip(parts, weights, strict=True):
        # Each owner inside a part gets the even share, or one more.
        assert size // owners * weight <= part_bytes <= (size // owners + 1) * weight
        assert files // owners * weight <= part_files <= (files // owners + 1) * weight
    # Remainders go to the first owners: no later part has more per owner
    # (compared cross-multiplied, in integers).
    for i in range(len(parts) - 1):
        assert parts[i][0] * weights[i + 1] >= parts[i + 1][0] * weights[i]


def test_split_remainder_goes_to_the_first_owners() -> None:
    assert split(10, 2, [1, 1, 1]) == [(4, 1), (3, 1), (3, 0)]
    assert split(11, 5, [1, 3]) == [(3, 2), (8, 3)]
    with pytest.raises(ValueError, match="no owners"):
        split(1, 1, [])


def test_progress_is_reported_per_list(tmp_path: Path) -> None:
    root = tmp_path / "private"
    root.mkdir()
    for name in ("b", "a", "c"):
        archive(root, name, html=1, mbox=None)
    calls: list[tuple[str, int, int | None]] = []

    list(with_owners(root, "").scan(lambda *args: calls.append(args)))

    assert calls == [("a", 1, 3), ("b", 2, 3), ("c", 3, 3)]


def test_an_unreadable_folder_fails_that_list_and_every_share(public_dir: Path) -> None:
    root = public_dir / "private"
    root.mkdir()
    archive(root, "secret", html=10, mbox=10)
    archive(root, "shared", html=10, mbox=10)
    fine = archive(root, "fine", html=10, mbox=10)
    (root / "secret.mbox").chmod(0o700)
    (root / "shared" / "2026-November").chmod(0o700)
    owners = 'secret = "alice"\nshared = ["alice", "bob"]\nfine = "carol"\n'
    for directory, _dirs, files in os.walk(root):
        for name in files:
            (Path(directory) / name).chmod(0o644)
    source = with_owners(root, owners)

    items = run_unprivileged(lambda: list(source.scan()))

    failures = {i.name: (i.member, i.error) for i in items if isinstance(i, ResourceFailure)}
    assert failures == {
        "secret": ("alice", f"cannot read {root}/secret.mbox: Permission denied"),
        "shared/alice": ("alice", f"cannot read {root}/shared/2026-November: Permission denied"),
        "shared/bob": ("bob", f"cannot read {root}/shared/2026-November: Permission denied"),
    }
    assert measured([i for i in items if isinstance(i, Measurement)]) == {
        "fine": ("carol", fine, 3)
    }


def test_a_missing_or_unreadable_root_fails_the_source(public_dir: Path) -> None:
    with pytest.raises(SourceError, match=f"cannot list the archive root {public_dir}/nowhere"):
        list(with_owners(public_dir / "nowhere", "").scan())

    closed = public_dir / "closed"
    closed.mkdir(mode=0o700)
    archive(closed, "a", html=1)
    source = with_owners(closed, 'a = "alice"')

    def attempt() -> str:
        try:
            list(source.scan())
        except SourceError as exc:
            return str(exc)
        return "no error"

    assert run_unprivileged(attempt) == (
        f"cannot list the archive root {closed}: Permission denied"
    )


def test_a_bad_owners_file_fails_the_source(tmp_path: Path) -> None:
    root = tmp_path / "private"
    root.mkdir()
    archive(root, "a", html=1)
    with pytest.raises(SourceError, match=r"cannot read the owners file .*nope\.toml"):
        list(scanner(root, owners_file=str(tmp_path / "nope.toml")).scan())
    with pytest.raises(SourceError, match="is not valid TOML"):
        list(with_owners(root, "a = ").scan())
    with pytest.raises(SourceError, match="'a' must be a member name, an address, or a list"):
        list(with_owners(root, "a = 3").scan())


@pytest.mark.parametrize(
    ("options", "key", "problem"),
    [
        ({}, "owners_file", "exactly one of owners_file and rest_url"),
        (
            {"owners_file": "o.toml", "rest_url": "http://127.0.0.1:1/3.1"},
            "rest_url",
            "exactly one",
        ),
        ({"owners_file": "o.toml", "timeout": "5s"}, "timeout", "only applies with rest_url"),
        ({"owners_file": "o.toml", "rest_user": "x"}, "rest_user", "only applies with rest_url"),
        ({"rest_url": "http://127.0.0.1:1/3.1"}, "rest_password_file", "is required"),
        ({"rest_url": "ftp://host/3.1", "rest_password_file": "p"}, "rest_url", "http(s) URL"),
        (
            {"rest_url": "http://u:secret@127.0.0.1/3.1", "rest_password_file": "p"},
            "rest_url",
            "must not hold credentials",
        ),
        (
            {"rest_url": "http://127.0.0.1/3.1", "rest_password_file": "p", "timeout": "0"},
            "timeout",
            "more than 0",
        ),
        ({"owners_file": "o.toml", "owner_pattern": "(["}, "owner_pattern", "not a regular"),
        ({"owners_file": "o.toml", "owner_pattern": "^(.+)@"}, "owner_pattern", "named group"),
        (
            {"owners_file": "o.toml", "owners_map": {"a@b.example": "Not A Member"}},
            "owners_map.a@b.example",
            "must be a member name",
        ),
        ({"owners_file": "o.toml", "owners_map": {"alice": "alice"}}, "owners_map.alice", "@"),
        ({"owners_file": "o.toml", "owners": "x"}, "owners", "unknown key"),
    ],
)
def test_option_errors_name_their_key(options: dict[str, object], key: str, problem: str) -> None:
    with pytest.raises(OptionError) as caught:
        MailmanScanner.from_options("lists", {"archive_root": "/srv/lists", **options}, Path())
    assert caught.value.key == key
    assert problem in caught.value.problem


def test_relative_paths_are_taken_from_the_config_folder(tmp_path: Path) -> None:
    source = MailmanScanner.from_options(
        "lists", {"archive_root": "archives", "owners_file": "owners.toml"}, tmp_path
    )
    assert source.archive_root == tmp_path / "archives"
    assert source.owners == tmp_path / "owners.toml"


# REST failures no real server shows on demand


class _Handler(http.server.BaseHTTPRequestHandler):
    body = b""
    delay = 0.0

    def do_GET(self) -> None:
        time.sleep(self.delay)
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def fake_rest() -> Iterator[tuple[str, type[_Handler]]]:
    """A local HTTP server answering every GET with _Handler.body, after _Handler.delay."""
    handler = type("Handler", (_Handler,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    # A short poll: shutdown() waits for it, once per test.
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/3.1", handler
    finally:
        server.shutdown()
        server.server_close()


def rest_scanner(root: Path, url: str, password_file: Path, **options: object) -> MailmanScanner:
    return scanner(root, rest_url=url, rest_password_file=str(password_file), **options)


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "rest-password"
    path.write_text(f"{PASSWORD}\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"<html>Welcome to nginx</html>", "the answer is not JSON: '<html>Welcome to nginx"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"mailman_version": "3.3"}', "unexpected answer (no total_size or entries list)"),
        (b'{"total_size": 1, "entries": [{"list_name": "a"}]}', "no list_id or list_name"),
    ],
)
def test_a_strange_answer_fails_the_source(
    tmp_path: Path,
    password_file: Path,
    fake_rest: tuple[str, type[_Handler]],
    body: bytes,
    problem: str,
) -> None:
    url, handler = fake_rest
    handler.body = body
    with pytest.raises(SourceError) as caught:
        list(rest_scanner(tmp_path, url, password_file).scan())
    assert str(caught.value).startswith(f"Mailman REST {url}/lists")
    assert problem in str(caught.value)
    assert PASSWORD not in str(caught.value)


def test_a_hanging_server_times_out(
    tmp_path: Path, password_file: Path, fake_rest: tuple[str, type[_Handler]]
) -> None:
    url, handler = fake_rest
    handler.delay = 3.0
    started = time.monotonic()
    with pytest.raises(SourceError, match=r"no answer within 1 s \(timeout\)"):
        list(rest_scanner(tmp_path, url, password_file, timeout="1s").scan())
    assert time.monotonic() - started < 2.5


def test_a_closed_port_fails_the_source(tmp_path: Path, password_file: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/3.1"
    with pytest.raises(SourceError) as caught:
        list(rest_scanner(tmp_path, url, password_file).scan())
    assert str(caught.value) == (
        f"Mailman REST {url}/lists?count=200&page=1: cannot connect: Connection refused"
    )


def test_an_unreadable_password_file_fails_the_source(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/3.1"
    with pytest.raises(SourceError, match=r"cannot read rest_password_file .*/nope"):
        list(rest_scanner(tmp_path, url, tmp_path / "nope").scan())


# A real Mailman 3 core


@pytest.fixture
def lists_root(tmp_path: Path) -> Path:
    root = tmp_path / "archives" / "private"
    root.mkdir(parents=True)
    return root


def unique(prefix: str) -> str:
    """A list name no other test (or run against the same server) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_rest_owners_are_attributed(
    mailman: MailmanServer, lists_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    domain = mailman.new_domain()
    names = {key: unique(key) for key in ("solo", "pair", "stranger", "nobody", "mapped")}
    mailman.create_list(names["solo"], domain, ("alice@example.org",))
    mailman.create_list(names["pair"], domain, ("carol@example.org", "Bob@Example.org"))
    mailman.create_list(names["stranger"], domain, ("Visiting.Prof+lists@uni.example",))
    mailman.create_list(names["nobody"], domain)
    mailman.create_list(names["mapped"], domain, ("dave.private@mailbox.example",))
    mailman.create_list(unique("no-archive"), domain, ("alice@example.org",))
    sizes = {
        "solo": archive(lists_root, names["solo"], html=4096, mbox=123_457),
        "pair": archive(lists_root, names["pair"], html=1, mbox=10_000),  # 10101 bytes
        "stranger": archive(lists_root, names["stranger"], html=None, mbox=777),
        "nobody": archive(lists_root, names["nobody"], html=50, mbox=None),
        "mapped": archive(lists_root, names["mapped"], html=10, mbox=10),
    }
    not_in_mailman = unique("mm2-leftover")
    leftover = archive(lists_root, not_in_mailman, html=5, mbox=5)
    # Several pages of lists and of owners, to follow the pagination.
    monkeypatch.setattr(mailman_module, "_PAGE_SIZE", 1)
    source = rest_scanner(
        lists_root,
        mailman.rest_url,
        mailman.password_file,
        owners_map={"Dave.Private@mailbox.example": "dave"},
    )

    items = list(source.scan())

    pair = names["pair"]
    assert measured(items) == {
        names["solo"]: ("alice", sizes["solo"], 3),
        f"{pair}/bob": ("bob", 5051, 2),
        f"{pair}/carol": ("carol", 5050, 1),
        names["stranger"]: (None, sizes["stranger"], 1),
        names["nobody"]: (None, sizes["nobody"], 2),
        names["mapped"]: ("dave", sizes["mapped"], 3),
        not_in_mailman: (None, leftover, 3),
    }
    assert sizes["pair"] == 10_101
    details = {item.name: item.detail for item in items if isinstance(item, Measurement)}
    assert details[names["stranger"]] == {"list": names["stranger"], "owners": 1}
    assert details[f"{pair}/carol"] == {"list": pair, "owners": 2, "shares": 1}


def test_rest_owner_changes_show_on_the_next_scan(mailman: MailmanServer, lists_root: Path) -> None:
    domain = mailman.new_domain()
    name = unique("growing")
    list_id = mailman.create_list(name, domain, ("alice@example.org",))
    total = archive(lists_root, name, html=999, mbox=None)
    source = rest_scanner(lists_root, mailman.rest_url, mailman.password_file)
    assert measured(list(source.scan())) == {name: ("alice", total, 2)}

    mailman.add_owner(list_id, "erin@example.org")
    assert measured(list(source.scan())) == {
        f"{name}/alice": ("alice", 550, 1),
        f"{name}/erin": ("erin", 549, 1),
    }


def test_a_list_name_in_two_domains_is_unattributed(
    mailman: MailmanServer, lists_root: Path
) -> None:
    name = unique("twice")
    first = mailman.create_list(name, mailman.new_domain(), ("alice@example.org",))
    second = mailman.create_list(name, mailman.new_domain(), ("bob@example.org",))
    total = archive(lists_root, name, html=20, mbox=20)

    items = list(rest_scanner(lists_root, mailman.rest_url, mailman.password_file).scan())

    assert measured(items) == {name: (None, total, 3)}
    note = f"2 lists share this folder: {', '.join(sorted([first, second]))}"
    assert details(items) == {name: {"list": name, "owners": 0, "note": note}}


def test_a_wrong_password_fails_the_source_without_showing_it(
    mailman: MailmanServer, lists_root: Path, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password\n", encoding="utf-8")
    source = rest_scanner(lists_root, mailman.rest_url, wrong)

    with pytest.raises(SourceError) as caught:
        list(source.scan())

    assert str(caught.value) == (
        f"Mailman REST {mailman.rest_url}/lists?count=200&page=1: "
        "HTTP 401 Unauthorized: REST API authorization failed"
    )
    assert "not-the-password" not in str(caught.value)


def test_a_wrong_rest_root_fails_the_source(mailman: MailmanServer, lists_root: Path) -> None:
    url = mailman.rest_url.removesuffix("/3.1") + "/9.9"
    with pytest.raises(SourceError, match=r"/9.9/lists\?count=200&page=1: HTTP 404"):
        list(rest_scanner(lists_root, url, mailman.password_file).scan())
