"""Expanding `{member}` path patterns into member directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scanners.base import SourceError
from scanners.paths import display_path, expand_member_pattern, parse_member_pattern
from tests.scanners.support import make_dir, public_dir, run_unprivileged

__all__ = ["public_dir"]  # a fixture, used by name below


def make_dirs(root: Path, *names: str) -> None:
    for name in names:
        (root / name).mkdir(parents=True)


def test_members_are_the_directories_below_the_parent(tmp_path: Path) -> None:
    make_dirs(tmp_path, "bob", "alice", "Carol", "9", ".snapshot", "lost+found", "a\nb")
    (tmp_path / "file").write_text("not a member")
    (tmp_path / "link-to-alice").symlink_to(tmp_path / "alice")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    os.mkfifo(tmp_path / "fifo")

    assert expand_member_pattern(tmp_path / "{member}") == [
        ("9", tmp_path / "9"),
        ("Carol", tmp_path / "Carol"),
        ("a\nb", tmp_path / "a\nb"),
        ("alice", tmp_path / "alice"),
        ("bob", tmp_path / "bob"),
    ]


def test_text_around_the_placeholder_must_match_literally(tmp_path: Path) -> None:
    make_dirs(
        tmp_path,
        "site-alice.d",
        "site-bob.d",
        "site-.d",
        "siteXcarol.d",
        "site-dave",
        "other",
        "site.alice.d",
    )

    assert expand_member_pattern(tmp_path / "site-{member}.d") == [
        ("alice", tmp_path / "site-alice.d"),
        ("bob", tmp_path / "site-bob.d"),
    ]
    assert expand_member_pattern(tmp_path / "site.{member}.d") == [
        ("alice", tmp_path / "site.alice.d"),
    ]
    # Regex syntax in the literal text is literal too.
    make_dirs(tmp_path / "re", "a+b(alice)", "aab(bob)")
    assert expand_member_pattern(tmp_path / "re" / "a+b({member})") == [
        ("alice", tmp_path / "re" / "a+b(alice)"),
    ]


def test_the_rest_of_the_pattern_is_appended(tmp_path: Path) -> None:
    make_dirs(tmp_path, "alice/Maildir", "bob", "carol", "dave/Maildir/cur")
    # Not a directory, or a symlink: still a resource, whose measurement
    # then fails naming it, rather than a member silently left out.
    (tmp_path / "carol" / "Maildir").write_text("oops")
    (tmp_path / "erin").mkdir()
    (tmp_path / "erin" / "Maildir").symlink_to(tmp_path / "alice" / "Maildir")

    assert expand_member_pattern(f"{tmp_path}/{{member}}/Maildir") == [
        ("alice", tmp_path / "alice" / "Maildir"),
        ("carol", tmp_path / "carol" / "Maildir"),
        ("dave", tmp_path / "dave" / "Maildir"),
        ("erin", tmp_path / "erin" / "Maildir"),
    ]
    assert expand_member_pattern(f"{tmp_path}/{{member}}/Maildir/cur") == [
        ("dave", tmp_path / "dave" / "Maildir" / "cur"),
    ]


def test_a_rest_that_cannot_be_checked_is_kept(public_dir: Path) -> None:
    make_dirs(public_dir, "alice/Maildir", "bob/Maildir", "carol")
    (public_dir / "bob").chmod(0)

    pairs = run_unprivileged(lambda: expand_member_pattern(f"{public_dir}/{{member}}/Maildir"))

    assert pairs == [
        ("alice", public_dir / "alice" / "Maildir"),
        ("bob", public_dir / "bob" / "Maildir"),
    ]


def test_names_that_are_not_utf8_come_through_escaped(tmp_path: Path) -> None:
    base = os.fsencode(tmp_path)
    make_dir(base + b"/caf\xe9")
    make_dir(base + b"/w-\xff")

    pairs = expand_member_pattern(tmp_path / "{member}")
    assert [name for name, _ in pairs] == ["caf\udce9", "w-\udcff"]
    assert [os.fsencode(path) for _, path in pairs] == [base + b"/caf\xe9", base + b"/w-\xff"]
    assert expand_member_pattern(tmp_path / "w-{member}") == [("\udcff", pairs[1][1])]
    assert display_path(pairs[0][1]) == f"{tmp_path}/caf\\xe9"


def test_no_members_is_an_empty_list(tmp_path: Path) -> None:
    assert expand_member_pattern(tmp_path / "{member}") == []


def test_an_unlistable_parent_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as caught:
        expand_member_pattern(tmp_path / "missing" / "{member}")
    assert str(caught.value) == f"cannot list {tmp_path}/missing: No such file or directory"

    (tmp_path / "file").write_text("x")
    with pytest.raises(SourceError, match="Not a directory"):
        expand_member_pattern(tmp_path / "file" / "{member}" / "x")


def test_an_unreadable_parent_is_a_source_error(public_dir: Path) -> None:
    make_dirs(public_dir, "homes/alice")
    (public_dir / "homes").chmod(0o711)

    def attempt() -> str:
        try:
            expand_member_pattern(public_dir / "homes" / "{member}")
        except SourceError as exc:
            return str(exc)
        return "no error"

    assert run_unprivileged(attempt) == f"cannot list {public_dir}/homes: Permission denied"


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("/srv/home", "must contain {member} exactly once, found it 0 times"),
        ("/srv/{member}/{member}", "found it 2 times"),
        ("/srv/{member}{member}", "found it 2 times"),
        ("/srv/{mem/ber}", "found it 0 times"),
        ("/{member}", "cannot be in the first component"),
        ("/{member}/Maildir", "cannot be in the first component"),
        ("{member}/Maildir", "cannot be in the first component"),
        ("/srv/{member}/{user}", "unknown placeholder '{user}'"),
        ("/srv/{group}/{member}", "unknown placeholder '{group}'"),
        ("/srv/x{}/{member}", "unknown placeholder '{}'"),
    ],
)
def test_bad_patterns(pattern: str, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_member_pattern(pattern)
    assert problem in str(caught.value)
    assert repr(pattern) in str(caught.value)


def test_a_parsed_pattern() -> None:
    parsed = parse_member_pattern("/srv/mail/site-{member}.d/Maildir/cur")
    assert parsed.parent == Path("/srv/mail")
    assert parsed.rest == ("Maildir", "cur")
    assert parsed.entry_re.fullmatch("site-bob.d") is not None
    assert parsed.entry_re.fullmatch("site-.d") is None
    relative = parse_member_pattern("homes/{member}")
    assert relative.parent == Path("homes")
    assert relative.rest == ()
