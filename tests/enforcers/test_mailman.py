"""The `mailman` enforcer against the real Mailman 3 core of tests/mailman_server.py.

Targets come from the scanner's own scan of a throwaway archive root, so their
names are what the ledger will hand the enforcer. Whether a post is archived
is read from the core's prototype archiver (a Maildir per list), and whether
it is held from the list's held messages, after injecting it as incoming mail.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from quotad.enforcers.base import EnforcerError, Target
from quotad.enforcers.mailman import MailmanEnforcer
from scanners.base import Measurement, OptionError
from scanners.mailman import MailmanScanner
from tests.mailman_server import PASSWORD, MailmanServer, free_port, mailman

__all__ = ["mailman"]  # a fixture, used by name

# Posts go through three runners that each poll their queue about once a second.
WITHIN = 60.0


def scanner_for(root: Path, **options: object) -> MailmanScanner:
    return MailmanScanner.from_options("lists", {"archive_root": str(root), **options}, Path())


def rest_scanner(mailman: MailmanServer, root: Path) -> MailmanScanner:
    return scanner_for(
        root, rest_url=mailman.rest_url, rest_password_file=str(mailman.password_file)
    )


def targets(mailman: MailmanServer, tmp_path: Path, *list_names: str) -> dict[str, Target]:
    """Resource name -> target, from a scan of archives made for LIST_NAMES."""
    root = tmp_path / "archives"
    for name in list_names:
        (root / name).mkdir(parents=True)
        (root / name / "index.html").write_bytes(b"x" * 600)
    result = {}
    for item in rest_scanner(mailman, root).scan():
        assert isinstance(item, Measurement), item
        if item.member is not None:
            result[item.name] = Target(
                member=item.member,
                source="lists",
                kind=item.kind,
                name=item.name,
                bytes=item.bytes,
                files=item.files,
                detail=item.detail,
            )
    return result


def enforcer(mailman: MailmanServer, tmp_path: Path) -> MailmanEnforcer:
    return MailmanEnforcer.from_options(rest_scanner(mailman, tmp_path), {}, tmp_path)


def policy(mailman: MailmanServer, list_id: str) -> str:
    value: str = mailman.get(f"lists/{list_id}/config/archive_policy")["archive_policy"]
    return value


def set_policy(mailman: MailmanServer, list_id: str, value: str) -> None:
    mailman.request("PATCH", f"lists/{list_id}/config", {"archive_policy": value})


def action(mailman: MailmanServer, member_id: str) -> str | None:
    value: str | None = mailman.get(f"members/{member_id}").get("moderation_action")
    return value


def nonmembers(mailman: MailmanServer, list_id: str, address: str) -> int:
    found = mailman.request(
        "POST", "members/find", {"list_id": list_id, "subscriber": address, "role": "nonmember"}
    )
    count: int = found["total_size"]
    return count


def unique(name: str) -> str:
    """A list name no other test uses: the scanner matches names across all domains."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WITHIN
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {WITHIN:.0f} s")
        time.sleep(0.25)


# Which sources can be enforced on


def test_a_source_with_an_owners_file_cannot_be_enforced_on(tmp_path: Path) -> None:
    owners = tmp_path / "owners.toml"
    owners.write_text('announce = "alice"\n', encoding="utf-8")
    reason = MailmanEnforcer.available(scanner_for(tmp_path, owners_file=str(owners)))
    assert reason is not None
    assert "rest_url" in reason
    assert "\n" not in reason


def test_a_source_with_the_rest_api_can(mailman: MailmanServer, tmp_path: Path) -> None:
    assert MailmanEnforcer.available(rest_scanner(mailman, tmp_path)) is None


def test_the_enforcer_has_no_options_of_its_own(mailman: MailmanServer, tmp_path: Path) -> None:
    with pytest.raises(OptionError) as caught:
        MailmanEnforcer.from_options(rest_scanner(mailman, tmp_path), {"shared": "hold"}, tmp_path)
    assert caught.value.key == "shared"


# A list with one owner: its archive stops


@pytest.mark.parametrize("before", ["public", "private"])
def test_restrict_stops_the_archive_and_lift_restores_the_policy(
    mailman: MailmanServer, tmp_path: Path, before: str
) -> None:
    domain = mailman.new_domain()
    name = unique("solo")
    list_id = mailman.create_list(name, domain, (f"alice@{domain}",))
    set_policy(mailman, list_id, before)
    target = targets(mailman, tmp_path, name)[name]
    assert target.member == "alice"
    lists = enforcer(mailman, tmp_path)

    saved = lists.snapshot(target)
    assert saved["archive_policy"] == before
    message = lists.restrict(target, saved)
    assert policy(mailman, list_id) == "never"
    assert f"{before} -> never" in message
    # Idempotent: a retried restrict changes nothing and says so.
    assert "already" in lists.restrict(target, saved)
    assert policy(mailman, list_id) == "never"

    message = lists.lift(target, saved)
    assert policy(mailman, list_id) == before
    assert f"never -> {before}" in message
    assert "already" in lists.lift(target, saved)
    assert policy(mailman, list_id) == before


def test_a_restricted_list_archives_no_post_and_a_lifted_one_does(
    mailman: MailmanServer, tmp_path: Path
) -> None:
    domain = mailman.new_domain()
    name, control_name = unique("quiet"), unique("control")
    list_id = mailman.create_list(name, domain, (f"alice@{domain}",))
    control = mailman.create_list(control_name, domain, (f"carol@{domain}",))
    mailman.subscribe(list_id, f"alice@{domain}")
    mailman.subscribe(control, f"alice@{domain}")
    target = targets(mailman, tmp_path, name, control_name)[name]
    lists = enforcer(mailman, tmp_path)
    saved = lists.snapshot(target)
    lists.restrict(target, saved)

    unarchived = mailman.post(list_id, f"alice@{domain}", "while restricted")
    # One runner per queue, in arrival order: once the later post to an
    # unrestricted list is archived, the earlier one has been through too.
    marker = mailman.post(control, f"alice@{domain}", "control")
    wait_for(lambda: marker in mailman.archived(control), "the control post archived")
    assert unarchived not in mailman.archived(list_id)
    assert unarchived not in mailman.held(list_id)

    lists.lift(target, saved)
    archived = mailman.post(list_id, f"alice@{domain}", "after lift")
    wait_for(lambda: archived in mailman.archived(list_id), "the post after lift archived")
    assert unarchived not in mailman.archived(list_id)


def test_lift_restores_the_saved_policy_even_if_changed_meanwhile(
    mailman: MailmanServer, tmp_path: Path
) -> None:
    domain = mailman.new_domain()
    name = unique("moved")
    list_id = mailman.create_list(name, domain, (f"alice@{domain}",))
    set_policy(mailman, list_id, "private")
    target = targets(mailman, tmp_path, name)[name]
    lists = enforcer(mailman, tmp_path)
    saved = lists.snapshot(target)
    lists.restrict(target, saved)
    # The list's owner turns archiving back on in Postorius.
    set_policy(mailman, list_id, "public")
    lists.lift(target, saved)
    assert policy(mailman, list_id) == "private"


def test_a_list_deleted_meanwhile_is_nothing_to_lift(
    mailman: MailmanServer, tmp_path: Path
) -> None:
    domain = mailman.new_domain()
    name = unique("gone")
    list_id = mailman.create_list(name, domain, (f"alice@{domain}",))
    target = targets(mailman, tmp_path, name)[name]
    lists = enforcer(mailman, tmp_path)
    saved = lists.snapshot(target)
    lists.restrict(target, saved)
    mailman.delete_list(list_id)
    assert "no longer exists" in lists.lift(target, saved)
    assert "no longer exists" in lists.restrict(target, saved)


def test_an_archive_with_no_list_behind_it_is_nothing_to_stop(
    mailman: MailmanServer, tmp_path: Path
) -> None:
    target = Target("alice", "lists", "mailman_archive", unique("nolist"), 100)
    lists = enforcer(mailman, tmp_path)
    saved = lists.snapshot(target)
    assert saved["list_id"] is None
    assert "nothing to stop" in lists.restrict(target, saved)
    assert "nothing to restore" in lists.lift(target, saved)


def test_lists_of_one_name_in_two_domains_are_not_guessed_between(
    mailman: MailmanServer, tmp_path: Path
) -> None:
    name = unique("twin")
    first, second = mailman.new_domain(), mailman.new_domain()
    ids = [mailman.create_list(name, d, (f"alice@{d}",)) for d in (first, second)]
    target = Target("alice", "lists", "mailman_archive", name, 100)
    with pytest.raises(EnforcerError, match="cannot tell which"):
        enforcer(mailman, tmp_path).snapshot(target)
    assert [policy(mailman, i) for i in ids] == ["public", "public"]


# A list with several owners: only the member's own posts are held


def test_a_shared_list_holds_only_the_member_posts_and_keeps_its_archive(
    mailman: MailmanServer, tmp_path: Path
) -> None:
    domain = mailman.new_domain()
    alice, bob = f"alice@{domain}", f"bob@{domain}"
    name = unique("team")
    list_id = mailman.create_list(name, domain, (alice, bob))
    alice_id, bob_id = mailman.subscribe(list_id, alice), mailman.subscribe(list_id, bob)
    mailman.request("PATCH", f"members/{alice_id}", {"moderation_action": "accept"})
    found = targets(mailman, tmp_path, name)
    assert set(found) == {f"{name}/alice", f"{name}/bob"}
    mine, bobs = found[f"{name}/alice"], found[f"{name}/bob"]
    lists = enforcer(mailman, tmp_path)

    saved_alice = lists.snapshot(mine)
    message = lists.restrict(mine, saved_alice)
    assert alice in message
    assert action(mailman, alice_id) == "hold"
    assert action(mailman, bob_id) is None
    assert policy(mailman, list_id) == "public"
    assert "already" in lists.restrict(mine, saved_alice)

    held = mailman.post(list_id, alice, "from alice")
    passed = mailman.post(list_id, bob, "from bob")
    wait_for(lambda: passed in mailman.archived(list_id), "bob's post archived")
    wait_for(lambda: held in mailman.held(list_id), "alice's post held")
    assert held not in mailman.archived(list_id)

    # Bob's own restriction is independent of alice's: each lift puts back
    # its own member's action only.
    saved_bob = lists.snapshot(bobs)
    lists.restrict(bobs, saved_bob)
    assert action(mailman, bob_id) == "hold"
    lists.lift(mine, saved_alice)
    assert (action(mailman, alice_id), action(mailman, bob_id)) == ("accept", "hold")
    lists.lift(bobs, saved_bob)
    assert (action(mailman, alice_id), action(mailman, bob_id)) == ("accept", None)
    assert "nothing to restore" in lists.lift(bobs, saved_bob)
    assert policy(mailman, list_id) == "public"

    after = mailman.post(list_id, alice, "alice after lift")
    wait_for(lambda: after in mailman.archived(list_id), "alice's post after lift archived")


def test_an_unsubscribed_owner_gets_a_held_nonmember_record_removed_on_lift(
    mailman: MailmanServer, tmp_path: Path
) -> None:
    domain = mailman.new_domain()
    alice, bob = f"alice@{domain}", f"bob@{domain}"
    name = unique("open")
    list_id = mailman.create_list(name, domain, (alice, bob))
    # A list that takes posts from anyone: the owner's posts need no subscription.
    mailman.request("PATCH", f"lists/{list_id}/config", {"default_nonmember_action": "accept"})
    target = targets(mailman, tmp_path, name)[f"{name}/alice"]
    lists = enforcer(mailman, tmp_path)
    saved = lists.snapshot(target)
    assert saved["create"] == [alice]

    lists.restrict(target, saved)
    lists.restrict(target, saved)
    assert nonmembers(mailman, list_id, alice) == 1
    assert action(mailman, mailman.member_id(list_id, alice, "nonmember")) == "hold"
    held = mailman.post(list_id, alice, "from alice")
    wait_for(lambda: held in mailman.held(list_id), "alice's post held")

    assert "removed" in lists.lift(target, saved)
    assert nonmembers(mailman, list_id, alice) == 0
    assert "nothing to restore" in lists.lift(target, saved)
    passed = mailman.post(list_id, alice, "after lift")
    wait_for(lambda: passed in mailman.archived(list_id), "alice's post after lift archived")


def test_the_member_subscription_under_another_address_is_held_too(
    mailman: MailmanServer, tmp_path: Path
) -> None:
    domain = mailman.new_domain()
    alice, home = f"alice@{domain}", f"alice.home@{domain}"
    name = unique("pair")
    list_id = mailman.create_list(name, domain, (alice, f"bob@{domain}"))
    user = mailman.get(f"users/{alice}")["user_id"]
    mailman.request("POST", f"users/{user}/addresses", {"email": home})
    home_id = mailman.subscribe(list_id, home)
    target = targets(mailman, tmp_path, name)[f"{name}/alice"]
    lists = enforcer(mailman, tmp_path)
    saved = lists.snapshot(target)
    lists.restrict(target, saved)
    assert action(mailman, home_id) == "hold"
    # Mailman judges alice's posts by that subscription: no record is added.
    assert nonmembers(mailman, list_id, alice) == 0
    held = mailman.post(list_id, alice, "from alice")
    wait_for(lambda: held in mailman.held(list_id), "alice's post held")
    lists.lift(target, saved)
    assert action(mailman, home_id) is None


def test_a_shared_list_deleted_meanwhile_is_nothing_to_lift(
    mailman: MailmanServer, tmp_path: Path
) -> None:
    domain = mailman.new_domain()
    alice = f"alice@{domain}"
    name = unique("fold")
    list_id = mailman.create_list(name, domain, (alice, f"bob@{domain}"))
    mailman.subscribe(list_id, alice)
    target = targets(mailman, tmp_path, name)[f"{name}/alice"]
    lists = enforcer(mailman, tmp_path)
    saved = lists.snapshot(target)
    lists.restrict(target, saved)
    mailman.delete_list(list_id)
    assert "nothing to restore" in lists.lift(target, saved)


def test_the_part_no_member_owns_is_never_restricted(
    mailman: MailmanServer, tmp_path: Path
) -> None:
    target = Target("alice", "lists", "mailman_archive", "team/(unknown)", 100)
    with pytest.raises(EnforcerError, match="no member owns"):
        enforcer(mailman, tmp_path).snapshot(target)


# Failures


def test_rest_down_is_an_enforcer_error_without_the_password(tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD, encoding="utf-8")
    lists = MailmanEnforcer(
        scanner_for(
            tmp_path,
            rest_url=f"http://127.0.0.1:{free_port()}/3.1",
            rest_password_file=str(password_file),
            timeout="5s",
        )
    )
    target = Target("alice", "lists", "mailman_archive", "solo", 100)
    saved = {"list": "solo", "list_id": "solo.example.org", "way": "archive"}
    for attempt in (
        lambda: lists.snapshot(target),
        lambda: lists.restrict(target, saved),
        lambda: lists.lift(target, {**saved, "archive_policy": "public"}),
    ):
        with pytest.raises(EnforcerError) as caught:
            attempt()
        message = str(caught.value)
        assert "cannot connect" in message
        assert PASSWORD not in message
        assert "\n" not in message


def test_a_wrong_password_is_an_enforcer_error_without_it(
    mailman: MailmanServer, tmp_path: Path
) -> None:
    domain = mailman.new_domain()
    name = unique("locked")
    list_id = mailman.create_list(name, domain, (f"alice@{domain}",))
    wrong = f"{PASSWORD}-wrong"
    password_file = tmp_path / "password"
    password_file.write_text(wrong, encoding="utf-8")
    lists = MailmanEnforcer(
        scanner_for(tmp_path, rest_url=mailman.rest_url, rest_password_file=str(password_file))
    )
    target = Target("alice", "lists", "mailman_archive", name, 100)
    saved = {"list": name, "list_id": list_id, "way": "archive", "archive_policy": "public"}
    with pytest.raises(EnforcerError) as caught:
        lists.restrict(target, saved)
    assert "401" in str(caught.value)
    assert wrong not in str(caught.value)
    assert policy(mailman, list_id) == "public"


def test_a_missing_password_file_is_an_enforcer_error(tmp_path: Path) -> None:
    lists = MailmanEnforcer(
        scanner_for(
            tmp_path,
            rest_url="http://127.0.0.1:9/3.1",
            rest_password_file=str(tmp_path / "absent"),
        )
    )
    with pytest.raises(EnforcerError, match="rest_password_file"):
        lists.snapshot(Target("alice", "lists", "mailman_archive", "solo", 100))
