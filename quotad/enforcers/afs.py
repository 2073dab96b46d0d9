"""The `afs` enforcer: an over-quota member's RW volume is capped at what it already holds.

restrict sets the volume's quota (`vos setfields -maxquota`, in KB) to its
current `diskused`, so the file server refuses every further write while the
member can still read and delete; lift puts back the quota the snapshot
saved. With `native_quota = true`, push_limit also keeps each volume's quota
at the member's hard limit, so that AFS itself holds the member to it
between scans.

The snapshot names the volume by its ID, and restrict and lift act on that
ID: a volume renamed meanwhile is still the member's volume and gets its
quota back, and a new volume that took the old name is never touched. A
volume the VLDB no longer knows has nothing left to restore.

Every `vos` runs through the scanner's runner (argument lists, `LC_ALL=C`,
its own process group, the source's timeout).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from quotad.enforcers.base import Enforcer, EnforcerError, Saved, Target
from scanners.afs import AfsScanner, ListingError, parse_listing, parse_vldb
from scanners.base import Scanner, SourceError
from scanners.options import Options

# `vos setfields` takes a signed 32-bit count of KB (about 2 TiB); 0 means unlimited.
MAX_QUOTA_KB = 2**31 - 1
KB = 1024

_PART_RE = re.compile(r"^part\t+(/vicep[a-z]{1,2})$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Volume:
    """A RW volume as `vos examine -format` shows it now."""

    id: int
    name: str
    server: str
    partition: str
    diskused_kb: int
    maxquota_kb: int


def parse_examine(text: str) -> Volume:
    """The volume `vos examine -format` describes; ListingError if it cannot be read.

    Its first block is the one `vos listvol -format` prints per volume (the
    VLDB entry follows after a blank line), so it is read as a one-entry
    listing: both outputs then go through the same checks.
    """
    block = text.split("\n\n", 1)[0].rstrip("\n")
    part = _PART_RE.search(block)
    if part is None:
        raise ListingError(f"no partition line in {block[:80]!r}")
    header = f"Total number of volumes on server - partition {part[1]}: 1"
    (entry,) = parse_listing(f"{header}\nBEGIN_OF_ENTRY\n{block}\nEND_OF_ENTRY\n").entries
    if entry.status != "OK":
        state = {"BUSY": "busy (another vos operation holds it)"}.get(entry.status)
        raise ListingError(f"volume {entry.id} is {state or repr(entry.status)}")
    if entry.type != "RW":
        raise ListingError(f"volume {entry.id} is not a RW volume (type {entry.type})")
    # Set for every OK entry by the parser.
    assert entry.name is not None
    assert entry.diskused_kb is not None
    assert entry.maxquota_kb is not None
    return Volume(
        entry.id, entry.name, entry.address, entry.partition, entry.diskused_kb, entry.maxquota_kb
    )


def quota_kb(hard_bytes: int) -> int:
    """HARD_BYTES as an AFS quota: KB rounded up, and at least 1 (0 would mean unlimited)."""
    return max(1, -(-hard_bytes // KB))


def _shown(kb: int) -> str:
    return "unlimited" if kb == 0 else f"{kb} KB"


class AfsEnforcer(Enforcer):
    """Caps RW volumes with `vos setfields -maxquota`; optionally pushes hard limits as quotas."""

    source_kind = "afs"
    OPTIONS = frozenset({"native_quota"})

    def __init__(self, scanner: AfsScanner, *, native_quota: bool = False) -> None:
        super().__init__(scanner)
        self.afs = scanner
        self.native_quota = native_quota

    @classmethod
    def from_options(
        cls,
        scanner: Scanner,
        options: Mapping[str, object],
        base_dir: Path,  # noqa: ARG003 - no paths among its options
    ) -> Self:
        """Options: `native_quota` (false): keep each volume's quota at the hard limit."""
        if not isinstance(scanner, AfsScanner):
            raise TypeError(f"the afs enforcer needs an afs scanner, got {type(scanner).__name__}")
        reader = Options(options)
        native_quota = reader.boolean("native_quota", default=False)
        reader.finish()
        return cls(scanner, native_quota=native_quota)

    @classmethod
    def available(cls, scanner: Scanner) -> str | None:
        if not isinstance(scanner, AfsScanner):
            return f"the afs enforcer needs an afs source, not {scanner.kind!r}"
        return None

    def snapshot(self, target: Target) -> Saved:
        volume = self._examine(target.name)
        if volume is None:
            raise EnforcerError(f"volume {target.name} does not exist (the VLDB has no entry)")
        return {
            "volume": volume.name,
            "id": volume.id,
            "server": volume.server,
            "partition": volume.partition,
            "maxquota_kb": volume.maxquota_kb,
            "diskused_kb": volume.diskused_kb,
        }

    def restrict(self, target: Target, saved: Saved) -> str:
        volume_id, _ = _from_saved(target, saved)
        volume = self._examine(volume_id)
        if volume is None:
            return f"volume {target.name} (ID {volume_id}) no longer exists: nothing to restrict"
        cap = max(1, volume.diskused_kb)
        # Never raise a quota: one already at or under the volume's use
        # refuses writes as it is.
        if volume.maxquota_kb and volume.maxquota_kb <= cap:
            return (
                f"volume {volume.name}: quota already {volume.maxquota_kb} KB with "
                f"{volume.diskused_kb} KB used, no writes possible: unchanged"
            )
        self._set_quota(volume, cap)
        return (
            f"volume {volume.name}: quota {_shown(volume.maxquota_kb)} -> {cap} KB "
            "(its use): no more writes"
        )

    def lift(self, target: Target, saved: Saved) -> str:
        volume_id, saved_kb = _from_saved(target, saved)
        volume = self._examine(volume_id)
        if volume is None:
            return f"volume {target.name} (ID {volume_id}) no longer exists: nothing to restore"
        renamed = f" (was {target.name})" if volume.name != target.name else ""
        if volume.maxquota_kb == saved_kb:
            return f"volume {volume.name}{renamed}: quota already {_shown(saved_kb)}: unchanged"
        self._set_quota(volume, saved_kb)
        return (
            f"volume {volume.name}{renamed}: quota {_shown(volume.maxquota_kb)} -> "
            f"{_shown(saved_kb)} (as before the restriction)"
        )

    def push_limit(self, target: Target) -> str | None:
        if not self.native_quota or target.hard_bytes is None:
            return None
        wanted = quota_kb(target.hard_bytes)
        if wanted > MAX_QUOTA_KB:
            raise EnforcerError(
                f"volume {target.name}: the hard limit of {target.hard_bytes} bytes is over "
                f"the largest AFS quota ({MAX_QUOTA_KB} KB); its quota is left as it is"
            )
        volume = self._examine(target.name)
        # Gone since the last scan, which will drop it: nothing to hold to a limit.
        if volume is None or volume.maxquota_kb == wanted:
            return None
        self._set_quota(volume, wanted)
        return (
            f"volume {volume.name}: quota {_shown(volume.maxquota_kb)} -> {wanted} KB "
            f"(the hard limit of {target.hard_bytes} bytes)"
        )

    def _examine(self, volume: str | int) -> Volume | None:
        """VOLUME (a name or an ID) now; None when the VLDB no longer knows it."""
        args = ["examine", "-id", str(volume), "-format"]
        try:
            text = self._vos(args, f"volume {volume}")
        except EnforcerError as failed:
            # vos's message does not tell a missing volume from a failing
            # server; a VLDB that answers without it does.
            try:
                gone = self._gone(volume)
            except EnforcerError:
                raise failed from None
            if gone:
                return None
            raise
        try:
            return parse_examine(text)
        except ListingError as exc:
            shown = shlex.join([self.afs.vos, *args, *self.afs.vos_args])
            raise EnforcerError(f"{shown}: unexpected answer for volume {volume}: {exc}") from None

    def _gone(self, volume: str | int) -> bool:
        """Whether the VLDB, which must answer, lacks VOLUME (an ID, or a RW volume's name)."""
        vldb = parse_vldb(self._vos(["listvldb", "-quiet"], "the VLDB"))
        if isinstance(volume, int):
            return volume not in vldb
        return (volume, "RWrite") not in vldb.values()

    def _set_quota(self, volume: Volume, kb: int) -> None:
        args = ["setfields", "-id", str(volume.id), "-maxquota", str(kb)]
        self._vos(args, f"volume {volume.name}")

    def _vos(self, args: list[str], what: str) -> str:
        try:
            return self.afs.run_vos(args, what)
        except SourceError as exc:
            raise EnforcerError(str(exc)) from None


def _from_saved(target: Target, saved: Saved) -> tuple[int, int]:
    """(volume ID, quota in KB) from an afs snapshot; EnforcerError for anything else."""
    volume_id = saved.get("id")
    maxquota_kb = saved.get("maxquota_kb")
    for value in (volume_id, maxquota_kb):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise EnforcerError(
                f"volume {target.name}: the saved state is not an afs snapshot "
                "(needs a volume id and maxquota_kb)"
            )
    assert isinstance(volume_id, int)
    assert isinstance(maxquota_kb, int)
    return volume_id, maxquota_kb
