"""The `afs` kind: OpenAFS volumes, as the volume servers account them, read with `vos`.

Each RW volume on the configured servers is one `afs_volume` resource named
by the volume: `bytes` is its `diskused` (KB) times 1024 and `files` its
`filecount`, from `vos listvol SERVER [PARTITION] -format`. Read-only and
backup clones are not counted (the contract charges the RW volume only).
`volume_pattern` maps a volume name to a member; a volume it does not map is
recorded unattributed, never dropped.

A busy or unattachable volume cannot be measured: it fails on its own and
keeps its earlier value. `vos` prints no name for such a volume, only its
ID, so the name comes from the VLDB (`vos listvldb`), read at most once per
scan and only when needed. A volume name listed twice with different copies
(a `vos move` in progress, a stale copy left on another server) fails the
same way: nobody can tell which copy is the volume, and charging both would
double the bill.

Names come from the servers and are data: they are never passed to a
command. Every `vos` runs from an argument list, never a shell.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

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
)
from scanners.options import Options, resolve_path

DEFAULT_VOLUME_PATTERN = r"^user\.(?P<member>.+)$"
DEFAULT_TIMEOUT = "5m"

# `vos listvol` -format keys every measurable (status OK) entry must have.
_REQUIRED_OK = ("name", "type", "diskused", "maxquota", "filecount")

_HEADER_RE = re.compile(
    r"^Total number of volumes on server (?P<server>\S+) partition "
    r"(?P<partition>/vicep[a-z]{1,2}): (?P<count>\d+) ?$"
)
# A partition as vos takes it: "a", "vicepa" or "/vicepa"; a to iv.
_PARTITION_RE = re.compile(r"^(?:/?vicep)?(?P<letters>[a-z]|[a-h][a-z]|i[a-v])$")
_CLONE_SUFFIXES = (".readonly", ".backup")
_VLDB_ID_RE = re.compile(r"\b(RWrite|ROnly|Backup|RClone):\s*(\d+)")

# How much of a failing command's output goes into the error.
_EXCERPT_LINES = 3
_EXCERPT_CHARS = 300
_CLIP_CHARS = 80
# How many busy volume IDs an error about the VLDB names.
_SHOWN_IDS = 5


class ListingError(ValueError):
    """`vos` printed something that is not the `-format` listing it documents."""


@dataclass(frozen=True, slots=True)
class VolumeEntry:
    """One BEGIN_OF_ENTRY ... END_OF_ENTRY block of `vos listvol -format`.

    A volume whose status is not OK (BUSY, UNATTACHABLE) stops after its
    status line: vos 1.8 then prints no name either, and none of the sizes.
    """

    id: int
    partition: str
    address: str
    status: str
    name: str | None = None
    type: str | None = None
    diskused_kb: int | None = None
    maxquota_kb: int | None = None
    filecount: int | None = None


@dataclass(frozen=True, slots=True)
class Listing:
    """What one `vos listvol -format` printed: its partitions' headers, then every entry."""

    partitions: tuple[str, ...]
    entries: list[VolumeEntry]


def parse_listing(text: str) -> Listing:
    """The partitions and entries of `vos listvol -format` output; ListingError otherwise.

    Each partition's header announces how many entries follow, so output
    cut short is caught even at an entry boundary. Output without any
    header (vos prints one per partition, even an empty one) is refused.
    """
    entries: list[VolumeEntry] = []
    partitions: list[str] = []
    partition: str | None = None
    expected = 0
    seen = 0
    fields: dict[str, str] | None = None
    for number, line in enumerate(_lines(text), 1):
        if fields is not None:
            if line != "END_OF_ENTRY":
                _add_field(fields, line, number)
                continue
            assert partition is not None  # an entry only opens inside a section
            entries.append(_entry(fields, partition, number))
            seen += 1
            fields = None
        elif line == "BEGIN_OF_ENTRY":
            if partition is None:
                raise ListingError(f"line {number}: an entry before any partition header")
            fields = {}
        elif header := _HEADER_RE.match(line):
            _check_count(partition, expected, seen)
            partition, expected, seen = header["partition"], int(header["count"]), 0
            partitions.append(partition)
        elif line.strip():
            raise ListingError(f"line {number}: unexpected {_clip(line)}")
    if fields is not None:
        raise ListingError("the output ends inside an entry")
    if partition is None:
        raise ListingError("no partition header (empty output?)")
    _check_count(partition, expected, seen)
    return Listing(tuple(partitions), entries)


def _lines(text: str) -> list[str]:
    """TEXT's lines. Not splitlines(): a name may hold any byte but a newline."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # what follows the last newline
    return lines


def _add_field(fields: dict[str, str], line: str, number: int) -> None:
    """Add LINE, a `key<TAB>value` line of an entry, to FIELDS; ListingError otherwise."""
    key, tab, value = line.partition("\t")
    if not tab or not key or key in fields:
        raise ListingError(f"line {number}: expected a field or END_OF_ENTRY, got {_clip(line)}")
    # The value starts after the tabs that align it.
    fields[key] = value.lstrip("\t")


def _clip(line: str) -> str:
    """LINE quoted for an error message, cut short: the output may be anything."""
    return repr(line if len(line) <= _CLIP_CHARS else line[:_CLIP_CHARS] + "...")


def _check_count(partition: str | None, expected: int, seen: int) -> None:
    if partition is not None and seen != expected:
        raise ListingError(f"{partition}: the header announces {expected} volumes, {seen} listed")


def _entry(fields: Mapping[str, str], partition: str, end_line: int) -> VolumeEntry:
    """The entry FIELDS describe; ListingError naming the line its block ends on."""
    where = f"entry ending on line {end_line}"
    for key in ("id", "part", "status", "serv"):
        if key not in fields:
            raise ListingError(f"{where}: no {key!r} line")
    if fields["part"] != partition:
        raise ListingError(f"{where}: partition {fields['part']!r} under the {partition} header")
    volume_id = _integer(fields, "id", where)
    # "ADDRESS<TAB>HOSTNAME": the address is what identifies the server.
    address = fields["serv"].split("\t", 1)[0]
    status = fields["status"]
    name = fields.get("name") or None
    if status != "OK":
        return VolumeEntry(volume_id, partition, address, status, name)
    for key in _REQUIRED_OK:
        if not fields.get(key):
            raise ListingError(f"{where}: volume {volume_id} has no {key!r}")
    return VolumeEntry(
        volume_id,
        partition,
        address,
        status,
        name,
        type=fields["type"],
        diskused_kb=_integer(fields, "diskused", where),
        maxquota_kb=_integer(fields, "maxquota", where),
        filecount=_integer(fields, "filecount", where),
    )


def _integer(fields: Mapping[str, str], key: str, where: str) -> int:
    value = fields[key]
    # isdigit() alone would let "²" through; vos prints ASCII digits only.
    if not (value.isascii() and value.isdigit()):
        raise ListingError(f"{where}: {key} is not a whole number: {value!r}")
    return int(value)


def parse_vldb(text: str) -> dict[int, tuple[str, str]]:
    """Volume ID -> (VLDB entry name, role) from `vos listvldb` output.

    The role is RWrite, ROnly, Backup or RClone (the clone a release makes).
    """
    result: dict[int, tuple[str, str]] = {}
    name: str | None = None
    for line in text.split("\n"):
        if not line.strip() or line.startswith(("Total entries:", "VLDB entries for")):
            continue
        if not line[0].isspace():
            # The entry's name, with the trailing blank vos adds.
            name = line.rstrip(" ")
            continue
        if name is None:
            continue
        for role, volume_id in _VLDB_ID_RE.findall(line):
            result[int(volume_id)] = (name, role)
    return result


@dataclass(frozen=True, slots=True)
class _Copy:
    """One listed copy of a RW volume: where it is and what the listing said."""

    server: str
    entry: VolumeEntry

    @property
    def where(self) -> str:
        return f"{self.server} {self.entry.partition}"

    @property
    def identity(self) -> tuple[str, str, int]:
        # The same copy reached twice (one server configured under two
        # names) has the same address, partition and ID.
        return (self.entry.address, self.entry.partition, self.entry.id)


class AfsScanner(Scanner):
    """One `afs_volume` resource per RW volume on the configured file servers."""

    kind = "afs"
    resource_kind = "afs_volume"

    def __init__(
        self,
        name: str,
        servers: Sequence[str],
        partitions: Sequence[str] = (),
        *,
        volume_pattern: re.Pattern[str] = re.compile(DEFAULT_VOLUME_PATTERN),
        vos: str = "vos",
        vos_args: Sequence[str] = (),
        timeout: int = 300,
    ) -> None:
        super().__init__(name)
        self.servers = tuple(servers)
        # Letters only ("a"); empty means every partition the server has.
        self.partitions = tuple(partitions)
        self.volume_pattern = volume_pattern
        self.vos = vos
        self.vos_args = tuple(vos_args)
        self.timeout = timeout

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, object], base_dir: Path) -> Self:
        """Options: `servers`; `partitions`, `volume_pattern`, `vos`, `vos_args`, `timeout`."""
        reader = Options(options)
        if not reader.has("servers"):
            raise OptionError("servers", "is required (the file servers to list)")
        servers = _servers(reader.string_list("servers"))
        partitions = _partitions(reader.string_list("partitions"))
        pattern = _volume_pattern(reader.string("volume_pattern", DEFAULT_VOLUME_PATTERN))
        vos = reader.string("vos", "vos")
        if not vos:
            raise OptionError("vos", "must name the vos program")
        # A bare name is looked up on PATH; a relative path is the config's.
        if "/" in vos:
            vos = str(resolve_path(vos, base_dir))
        vos_args = reader.string_list("vos_args")
        timeout = reader.duration("timeout", DEFAULT_TIMEOUT)
        if timeout <= 0:
            raise OptionError("timeout", "must be more than 0 seconds")
        reader.finish()
        return cls(
            name,
            servers,
            partitions,
            volume_pattern=pattern,
            vos=vos,
            vos_args=vos_args,
            timeout=timeout,
        )

    def member_for(self, volume: str) -> str | None:
        """The member VOLUME belongs to by `volume_pattern`, or None."""
        match = self.volume_pattern.search(volume)
        if match is None:
            return None
        member = match.group("member")
        return member if member is not None and is_member_name(member) else None

    def scan(
        self,
        progress: Progress | None = None,
        context: ScanContext | None = None,  # noqa: ARG002 - the servers keep the state
    ) -> Iterator[ScanItem]:
        """Measure every RW volume; SourceError if any listing cannot be had or read."""
        jobs = [(s, p) for s in self.servers for p in (self.partitions or (None,))]
        copies: dict[str, list[_Copy]] = {}
        nameless: list[_Copy] = []
        for done, (server, partition) in enumerate(jobs, 1):
            for entry in self._listing(server, partition):
                copy = _Copy(server, entry)
                if entry.name is None:
                    nameless.append(copy)
                elif entry.type == "RW" or (
                    # Named but not OK: from an older vos, which printed the
                    # name but no type. Clone names end so; RW names cannot.
                    entry.status != "OK" and not entry.name.endswith(_CLONE_SUFFIXES)
                ):
                    copies.setdefault(entry.name, []).append(copy)
            if progress is not None:
                where = f"/vicep{partition}" if partition else "all partitions"
                progress(f"{server} {where}", done, len(jobs))
        unknown = self._name_from_vldb(nameless, copies) if nameless else []
        for volume in sorted(copies):
            yield self._item(volume, copies[volume])
        yield from unknown

    def _item(self, volume: str, found: list[_Copy]) -> ScanItem:
        member = self.member_for(volume)
        by_identity: dict[tuple[str, str, int], _Copy] = {}
        for copy in found:
            by_identity.setdefault(copy.identity, copy)
        distinct = list(by_identity.values())
        if len(distinct) > 1:
            sites = ", ".join(f"ID {c.entry.id} on {c.where}" for c in distinct)
            return ResourceFailure(
                member,
                self.resource_kind,
                volume,
                f"volume listed {len(distinct)} times ({sites}); cannot tell which copy "
                "is the volume (a vos move in progress?)",
            )
        (copy,) = distinct
        entry = copy.entry
        if entry.status != "OK":
            return ResourceFailure(member, self.resource_kind, volume, _not_ok(copy))
        # Both set for every OK entry by the parser.
        assert entry.diskused_kb is not None
        assert entry.filecount is not None
        detail: dict[str, DetailValue] = {
            "id": entry.id,
            "server": copy.server,
            "partition": entry.partition,
            "maxquota_kb": entry.maxquota_kb or 0,
        }
        return Measurement(
            member, self.resource_kind, volume, entry.diskused_kb * 1024, entry.filecount, detail
        )

    def _name_from_vldb(
        self, nameless: list[_Copy], copies: dict[str, list[_Copy]]
    ) -> list[ScanItem]:
        """File each nameless (busy) copy under its VLDB name; failures for the unknown ones."""
        ids = sorted({copy.entry.id for copy in nameless})
        shown = ", ".join(map(str, ids[:_SHOWN_IDS])) + (", ..." if len(ids) > _SHOWN_IDS else "")
        vldb = parse_vldb(
            self.run_vos(["listvldb", "-quiet"], f"the VLDB (to name volumes {shown})")
        )
        unknown: dict[str, ScanItem] = {}
        for copy in nameless:
            named = vldb.get(copy.entry.id)
            if named is None:
                # Not in the VLDB: a volume being created or restored, or an
                # orphan. No name to keep a value under; shown, not dropped.
                # Parentheses cannot occur in a VLDB name.
                name = f"(volume {copy.entry.id})"
                error = f"{_not_ok(copy)}, and the VLDB does not know it: its name is unknown"
                unknown.setdefault(name, ResourceFailure(None, self.resource_kind, name, error))
            elif named[1] == "RWrite":
                copies.setdefault(named[0], []).append(copy)
            # A busy clone (read-only, backup, a release's clone) is not counted anyway.
        return list(unknown.values())

    def _listing(self, server: str, partition: str | None) -> list[VolumeEntry]:
        args = ["listvol", server, *([f"/vicep{partition}"] if partition else []), "-format"]
        text = self.run_vos(args, f"server {server}")
        if partition is None and not text.strip():
            # No partition at all: its disks not mounted, say. Taking that
            # for "no volumes" would charge every member 0.
            raise SourceError(
                f"{self._show(args)}: server {server} reports no partitions; "
                "list the partitions to measure in `partitions`"
            )
        try:
            listing = parse_listing(text)
        except ListingError as exc:
            raise SourceError(
                f"{self._show(args)}: unexpected output from {server}: {exc}"
            ) from None
        if partition is not None and listing.partitions != (f"/vicep{partition}",):
            raise SourceError(
                f"{self._show(args)}: asked for /vicep{partition}, {server} listed "
                f"{', '.join(listing.partitions)}"
            )
        return listing.entries

    def _show(self, args: Sequence[str]) -> str:
        return shlex.join([self.vos, *args, *self.vos_args])

    def run_vos(self, args: Sequence[str], what: str) -> str:
        """Stdout of `vos ARGS VOS_ARGS`; SourceError naming the command and WHAT otherwise.

        Public: the AFS enforcer runs vos the same safe way (argument list,
        C locale, own process group, timeout).
        """
        command = [self.vos, *args, *self.vos_args]
        shown = self._show(args)
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                # vos's messages (quoted in errors) in English, whatever the locale.
                env={**os.environ, "LC_ALL": "C"},
                # Its own process group, so that a timeout kills whatever
                # it started too: a child left holding the pipes would hang
                # the read below past the timeout.
                start_new_session=True,
            )
        except OSError as exc:
            raise SourceError(
                f"{shown}: cannot run {self.vos!r} for {what}: "
                f"{exc.strerror or exc} (is openafs-client installed? see the source's `vos`)"
            ) from None
        try:
            out, err = process.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            raise SourceError(
                f"{shown}: no answer from {what} within {self.timeout} s (timeout)"
            ) from None
        if process.returncode != 0:
            how = (
                f"killed by signal {-process.returncode}"
                if process.returncode < 0
                else f"exit status {process.returncode}"
            )
            raise SourceError(f"{shown} failed for {what} ({how}): {_excerpt(err or out)}")
        # Volume names are bytes on the server; undecodable ones are escaped
        # later, the same way on every scan.
        return out.decode("utf-8", "surrogateescape")


def _not_ok(copy: _Copy) -> str:
    state = {"BUSY": "busy (another vos operation holds it)", "UNATTACHABLE": "unattachable"}
    status = state.get(copy.entry.status, f"in state {copy.entry.status!r}")
    return f"volume {copy.entry.id} on {copy.where} is {status}"


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate()


def _excerpt(output: bytes) -> str:
    """The last few non-blank lines of OUTPUT, short enough for an error message."""
    lines = [line.strip() for line in output.decode("utf-8", "replace").splitlines()]
    text = "; ".join([line for line in lines if line][-_EXCERPT_LINES:])
    if len(text) > _EXCERPT_CHARS:
        text = "..." + text[-_EXCERPT_CHARS:]
    return text or "no message"


def _servers(values: Sequence[str]) -> tuple[str, ...]:
    if not values:
        raise OptionError("servers", "must list at least one file server")
    seen: set[str] = set()
    for server in values:
        # A leading "-" would reach vos as a switch of its own.
        if not server or server.startswith("-") or any(c.isspace() for c in server):
            raise OptionError("servers", f"not a server name or address: {server!r}")
        if server.lower() in seen:
            raise OptionError("servers", f"{server!r} is listed twice")
        seen.add(server.lower())
    return tuple(values)


def _partitions(values: Sequence[str]) -> tuple[str, ...]:
    letters: list[str] = []
    for value in values:
        match = _PARTITION_RE.match(value)
        if match is None:
            raise OptionError(
                "partitions", f'not a partition: {value!r} (use "a", "vicepa" or "/vicepa")'
            )
        if match["letters"] in letters:
            raise OptionError("partitions", f"/vicep{match['letters']} is listed twice")
        letters.append(match["letters"])
    return tuple(letters)


def _volume_pattern(text: str) -> re.Pattern[str]:
    try:
        pattern = re.compile(text)
    except re.error as exc:
        raise OptionError("volume_pattern", f"not a regular expression: {exc}") from None
    if "member" not in pattern.groupindex:
        raise OptionError("volume_pattern", "needs a named group (?P<member>...)")
    return pattern
