"""The `mailman` kind: each mailing list's archive on disk, charged to the list's owners.

Layout (Mailman 2's): `<archive_root>/<list>/` holds the HTML archive and
`<archive_root>/<list>.mbox/` the mbox. A list's resource is both folders
measured together, exactly as a `tree` (regular files, each inode once across
both, no link followed, never leaving a folder's filesystem); a list with
only one of them still counts.

Owners come from a TOML file (`owners_file`) or from a Mailman 3 core's REST
API (`rest_url`). An owner address becomes a member through `owners_map`
first, then `owner_pattern`. A list owned by several members is split evenly
into one resource per member, named `<list>/<member>`: a directory entry
cannot contain `/`, so a share never collides with another list. Whatever no
member owns is recorded unattributed, never dropped.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import re
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any, Self

from scanners.base import (
    DetailValue,
    Measurement,
    OptionError,
    Progress,
    ResourceFailure,
    ScanContext,
    ScanItem,
    Scanner,
    SourceError,
    is_member_name,
    printable_name,
)
from scanners.options import Options
from scanners.paths import display_path
from scanners.tree import Tally, UnreadableDirectory, open_root, walk

MBOX_SUFFIX = ".mbox"
DEFAULT_OWNER_PATTERN = r"^(?P<member>[^@]+)@"

# Never lists: hidden entries and fsck's folder, as for member directories.
_SKIPPED_NAMES = frozenset({"lost+found"})

# The part of a split list that no member owns: parentheses cannot occur in
# a member name, so it never collides with a member's share.
UNKNOWN_SHARE = "(unknown)"

# Entries asked for per REST request. Mailman's own default is "everything
# at once", which one slow query can turn into a timeout on a big site.
_PAGE_SIZE = 200


@dataclass(frozen=True, slots=True)
class _ListOwners:
    """What the owners source says about one list name."""

    owners: tuple[str, ...]
    # Set when the name is not one list (Mailman 3 lists of the same name in
    # two domains share one Mailman 2 folder): nobody can be charged.
    ambiguous: str | None = None


@dataclass(frozen=True, slots=True)
class RestSettings:
    """Where a Mailman 3 core's REST API is, and how to log in to it."""

    root: str
    user: str
    password_file: Path
    timeout: int


@dataclass(frozen=True, slots=True)
class _Share:
    """One resource of a list: a member's part, the unknown part, or the whole list."""

    name: str
    member: str | None
    # How many of the list's owners this part stands for.
    weight: int


class RestClient:
    """A minimal Mailman 3 REST client: basic auth, no redirects, no proxy."""

    def __init__(self, root: str, user: str, password: str, timeout: int) -> None:
        self.root = root
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        self._auth = f"Basic {token}"
        self.timeout = timeout
        # No proxy: the REST API listens on loopback, and an http_proxy set
        # for the rest of the host must not see its credentials. No
        # redirects: urllib would resend the Authorization header wherever
        # the server points.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())

    def get(self, path: str, query: Mapping[str, int] | None = None) -> dict[str, Any]:
        """The JSON object at PATH below the root; SourceError for anything else."""
        url = f"{self.root}/{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = self._call("GET", url, None)
        if data is None:
            raise SourceError(f"Mailman REST {url}: expected a JSON object, got ''")
        return data

    def send(
        self, method: str, path: str, fields: Mapping[str, str] | None = None
    ) -> dict[str, Any] | None:
        """METHOD (PATCH, POST, DELETE) with FIELDS as a form; the JSON answer, None if empty.

        Raises RestStatusError for an error status, SourceError for anything
        else that goes wrong.
        """
        body = urllib.parse.urlencode(fields).encode() if fields is not None else None
        return self._call(method, f"{self.root}/{path}", body)

    def _call(self, method: str, url: str, body: bytes | None) -> dict[str, Any] | None:
        # A GET's messages name only the URL, as they always have.
        label = url if method == "GET" else f"{method} {url}"
        headers = {"Authorization": self._auth, "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked in from_options
            url, data=body, headers=headers, method=method
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                answer = response.read()
        except urllib.error.HTTPError as exc:
            raise RestStatusError(
                exc.code, f"Mailman REST {label}: HTTP {exc.code} {exc.reason}{_http_detail(exc)}"
            ) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise SourceError(
                    f"Mailman REST {label}: no connection within {self.timeout} s (timeout)"
                ) from None
            raise SourceError(
                f"Mailman REST {label}: cannot connect: {_reason(exc.reason)}"
            ) from None
        except TimeoutError:
            raise SourceError(
                f"Mailman REST {label}: no answer within {self.timeout} s (timeout)"
            ) from None
        except (OSError, HTTPException) as exc:
            raise SourceError(f"Mailman REST {label}: {_reason(exc)}") from None
        if not answer and method != "GET":
            return None  # 204 No Content, or 201 Created with only a Location
        try:
            data = json.loads(answer)
        except ValueError:
            raise SourceError(
                f"Mailman REST {label}: the answer is not JSON: {_excerpt(answer)}"
            ) from None
        if not isinstance(data, dict):
            raise SourceError(
                f"Mailman REST {label}: expected a JSON object, got {_excerpt(answer)}"
            )
        return data

    def collection(self, path: str) -> list[dict[str, Any]]:
        """Every entry of the paginated collection at PATH."""
        entries: list[dict[str, Any]] = []
        page = 1
        while True:
            data = self.get(path, {"count": _PAGE_SIZE, "page": page})
            total = data.get("total_size")
            # An empty collection, or a page past the end, has no "entries" key.
            batch = data.get("entries", [])
            if not isinstance(total, int) or isinstance(total, bool) or not isinstance(batch, list):
                raise SourceError(
                    f"Mailman REST {self.root}/{path}: unexpected answer "
                    "(no total_size or entries list); is this a Mailman 3 REST root?"
                )
            for entry in batch:
                if not isinstance(entry, dict):
                    raise SourceError(
                        f"Mailman REST {self.root}/{path}: an entry is not an object: {entry!r}"
                    )
                entries.append(entry)
            # A short page ends it too: lists deleted between two pages
            # would otherwise keep total_size out of reach.
            if len(entries) >= total or len(batch) < _PAGE_SIZE:
                return entries
            page += 1


class RestStatusError(SourceError):
    """The REST API answered with an error status (`status`: 404 for a list that is gone)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def open_rest(settings: RestSettings) -> RestClient:
    """A client for SETTINGS, with the password read now; SourceError if it cannot be read."""
    try:
        password = settings.password_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        problem = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        label = display_path(settings.password_file)
        raise SourceError(f"cannot read rest_password_file {label}: {problem}") from exc
    return RestClient(settings.root, settings.user, password, settings.timeout)


def list_ids_by_name(rest: RestClient) -> dict[str, list[str]]:
    """List name (the Mailman 2 archive folder's name) -> the list_id of every list so named.

    Lists of one name in several domains share a name, hence a list of ids.
    """
    by_name: dict[str, list[str]] = {}
    for entry in rest.collection("lists"):
        list_id, list_name = _list_identity(rest.root, entry)
        ids = by_name.setdefault(list_name, [])
        # Pages can overlap when a list is created between two requests.
        if list_id not in ids:
            ids.append(list_id)
    return by_name


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        # None makes urllib raise the 3xx as an HTTPError.
        return None


def _http_detail(exc: urllib.error.HTTPError) -> str:
    """Mailman's own explanation of an error status, when it sent one."""
    try:
        data = json.loads(exc.read())
    except (ValueError, OSError, HTTPException):
        return ""
    if isinstance(data, dict):
        text = data.get("description") or data.get("title")
        if isinstance(text, str) and text:
            return f": {text}"
    return ""


def _reason(reason: object) -> str:
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


def _excerpt(body: bytes) -> str:
    text = body[:80].decode("utf-8", "replace")
    return repr(text + ("..." if len(body) > len(text) else ""))


class MailmanScanner(Scanner):
    """One `mailman_archive` resource per list archive (or per owner's share of it)."""

    kind = "mailman"
    resource_kind = "mailman_archive"

    def __init__(
        self,
        name: str,
        archive_root: Path,
        owners: Path | RestSettings,
        *,
        owners_map: Mapping[str, str] | None = None,
        owner_pattern: re.Pattern[str] = re.compile(DEFAULT_OWNER_PATTERN),
    ) -> None:
        super().__init__(name)
        self.archive_root = archive_root
        # A Path is an owners file.
        self.owners = owners
        self.owners_map = {k.lower(): v for k, v in (owners_map or {}).items()}
        self.owner_pattern = owner_pattern

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, object], base_dir: Path) -> Self:
        """Options: `archive_root`; `owners_file` or `rest_url` (+ user, password file, timeout).

        Also `owners_map` (address = member) and `owner_pattern` (a regex
        with a `member` group) for turning owner addresses into members.
        """
        reader = Options(options)
        archive_root = reader.path("archive_root", base_dir)
        has_file, has_rest = reader.has("owners_file"), reader.has("rest_url")
        if has_file == has_rest:
            problem = "give exactly one of owners_file and rest_url"
            raise OptionError("rest_url" if has_rest else "owners_file", problem)
        owners: Path | RestSettings
        if has_file:
            owners = reader.path("owners_file", base_dir)
            for key in ("rest_user", "rest_password_file", "timeout"):
                if reader.has(key):
                    raise OptionError(key, "only applies with rest_url, not owners_file")
        else:
            root = _rest_root(reader.string("rest_url", required=True))
            user = reader.string("rest_user", "restadmin")
            # The password itself is read at each scan: rotating it needs no
            # restart, and it never sits in a long-lived object.
            password_file = reader.path("rest_password_file", base_dir)
            timeout = reader.duration("timeout", "30s")
            if timeout <= 0:
                raise OptionError("timeout", "must be more than 0 seconds")
            owners = RestSettings(root, user, password_file, timeout)
        owners_map = _owners_map(reader.table("owners_map"))
        pattern = _owner_pattern(reader.string("owner_pattern", DEFAULT_OWNER_PATTERN))
        reader.finish()
        return cls(
            name,
            archive_root,
            owners,
            owners_map=owners_map,
            owner_pattern=pattern,
        )

    def scan(
        self,
        progress: Progress | None = None,
        context: ScanContext | None = None,
    ) -> Iterator[ScanItem]:
        """Measure every list archive; SourceError if the root or the owners cannot be read."""
        emails = context.member_emails if context is not None else {}
        archives = self._archives()
        if isinstance(self.owners, RestSettings):
            owners = self._owners_from_rest(self.owners, archives)
        else:
            owners = self._owners_from_file(self.owners)
        for done, (list_name, folders) in enumerate(sorted(archives.items()), 1):
            yield from self._measure_list(list_name, folders, owners.get(list_name), emails)
            if progress is not None:
                progress(list_name, done, len(archives))

    def member_for(self, owner: str, emails: Mapping[str, str] | None = None) -> str | None:
        """The member an owner (an address, or a member name from the owners file) stands for.

        An address is looked up in `owners_map`, then among the registered
        members' addresses (EMAILS), then matched with `owner_pattern`.
        """
        if "@" not in owner:
            return owner if is_member_name(owner) else None
        address = owner.strip().lower()
        mapped = self.owners_map.get(address)
        if mapped is None and emails:
            mapped = emails.get(address)
        if mapped is not None:
            return mapped
        match = self.owner_pattern.search(address)
        if match is None:
            return None
        captured = match.group("member")
        return captured if captured is not None and is_member_name(captured) else None

    def shares(
        self,
        list_name: str,
        owners: _ListOwners | None,
        emails: Mapping[str, str] | None = None,
    ) -> tuple[list[_Share], int]:
        """The resources LIST_NAME is recorded as, and how many owners it is shared by.

        Owners are counted once per member (two addresses of one member are
        one owner) and once per address no member has.
        """
        if owners is None or owners.ambiguous is not None:
            return [_Share(list_name, None, 1)], 0
        members: set[str] = set()
        unknown: set[str] = set()
        for owner in owners.owners:
            member = self.member_for(owner, emails)
            if member is not None:
                members.add(member)
            else:
                unknown.add(owner.strip().lower())
        count = len(members) + len(unknown)
        if not members or (len(members) == 1 and not unknown):
            # One member, or no member at all: the list stays whole.
            only = next(iter(members)) if members else None
            return [_Share(list_name, only, max(count, 1))], count
        parts = [_Share(f"{list_name}/{m}", m, 1) for m in sorted(members)]
        if unknown:
            parts.append(_Share(f"{list_name}/{UNKNOWN_SHARE}", None, len(unknown)))
        return parts, count

    def _measure_list(
        self,
        list_name: str,
        folders: Sequence[Path],
        owners: _ListOwners | None,
        emails: Mapping[str, str],
    ) -> Iterator[ScanItem]:
        shares, count = self.shares(list_name, owners, emails)
        try:
            measured = measure_folders(folders)
        except UnreadableDirectory as exc:
            # Every share fails, under the names a good scan gives them, so
            # each keeps its earlier value instead of dropping to 0.
            for share in shares:
                yield ResourceFailure(share.member, self.resource_kind, share.name, str(exc))
            return
        if measured is None:
            return  # both folders removed since the listing: no archive any more
        size, files = measured
        # Names are normalised by Measurement; detail values are not.
        detail: dict[str, DetailValue] = {"list": printable_name(list_name), "owners": count}
        if owners is not None and owners.ambiguous is not None:
            detail["note"] = owners.ambiguous
        parts = split(size, files, [share.weight for share in shares])
        for share, (part_bytes, part_files) in zip(shares, parts, strict=True):
            # "shares": how many of the owners a part of a split list stands for.
            part_detail = {**detail, "shares": share.weight} if len(shares) > 1 else detail
            yield Measurement(
                share.member, self.resource_kind, share.name, part_bytes, part_files, part_detail
            )

    def _archives(self) -> dict[str, list[Path]]:
        """List name -> its archive folders that exist; SourceError if the root cannot be listed."""
        found: dict[str, list[Path]] = {}
        try:
            with os.scandir(self.archive_root) as entries:
                for entry in entries:
                    name = entry.name
                    if name.startswith(".") or name in _SKIPPED_NAMES:
                        continue
                    try:
                        # A symlink is never a list: it would charge a
                        # folder elsewhere under this list's name.
                        if not entry.is_dir(follow_symlinks=False):
                            continue
                    except OSError:
                        continue
                    list_name = name.removesuffix(MBOX_SUFFIX) or name
                    found.setdefault(list_name, []).append(Path(entry.path))
        except OSError as exc:
            raise SourceError(
                f"cannot list the archive root {display_path(self.archive_root)}: {exc.strerror}"
            ) from exc
        for folders in found.values():
            folders.sort()
        return found

    @staticmethod
    def _owners_from_file(path: Path) -> dict[str, _ListOwners]:
        label = display_path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise SourceError(f"cannot read the owners file {label}: {exc.strerror}") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise SourceError(f"the owners file {label} is not valid TOML: {exc}") from exc
        result: dict[str, _ListOwners] = {}
        for list_name, value in data.items():
            if isinstance(value, str):
                result[list_name] = _ListOwners((value,))
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                result[list_name] = _ListOwners(tuple(value))
            else:
                raise SourceError(
                    f"the owners file {label}: {list_name!r} must be a member name, an "
                    "address, or a list of them"
                )
        return result

    @staticmethod
    def _owners_from_rest(
        settings: RestSettings, archives: Mapping[str, object]
    ) -> dict[str, _ListOwners]:
        rest = open_rest(settings)
        by_name = list_ids_by_name(rest)
        result: dict[str, _ListOwners] = {}
        for list_name, ids in by_name.items():
            if list_name not in archives:
                continue  # no archive on disk: its owners do not matter
            if len(ids) > 1:
                note = f"{len(ids)} lists share this folder: {', '.join(sorted(ids))}"
                result[list_name] = _ListOwners((), ambiguous=note)
                continue
            path = f"lists/{urllib.parse.quote(ids[0], safe='')}/roster/owner"
            owners = []
            for entry in rest.collection(path):
                email = entry.get("email")
                if not isinstance(email, str) or not email:
                    raise SourceError(
                        f"Mailman REST {rest.root}/{path}: an owner has no email: {entry!r}"
                    )
                owners.append(email)
            result[list_name] = _ListOwners(tuple(owners))
        return result


def measure_folders(folders: Sequence[Path]) -> tuple[int, int] | None:
    """(bytes, files) of FOLDERS taken as one tree, each inode once; None if none exists.

    Raises UnreadableDirectory as `measure_tree` does. A folder that no
    longer exists counts as absent, not as a failure.
    """
    # One tally per filesystem: inode numbers only identify a file within one.
    tallies: dict[int, tuple[Tally, set[int]]] = {}
    for folder in folders:
        path = os.fspath(folder)
        try:
            fd, dev, ino = open_root(path)
        except UnreadableDirectory as exc:
            if exc.errno == errno.ENOENT:
                continue
            raise
        tally, seen = tallies.setdefault(dev, (Tally(), set()))
        if ino in seen:
            # The mbox folder bind-mounted onto (or inside) the archive:
            # already counted.
            os.close(fd)
            continue
        walk(fd, path, dev, ino, tally, seen=seen)
    if not tallies:
        return None
    totals = [tally.totals() for tally, _ in tallies.values()]
    return sum(b for b, _ in totals), sum(f for _, f in totals)


def split(size: int, files: int, weights: Sequence[int]) -> list[tuple[int, int]]:
    """SIZE and FILES shared by WEIGHTS owners, exactly: the remainders go to the first owners.

    Each owner gets an equal integer part and the first `remainder` owners
    one more, so the parts always add up to the whole; a part of weight w
    is the sum of w owners' shares.
    """
    owners = sum(weights)
    if owners <= 0:
        raise ValueError("no owners to split between")
    result = []
    first = 0
    for weight in weights:
        result.append(
            (
                _owners_part(size, owners, first, weight),
                _owners_part(files, owners, first, weight),
            )
        )
        first += weight
    return result


def _owners_part(total: int, owners: int, first: int, count: int) -> int:
    """The sum of owner shares first..first+count-1 when TOTAL is shared by OWNERS."""
    base, remainder = divmod(total, owners)
    extra = max(0, min(first + count, remainder) - first)
    return base * count + extra


def _list_identity(root: str, entry: Mapping[str, Any]) -> tuple[str, str]:
    """(list_id, list_name) of one entry of GET /lists."""
    list_id = entry.get("list_id")
    list_name = entry.get("list_name")
    if not isinstance(list_name, str) or not list_name:
        fqdn = entry.get("fqdn_listname")
        list_name = fqdn.partition("@")[0] if isinstance(fqdn, str) else None
    if not isinstance(list_id, str) or not list_id or not list_name:
        raise SourceError(
            f"Mailman REST {root}/lists: an entry has no list_id or list_name: {entry!r}"
        )
    return list_id, list_name


def _rest_root(text: str) -> str:
    """The REST root URL without a trailing slash; OptionError if it is not one."""
    parsed = urllib.parse.urlsplit(text.strip())
    if parsed.scheme not in {"http", "https"} or not parsed.hostname:
        raise OptionError(
            "rest_url", f'must be an http(s) URL such as "http://127.0.0.1:8001/3.1", got {text!r}'
        )
    if parsed.username is not None or parsed.password is not None:
        raise OptionError(
            "rest_url", "must not hold credentials: use rest_user and rest_password_file"
        )
    if parsed.query or parsed.fragment:
        raise OptionError("rest_url", f"must not have a query or fragment, got {text!r}")
    return text.strip().rstrip("/")


def _owners_map(table: Mapping[str, object]) -> dict[str, str]:
    result: dict[str, str] = {}
    for address, member in table.items():
        key = f"owners_map.{address}"
        if "@" not in address:
            raise OptionError(key, "keys are owner addresses (with an @)")
        if not isinstance(member, str) or not is_member_name(member):
            raise OptionError(key, f"must be a member name, got {member!r}")
        result[address.strip().lower()] = member
    return result


def _owner_pattern(text: str) -> re.Pattern[str]:
    try:
        pattern = re.compile(text)
    except re.error as exc:
        raise OptionError("owner_pattern", f"not a regular expression: {exc}") from None
    if "member" not in pattern.groupindex:
        raise OptionError("owner_pattern", "needs a named group (?P<member>...)")
    return pattern
