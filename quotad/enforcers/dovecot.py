"""The `maildir` enforcer: Dovecot itself refuses mail once the member's mailbox is capped.

Dovecot takes per-user quota limits from the userdb (`quota_rule` overrides
the `plugin { quota_rule }` default). quotad keeps a passwd-file of its own,
read by Dovecot as a second userdb that only adds fields to the user the
first one found (docs/enforcers/dovecot.md has the dovecot.conf part):

    alice:::::::userdb_quota_rule=*:storage=1061234567B

restrict writes such a line, with the mailbox's Maildir++ usage as the limit,
so that no new message fits while the member can still read and delete;
lift puts back exactly the line the user had before, or removes the line if
there was none. Other lines, comments and the file's permissions are never
touched.

Writers take an exclusive lock on `<file>.lock` and replace the file by
rename, so Dovecot reads either the old file or the new one, never half of
one. Dovecot re-reads a passwd-file when its mtime (in whole seconds) or size
changed, looking at most once a second: each write moves the mtime to
another second, and with `doveadm` set, restrict waits until Dovecot gives
the new rule before it reports success.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Self

from quotad.enforcers.base import Enforcer, EnforcerError, Saved, Target
from scanners.base import OptionError, Scanner
from scanners.options import Options

# The userdb field that carries the default rule. Dovecot reads quota_rule,
# quota_rule2, ... in order; the first is the one an admin's line also uses.
RULE_FIELD = "userdb_quota_rule"
# Fields of a passwd-file line before the extra fields (user:pass:uid:gid:gecos:home:shell).
_FIXED_FIELDS = 7
LOCK_TIMEOUT = 30.0
# Dovecot looks at the file at most once a second; a second and a half more
# covers the write's own second and a slow auth process.
VERIFY_TIMEOUT = 3.0
DOVEADM_TIMEOUT = 30.0
_NS = 1_000_000_000

_UNIT_RE = re.compile(r"^(\d+)([bBkKmMgGtT]?)$")
_UNITS = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_BAD_USER_RE = re.compile(r"[:\s#]")


def mailbox_bytes(target: Target) -> int:
    """What Dovecot counts against the quota: `message_bytes`, else the bytes on disk."""
    value = target.detail.get("message_bytes")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    # Bytes on disk include index files: more than Dovecot counts, never less.
    return target.bytes


def rule_limit(line: str | None) -> int | None:
    """The byte limit the default rule in LINE's `userdb_quota_rule` sets, or None.

    None also for what is not an absolute default limit (another mailbox's
    rule, a percentage, 0 which means unlimited).
    """
    value = _fields(line).get(RULE_FIELD) if line is not None else None
    if value is None:
        return None
    mask, _, limits = value.partition(":")
    if mask not in ("*", "?"):
        return None
    found = None
    for limit in limits.split(":"):
        key, _, amount = limit.partition("=")
        # `storage` counts KiB without a unit, `bytes` bytes (quota-util.c).
        default_unit = {"storage": "k", "bytes": "b"}.get(key)
        match = _UNIT_RE.match(amount)
        if default_unit is None or match is None:
            continue
        found = int(match[1]) * _UNITS[(match[2] or default_unit).lower()]
    return found or None


def _fields(line: str) -> dict[str, str]:
    parts = line.split(":", _FIXED_FIELDS)
    extra = parts[_FIXED_FIELDS] if len(parts) > _FIXED_FIELDS else ""
    fields: dict[str, str] = {}
    for token in extra.split(" "):
        key, _, value = token.partition("=")
        fields.setdefault(key, value)
    return fields


def restricted_line(user: str, saved_line: str | None, limit: int) -> str:
    """SAVED_LINE (or a bare line for USER) with its default rule set to LIMIT bytes.

    The line's other fields stay: a mail location or a second rule the admin
    gave the user still holds while restricted.
    """
    rule = f"{RULE_FIELD}=*:storage={limit}B"
    if saved_line is None:
        return f"{user}{':' * _FIXED_FIELDS}{rule}"
    parts = saved_line.split(":", _FIXED_FIELDS)
    parts += [""] * (_FIXED_FIELDS + 1 - len(parts))
    tokens = [t for t in parts[_FIXED_FIELDS].split(" ") if t]
    replaced = [rule if t.partition("=")[0] == RULE_FIELD else t for t in tokens]
    if rule not in replaced:
        replaced.append(rule)
    return ":".join([*parts[:_FIXED_FIELDS], " ".join(replaced)])


def _line_user(line: bytes) -> bytes | None:
    if not line.strip() or line.lstrip().startswith(b"#"):
        return None
    return line.split(b":", 1)[0]


def _terminator(line: bytes) -> bytes:
    if line.endswith(b"\r\n"):
        return b"\r\n"
    return b"\n" if line.endswith(b"\n") else b""


class QuotaFile:
    """quotad's passwd-file for Dovecot: one line per user, changed under a lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")

    def line(self, user: str) -> str | None:
        """USER's line (the first, the one Dovecot uses) without its line break, or None."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise EnforcerError(f"cannot read {self.path}: {exc.strerror}") from None
        lines = data.splitlines(keepends=True)
        index = _find(lines, user)
        return None if index is None else _decode(lines[index], self.path, user)

    def set_line(self, user: str, line: str | None) -> tuple[bool, str | None]:
        """Make USER's line LINE (None: no line); whether the file changed, and the old line."""
        with self._locked():
            try:
                data = self.path.read_bytes()
                st: os.stat_result | None = self.path.stat()
            except FileNotFoundError:
                data, st = b"", None
            except OSError as exc:
                raise EnforcerError(f"cannot read {self.path}: {exc.strerror}") from None
            lines = data.splitlines(keepends=True)
            index = _find(lines, user)
            old = None if index is None else _decode(lines[index], self.path, user)
            if old == line:
                return False, old
            if index is None:
                assert line is not None
                # A file without a final line break keeps none: lift then
                # takes the added line out and gives back the same bytes.
                if lines and not _terminator(lines[-1]):
                    lines[-1] += b"\n"
                    lines.append(line.encode())
                else:
                    lines.append(line.encode() + b"\n")
            elif line is None:
                if index == len(lines) - 1 and not _terminator(lines[index]) and index > 0:
                    previous = lines[index - 1]
                    lines[index - 1] = previous[: len(previous) - len(_terminator(previous))]
                del lines[index]
            else:
                lines[index] = line.encode() + _terminator(lines[index])
            self._replace(b"".join(lines), st)
            return True, old

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # The file itself is replaced by rename, so the lock lives beside it.
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise EnforcerError(f"cannot open {self.lock_path}: {exc.strerror}") from None
        try:
            deadline = time.monotonic() + LOCK_TIMEOUT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise EnforcerError(
                            f"{self.lock_path} stayed locked by another writer for "
                            f"{LOCK_TIMEOUT:.0f} s"
                        ) from None
                    time.sleep(0.01)
            yield
        finally:
            os.close(fd)

    def _replace(self, data: bytes, st: os.stat_result | None) -> None:
        directory = self.path.parent
        try:
            fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{self.path.name}.")
        except OSError as exc:
            raise EnforcerError(f"cannot write in {directory}: {exc.strerror}") from None
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                if st is None:
                    os.fchmod(out.fileno(), 0o644)
                else:
                    os.fchmod(out.fileno(), st.st_mode & 0o7777)
                    if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                        os.fchown(out.fileno(), st.st_uid, st.st_gid)
                os.fsync(out.fileno())
            os.utime(temp, ns=(_new_mtime(st), _new_mtime(st)))
            Path(temp).replace(self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                Path(temp).unlink()
            if exc.errno == errno.EPERM and st is not None:
                raise EnforcerError(
                    f"cannot keep {self.path}'s owner {st.st_uid}:{st.st_gid}: {exc.strerror}"
                ) from None
            raise EnforcerError(f"cannot replace {self.path}: {exc.strerror}") from None
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _new_mtime(st: os.stat_result | None) -> int:
    # Dovecot notices a change only by mtime seconds or size: a rule of the
    # same length written in the second of the last write must move the mtime.
    now = time.time_ns()
    if st is not None and now // _NS == st.st_mtime_ns // _NS:
        return (now // _NS + 1) * _NS
    return now


def _find(lines: Sequence[bytes], user: str) -> int | None:
    key = user.encode()
    return next((i for i, line in enumerate(lines) if _line_user(line) == key), None)


def _decode(line: bytes, path: Path, user: str) -> str:
    text = line.rstrip(b"\r\n")
    try:
        return text.decode()
    except UnicodeDecodeError:
        raise EnforcerError(f"the line for {user} in {path} is not UTF-8") from None


class DovecotEnforcer(Enforcer):
    """Caps a member's Dovecot mail quota at the mailbox's usage through a userdb passwd-file."""

    source_kind = "maildir"
    OPTIONS = frozenset({"dovecot_quota_file", "dovecot_user", "doveadm"})
    # Without the file Dovecot reads, a maildir source is only watched.
    REQUIRED = frozenset({"dovecot_quota_file"})

    def __init__(
        self,
        scanner: Scanner,
        quota_file: Path,
        *,
        user_template: str = "{member}",
        doveadm: Sequence[str] | None = None,
    ) -> None:
        super().__init__(scanner)
        self.quota_file = quota_file
        self.user_template = user_template
        self.doveadm = tuple(doveadm) if doveadm is not None else None

    @classmethod
    def from_options(cls, scanner: Scanner, options: Mapping[str, object], base_dir: Path) -> Self:
        """Options: `dovecot_quota_file` (required), `dovecot_user` ("{member}"), `doveadm`."""
        reader = Options(options)
        if not reader.has("dovecot_quota_file"):
            raise OptionError(
                "dovecot_quota_file",
                "is required to enforce on a maildir source (or set enforce = false)",
            )
        quota_file = reader.path("dovecot_quota_file", base_dir)
        template = reader.string("dovecot_user", "{member}")
        if "{member}" not in template or _BAD_USER_RE.search(template.replace("{member}", "")):
            raise OptionError(
                "dovecot_user", f"must contain {{member}} and no ':', '#' or space: {template!r}"
            )
        raw = reader.raw("doveadm")
        doveadm: list[str] | None
        if raw is None:
            doveadm = None
        elif isinstance(raw, str) and raw:
            doveadm = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(a, str) and a for a in raw):
            doveadm = [str(a) for a in raw]
        else:
            raise OptionError(
                "doveadm",
                'must be a command: "doveadm", or a list like ["doveadm", "-c", "/x/dovecot.conf"]',
            )
        reader.finish()
        return cls(scanner, quota_file, user_template=template, doveadm=doveadm)

    def user(self, target: Target) -> str:
        """The Dovecot user name of TARGET's member."""
        user = self.user_template.replace("{member}", target.member)
        if not user or _BAD_USER_RE.search(user):
            raise EnforcerError(f"{user!r} cannot be a user in a Dovecot passwd-file")
        return user

    def snapshot(self, target: Target) -> Saved:
        user = self.user(target)
        return {
            "file": str(self.quota_file),
            "user": user,
            "line": QuotaFile(self.quota_file).line(user),
        }

    def restrict(self, target: Target, saved: Saved) -> str:
        file, user, saved_line = self._from_saved(target, saved)
        limit = max(1, mailbox_bytes(target))  # 0 would mean unlimited
        previous = rule_limit(saved_line)
        if previous is not None and previous < limit:
            limit = previous  # never grant room the user did not have
        line = restricted_line(user, saved_line, limit)
        changed, _ = file.set_line(user, line)
        self._flush(user)
        self._verify(user, _rule_value(line))
        if not changed:
            return f"mail quota of {user} already capped at {limit} B in {file.path}"
        return f"mail quota of {user} capped at {limit} B in {file.path}"

    def lift(self, target: Target, saved: Saved) -> str:
        file, user, saved_line = self._from_saved(target, saved)
        if not file.path.exists():
            return f"{file.path} is gone: nothing of {user} to restore"
        changed, old = file.set_line(user, saved_line)
        self._flush(user)
        if changed:
            self._verify_lifted(user, old, saved_line)
        if not changed:
            return f"mail quota of {user} already as before in {file.path}"
        if saved_line is None:
            return f"line of {user} removed from {file.path} (there was none)"
        return f"line of {user} restored in {file.path}"

    def _from_saved(self, target: Target, saved: Saved) -> tuple[QuotaFile, str, str | None]:
        # Act where the snapshot was taken, even if the config moved the file since.
        path, user, line = saved.get("file"), saved.get("user"), saved.get("line")
        if not isinstance(path, str) or not isinstance(user, str):
            path, user = str(self.quota_file), self.user(target)
        if line is not None and not isinstance(line, str):
            raise EnforcerError(f"the snapshot of {user}'s line is not text: {line!r}")
        if line is not None and _line_user(line.encode()) != user.encode():
            raise EnforcerError(f"the snapshot of {user}'s line is for another user: {line!r}")
        return QuotaFile(Path(path)), user, line

    def _flush(self, user: str) -> None:
        # A userdb behind the auth cache (SQL, LDAP) would keep its old
        # answer for auth_cache_ttl; the passwd-file itself is never cached.
        if self.doveadm is not None:
            self._doveadm("auth", "cache", "flush", user)

    def _verify(self, user: str, rule: str) -> None:
        """Wait until Dovecot's userdb gives RULE for USER: the file is read and in force."""
        self._wait(user, rule, lambda got: got == rule)

    def _verify_lifted(self, user: str, old: str | None, restored: str | None) -> None:
        """Wait until Dovecot no longer gives the rule of the line just replaced.

        Where the restored line has no rule of its own, the answer is the
        first userdb's, which quotad does not know: it is only not the old one.
        """
        new_rule = None if restored is None else _fields(restored).get(RULE_FIELD)
        if new_rule is not None:
            self._verify(user, new_rule)
            return
        old_rule = None if old is None else _fields(old).get(RULE_FIELD)
        if old_rule is not None:
            self._wait(user, f"not {old_rule}", lambda got: got != old_rule)

    def _wait(self, user: str, rule: str, done: Callable[[str], bool]) -> None:
        if self.doveadm is None:
            return
        deadline = time.monotonic() + VERIFY_TIMEOUT
        while True:
            got = self._doveadm("user", "-u", "-f", "quota_rule", user).strip()
            if done(got):
                return
            if time.monotonic() > deadline:
                raise EnforcerError(
                    f"Dovecot gives {user} quota_rule={got or '(none)'}, not {rule}: "
                    f"is {self.quota_file} a userdb in dovecot.conf?"
                )
            time.sleep(0.1)

    def _doveadm(self, *args: str) -> str:
        assert self.doveadm is not None
        command = [*self.doveadm, *args]
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                check=False,
                stdin=subprocess.DEVNULL,
                timeout=DOVEADM_TIMEOUT,
                env={**os.environ, "LC_ALL": "C"},
            )
        except FileNotFoundError:
            raise EnforcerError(f"{command[0]} not found") from None
        except subprocess.TimeoutExpired:
            raise EnforcerError(f"doveadm {' '.join(args)} timed out") from None
        if done.returncode != 0:
            lines = (done.stderr.strip() or done.stdout.strip()).splitlines()
            raise EnforcerError(
                f"doveadm {' '.join(args)} exited {done.returncode}: {lines[-1] if lines else ''}"
            )
        return done.stdout


def _rule_value(line: str) -> str:
    return _fields(line)[RULE_FIELD]
