"""The `mailman` enforcer: a Mailman 3 list stops growing its over-quota owner's archive.

A list owned by one member (target `<list>`) stops being archived: its
`archive_policy` becomes `never`, and lift puts back the saved policy.

A list shared by several owners (target `<list>/<member>`) keeps its archive:
stopping it would punish the co-owners for one member's quota, and two
owners' restrictions of one policy would each save the other's `never` and
restore it wrongly. Instead the over-quota member's own posts are held for
moderation: every subscription Mailman's posting rules consult for the
member's owner addresses gets `moderation_action = hold`, each one's previous
action saved and restored on its own, so restrictions of two owners never
touch each other's records.

Everything goes through the core's REST API with the scanner's settings.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

from quotad.enforcers.base import Enforcer, EnforcerError, Saved, Target
from scanners.base import Scanner, SourceError
from scanners.mailman import (
    UNKNOWN_SHARE,
    MailmanScanner,
    RestClient,
    RestSettings,
    RestStatusError,
    list_ids_by_name,
    open_rest,
)

ARCHIVE = "archive"
HOLD = "hold"
NEVER = "never"

# The roles Mailman's posting rules read a sender's moderation action from:
# a subscriber's (member) or, failing that, the sender's own nonmember record.
_POSTING_ROLES = frozenset({"member", "nonmember"})

_NOT_FOUND = 404


class MailmanEnforcer(Enforcer):
    """Stops a single-owner list's archive, or holds a co-owner's posts to a shared list."""

    source_kind: ClassVar[str] = "mailman"

    def __init__(self, scanner: Scanner) -> None:
        super().__init__(scanner)
        if not isinstance(scanner, MailmanScanner):
            raise TypeError(f"the mailman enforcer needs a MailmanScanner, got {scanner!r}")
        self.lists = scanner

    @classmethod
    def available(cls, scanner: Scanner) -> str | None:
        """Only with the REST API: an owners file names owners but can change nothing."""
        if isinstance(scanner, MailmanScanner) and isinstance(scanner.owners, RestSettings):
            return None
        return (
            "enforcing on Mailman lists needs the Mailman 3 REST API (rest_url), not an owners_file"
        )

    # The three steps.

    def snapshot(self, target: Target) -> Saved:
        """The list's id and archive policy, or the member's posting records and their actions."""
        list_name, shared = _parse(target)
        rest = self._rest()
        with _one_line_errors():
            list_id = _list_id(rest, list_name)
            if list_id is None:
                return {"list": list_name, "list_id": None}
            if shared:
                return self._posting_snapshot(rest, target, list_name, list_id)
            policy = _archive_policy(rest, list_id)
        if policy is None:
            return {"list": list_name, "list_id": None}
        return {"list": list_name, "list_id": list_id, "way": ARCHIVE, "archive_policy": policy}

    def restrict(self, target: Target, saved: Saved) -> str:
        """Set the archive policy to never, or hold the member's posts (idempotent)."""
        list_id = saved.get("list_id")
        if list_id is None:
            return f"no Mailman list is named {saved.get('list', target.name)}: nothing to stop"
        rest = self._rest()
        with _one_line_errors():
            if saved.get("way") == ARCHIVE:
                return _set_policy(rest, list_id, NEVER, "stopped archiving")
            return _hold(rest, list_id, saved)

    def lift(self, target: Target, saved: Saved) -> str:  # noqa: ARG002 - saved says it all
        """Put back the saved archive policy, or the member's saved moderation actions."""
        list_id = saved.get("list_id")
        if list_id is None:
            return f"no Mailman list was named {saved.get('list')}: nothing to restore"
        rest = self._rest()
        with _one_line_errors():
            if saved.get("way") == ARCHIVE:
                policy = saved.get("archive_policy")
                if not isinstance(policy, str) or not policy:
                    raise EnforcerError(f"list {list_id}: the saved state has no archive_policy")
                return _set_policy(rest, list_id, policy, "restored")
            return _release(rest, list_id, saved)

    # Helpers.

    def _rest(self) -> RestClient:
        settings = self.lists.owners
        if not isinstance(settings, RestSettings):
            raise EnforcerError(f"source {self.lists.name}: no rest_url, nothing to enforce with")
        with _one_line_errors():
            return open_rest(settings)

    def _posting_snapshot(
        self, rest: RestClient, target: Target, list_name: str, list_id: str
    ) -> Saved:
        """The member's owner addresses, and every record that decides how their posts go."""
        emails = {target.email.strip().lower(): target.member} if target.email else {}
        owners = rest.collection(f"lists/{_quote(list_id)}/roster/owner")
        mine = sorted(
            {
                str(entry["email"]).lower()
                for entry in owners
                if isinstance(entry.get("email"), str)
                and self.lists.member_for(entry["email"], emails) == target.member
            }
        )
        records: dict[str, dict[str, Any]] = {}
        create: list[str] = []
        for address in mine:
            # Mailman looks for a subscription of any address of the
            # sender's user before it reads the sender's nonmember record.
            found = _posting_records(rest, list_id, _user_addresses(rest, address))
            for record in found:
                records.setdefault(record["member_id"], record)
            covered = any(r["role"] == "member" for r in found) or any(
                r["role"] == "nonmember" and r["email"] == address for r in found
            )
            if not covered:
                create.append(address)
        return {
            "list": list_name,
            "list_id": list_id,
            "way": HOLD,
            "addresses": mine,
            "records": [records[key] for key in sorted(records)],
            "create": create,
        }


@contextlib.contextmanager
def _one_line_errors() -> Iterator[None]:
    """A SourceError (one line, never the password) becomes the EnforcerError the core expects."""
    try:
        yield
    except SourceError as exc:
        raise EnforcerError(str(exc)) from None


def _parse(target: Target) -> tuple[str, bool]:
    """(list name, whether the target is one owner's share of a shared list)."""
    list_name, slash, share = target.name.partition("/")
    if not list_name:
        raise EnforcerError(f"{target.name!r} is not a Mailman list's resource")
    if slash and (share == UNKNOWN_SHARE or not share):
        raise EnforcerError(f"{target.name}: no member owns this part of the list")
    return list_name, bool(slash)


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _list_id(rest: RestClient, list_name: str) -> str | None:
    """The one list named LIST_NAME; None if there is none."""
    ids = list_ids_by_name(rest).get(list_name, [])
    if len(ids) > 1:
        # The scanner charges nobody for such a folder; a target for it is stale.
        raise EnforcerError(
            f"{len(ids)} Mailman lists are named {list_name} ({', '.join(sorted(ids))}): "
            "cannot tell which one to restrict"
        )
    return ids[0] if ids else None


def _archive_policy(rest: RestClient, list_id: str) -> str | None:
    """The list's archive_policy; None if the list is gone."""
    try:
        data = rest.get(f"lists/{_quote(list_id)}/config/archive_policy")
    except RestStatusError as exc:
        if exc.status == _NOT_FOUND:
            return None
        raise
    policy = data.get("archive_policy")
    if not isinstance(policy, str) or not policy:
        raise EnforcerError(f"list {list_id}: REST answered no archive_policy")
    return policy


def _set_policy(rest: RestClient, list_id: str, policy: str, verb: str) -> str:
    current = _archive_policy(rest, list_id)
    if current is None:
        return f"list {list_id} no longer exists: nothing to change"
    if current == policy:
        return f"list {list_id}: archive_policy already {policy}"
    try:
        rest.send("PATCH", f"lists/{_quote(list_id)}/config", {"archive_policy": policy})
    except RestStatusError as exc:
        if exc.status == _NOT_FOUND:
            return f"list {list_id} no longer exists: nothing to change"
        raise
    return f"list {list_id}: {verb}, archive_policy {current} -> {policy}"


def _user_addresses(rest: RestClient, address: str) -> list[str]:
    """ADDRESS and every other address of the Mailman user it belongs to, if any."""
    addresses = {address}
    try:
        user = rest.get(f"users/{_quote(address)}")
    except RestStatusError as exc:
        if exc.status == _NOT_FOUND:
            return [address]
        raise
    user_id = user.get("user_id")
    if isinstance(user_id, str) and user_id:
        for entry in rest.collection(f"users/{_quote(user_id)}/addresses"):
            email = entry.get("email")
            if isinstance(email, str) and email:
                addresses.add(email.lower())
    return sorted(addresses)


def _posting_records(
    rest: RestClient, list_id: str, addresses: Iterable[str]
) -> list[dict[str, Any]]:
    """The member and nonmember records of ADDRESSES on the list, with their actions now."""
    wanted = set(addresses)
    records: dict[str, dict[str, Any]] = {}
    for address in sorted(wanted):
        data = rest.send("POST", "members/find", {"list_id": list_id, "subscriber": address})
        for entry in (data or {}).get("entries", []):
            record = _record(entry)
            # `subscriber` is a pattern to Mailman ("*" matches anything):
            # keep exact matches only.
            if record is not None and record["email"] in wanted:
                records[record["member_id"]] = record
    return list(records.values())


def _record(entry: Mapping[str, Any]) -> dict[str, Any] | None:
    """What is saved of one posting record; None for an owner's or moderator's."""
    role, member_id, email = entry.get("role"), entry.get("member_id"), entry.get("email")
    if role not in _POSTING_ROLES or not isinstance(member_id, str) or not isinstance(email, str):
        return None
    action = entry.get("moderation_action")
    # No action (the key absent): the list's default applies, restored as blank.
    return {
        "member_id": member_id,
        "email": email.lower(),
        "role": role,
        "moderation_action": action if isinstance(action, str) else None,
    }


def _member_action(rest: RestClient, member_id: str) -> tuple[bool, str | None]:
    """(whether the record still exists, its moderation action)."""
    try:
        data = rest.get(f"members/{_quote(member_id)}")
    except RestStatusError as exc:
        if exc.status == _NOT_FOUND:
            return False, None
        raise
    action = data.get("moderation_action")
    return True, action if isinstance(action, str) else None


def _set_action(rest: RestClient, member_id: str, action: str | None) -> bool:
    """Set a record's action (None: the list's default); False if the record is gone."""
    try:
        rest.send("PATCH", f"members/{_quote(member_id)}", {"moderation_action": action or ""})
    except RestStatusError as exc:
        if exc.status == _NOT_FOUND:
            return False
        raise
    return True


def _nonmember_ids(rest: RestClient, list_id: str, address: str) -> list[str]:
    data = rest.send(
        "POST", "members/find", {"list_id": list_id, "subscriber": address, "role": "nonmember"}
    )
    return [
        record["member_id"]
        for entry in (data or {}).get("entries", [])
        if (record := _record(entry)) is not None and record["email"] == address
    ]


def _hold(rest: RestClient, list_id: str, saved: Saved) -> str:
    """Hold every saved record's posts, creating the nonmember records the snapshot lacked."""
    if _archive_policy(rest, list_id) is None:
        return f"list {list_id} no longer exists: nothing to hold"
    if not saved.get("records") and not saved.get("create"):
        return f"list {list_id}: the member owns it under no address any more: nothing to hold"
    changed = [
        f"{record['email']} ({record['role']})"
        for record in saved.get("records", [])
        if _hold_record(rest, record["member_id"])
    ]
    for address in saved.get("create", []):
        ids = _nonmember_ids(rest, list_id, address)
        if not ids:
            rest.send(
                "POST", "members", {"list_id": list_id, "subscriber": address, "role": "nonmember"}
            )
            ids = _nonmember_ids(rest, list_id, address)
        if not ids:
            raise EnforcerError(
                f"list {list_id}: no nonmember record for {address} after adding it"
            )
        changed.extend(f"{address} (new nonmember)" for i in ids if _hold_record(rest, i))
    if not changed:
        return f"list {list_id}: posts already held"
    return f"list {list_id}: posts held from {', '.join(changed)}"


def _hold_record(rest: RestClient, member_id: str) -> bool:
    """Hold one record's posts; whether that changed anything (a record gone changes nothing)."""
    exists, action = _member_action(rest, member_id)
    return exists and action != HOLD and _set_action(rest, member_id, HOLD)


def _release(rest: RestClient, list_id: str, saved: Saved) -> str:
    """Put back each saved record's action and remove the nonmember records restrict made."""
    changed: list[str] = []
    for record in saved.get("records", []):
        before = record.get("moderation_action")
        exists, action = _member_action(rest, record["member_id"])
        if exists and action != before and _set_action(rest, record["member_id"], before):
            changed.append(f"{record['email']} {action} -> {before or 'list default'}")
    for address in saved.get("create", []):
        # The snapshot found none: none is put back.
        for member_id in _nonmember_ids(rest, list_id, address):
            try:
                rest.send("DELETE", f"members/{_quote(member_id)}")
            except RestStatusError as exc:
                if exc.status != _NOT_FOUND:
                    raise
                continue
            changed.append(f"{address} nonmember record removed")
    if not changed:
        return f"list {list_id}: nothing to restore"
    return f"list {list_id}: {'; '.join(changed)}"
