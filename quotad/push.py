"""The agent side of POST /scans: send this host's scans to a central quotad.

A scan is written to an outbox folder before it is sent and removed only
once the server has answered that it is recorded (201) or was recorded
before (200). Every retry sends the very same bytes under the same
`scan_id`, so the server records a scan once however often it arrives; a
scan the server could not take now (down, restarting, a token problem) stays
in the outbox and goes first on the next run. Nothing measured is lost and
nothing is counted twice.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import random
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quotad.errors import InvalidInput
from quotad.ledger.service import ScanInput
from quotad.timeutil import format_time, parse_time
from scanners.base import Measurement, ResourceFailure

log = logging.getLogger(__name__)

RECORDED = "recorded"  # 201: the server recorded it now
REPLAYED = "replayed"  # 200: the server had it already; it counted once
PENDING = "pending"  # kept in the outbox, sent again next run
REJECTED = "rejected"  # the server will never take it; kept aside for a person to read

OK = 200  # this very scan was recorded before
CREATED = 201
FORBIDDEN = 403
CONFLICT = 409

# Answers after which the same request may succeed later.
_TRANSIENT = frozenset({408, 425, 429, 500, 502, 503, 504})
# Answers that say the scan itself is wrong: sending it again cannot help.
_REFUSED = frozenset({400, 409, 413, 422})

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
REQUEST_TIMEOUT = 120.0


def scan_body(scan: ScanInput) -> bytes:
    """The scan as POST /scans takes it (INTERFACE.md section 4)."""
    body: dict[str, Any] = {
        "scan_id": str(scan.scan_id),
        "source": scan.source,
        "source_kind": scan.source_kind,
        "started_at": format_time(scan.started_at),
        "finished_at": format_time(scan.finished_at),
        "measurements": [
            {
                "member": m.member,
                "kind": m.kind,
                "name": m.name,
                "bytes": m.bytes,
                "files": m.files,
                "detail": dict(m.detail),
            }
            for m in scan.measurements
        ],
        "failures": [
            {"member": f.member, "kind": f.kind, "name": f.name, "error": f.error}
            for f in scan.failures
        ],
    }
    if scan.error is not None:
        body["error"] = scan.error
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Delivery:
    """What became of one scan in the outbox."""

    path: Path
    scan_id: str
    source: str
    outcome: str
    status: int | None  # the server's HTTP status, None when it never answered
    detail: str
    zeroed: int = 0  # as the server counted them when it recorded the scan

    @property
    def delivered(self) -> bool:
        return self.outcome in {RECORDED, REPLAYED}


class Outbox:
    """Scans waiting to be sent, one JSON file each, oldest first by name."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.rejected = root / "rejected"

    def check(self) -> None:
        """Fail before anything is measured if scans could not be kept here."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise InvalidInput(
                f"cannot keep scans in the outbox {self.root} (set cache_dir?): {exc}"
            ) from exc

    def put(self, scan: ScanInput) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        # Named by when it was kept, to the nanosecond: sent in the order measured,
        # even for scans that finished within the same second.
        path = self.root / f"{time.time_ns():020d}-{scan.source}-{scan.scan_id}.json"
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as out:
            out.write(scan_body(scan))
            out.flush()
            # On disk before it counts as kept: a crash right after must not lose it.
            os.fsync(out.fileno())
        tmp.replace(path)
        _fsync_dir(self.root)
        return path

    def pending(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(self.root.glob("*.json"))

    def done(self, path: Path) -> None:
        # Another run sending the same file at once is harmless: the server
        # answered both with the one recorded scan.
        path.unlink(missing_ok=True)

    def reject(self, path: Path, why: str) -> Path:
        self.rejected.mkdir(parents=True, exist_ok=True)
        target = self.rejected / path.name
        with contextlib.suppress(FileNotFoundError):  # another run moved it already
            path.replace(target)
        target.with_suffix(".why").write_text(why + "\n", encoding="utf-8")
        return target


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read the token file {path}: {exc}") from exc
    if not token or any(c.isspace() for c in token):
        raise InvalidInput(
            f"the token file {path} must hold one token (from `quotad token create`)"
        )
    return token


def scans_url(base: str) -> str:
    """POST /scans of the quotad at BASE (its root URL, or the /scans URL itself)."""
    parts = urllib.parse.urlsplit(base)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise InvalidInput(f"--push needs an http:// or https:// URL, not {base!r}")
    if parts.query or parts.fragment:
        raise InvalidInput(f"--push takes quotad's root URL, without a query: {base!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/scans"):
        path += "/scans"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


@dataclass(frozen=True, slots=True)
class Answer:
    status: int | None
    detail: str
    retry_after: float | None = None
    zeroed: int = 0


class Pusher:
    """Sends outbox files to one server, retrying what may succeed later until a deadline."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        retry_for: float,
        request_timeout: float = REQUEST_TIMEOUT,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = scans_url(url)
        self.token = token
        self.retry_for = retry_for
        self.request_timeout = request_timeout
        self.sleep = sleep
        self.clock = clock

    def post(self, body: bytes) -> Answer:
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked in scans_url
            self.url,
            data=body,
            method="POST",
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.request_timeout) as response:  # noqa: S310
                raw = response.read()
                return Answer(response.status, _detail(raw), zeroed=_zeroed(raw))
        except urllib.error.HTTPError as exc:
            with exc:
                return Answer(exc.code, _detail(exc.read()), _retry_after(exc.headers))
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            # Refused, reset, timed out, or the connection closed before the
            # answer: whether the server recorded it is unknown, and resending
            # the same scan_id is safe either way.
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            return Answer(None, f"{type(reason).__name__}: {reason}")

    def deliver(self, outbox: Outbox, paths: Sequence[Path] | None = None) -> list[Delivery]:
        """Send each scan (every pending one by default), oldest first."""
        deadline = self.clock() + self.retry_for
        results: list[Delivery] = []
        stopped: Answer | None = None
        for path in outbox.pending() if paths is None else paths:
            try:
                scan_id, source, body = _read(path)
            except FileNotFoundError:
                continue  # another run at the same time sent it already
            if stopped is not None:
                results.append(
                    Delivery(path, scan_id, source, PENDING, stopped.status, stopped.detail)
                )
                continue
            answer = self._send_until(body, deadline)
            outcome = self._outcome(answer)
            if outcome in {RECORDED, REPLAYED}:
                outbox.done(path)
            elif outcome == REJECTED:
                where = outbox.reject(path, f"HTTP {answer.status}: {answer.detail}")
                log.error("the server refused scan %s of %s; kept in %s", scan_id, source, where)
            if outcome == PENDING and answer.status != FORBIDDEN:
                # The server is gone, will not take this caller, or is not a
                # quotad: the rest would fare alike, so keep them for next time.
                # (A 403 is about this scan's source only.)
                stopped = answer
            results.append(
                Delivery(
                    path, scan_id, source, outcome, answer.status, answer.detail, answer.zeroed
                )
            )
        return results

    @staticmethod
    def _outcome(answer: Answer) -> str:
        if answer.status == CREATED:
            return RECORDED
        if answer.status == OK:
            return REPLAYED
        if answer.status in _REFUSED and not _transient(answer):
            return REJECTED
        return PENDING

    def _send_until(self, body: bytes, deadline: float) -> Answer:
        attempt = 0
        while True:
            answer = self.post(body)
            if not _transient(answer):
                return answer
            delay = _backoff(attempt, answer.retry_after)
            if self.clock() + delay > deadline:
                return answer
            log.warning(
                "sending to %s failed (%s); trying again in %.1f s",
                self.url,
                f"HTTP {answer.status}" if answer.status else answer.detail,
                delay,
            )
            self.sleep(delay)
            attempt += 1


def _transient(answer: Answer) -> bool:
    """Whether the same request may succeed later."""
    return (
        answer.status is None
        or answer.status in _TRANSIENT
        # A 409 that says "again later": the same scan racing itself.
        or (answer.status == CONFLICT and answer.retry_after is not None)
    )


def _backoff(attempt: int, retry_after: float | None) -> float:
    # Jitter keeps many agents that lost one server from coming back in step.
    delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** min(attempt, 16)) * random.uniform(0.75, 1.25)  # noqa: S311
    if retry_after is not None:
        delay = max(delay, min(retry_after, BACKOFF_MAX))
    return delay


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(str(value))) if value is not None else None
    except ValueError:
        return None


def _detail(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw[:200].decode("utf-8", "replace").strip()
    if isinstance(body, dict):
        if "detail" in body:
            return str(body["detail"])
        if "status" in body:
            return f"{body['status']}, {body.get('measurements', 0)} measurements"
    return str(body)[:200]


def _zeroed(raw: bytes) -> int:
    try:
        value = json.loads(raw).get("zeroed", 0)
    except (ValueError, AttributeError):
        return 0
    return value if isinstance(value, int) else 0


def scan_from_body(body: bytes) -> ScanInput:
    """A scan read back from its outbox file (what scan_body wrote)."""
    data = json.loads(body)
    return ScanInput(
        scan_id=uuid.UUID(data["scan_id"]),
        source=data["source"],
        source_kind=data["source_kind"],
        started_at=parse_time(data["started_at"]),
        finished_at=parse_time(data["finished_at"]),
        measurements=[
            Measurement(m["member"], m["kind"], m["name"], m["bytes"], m["files"], m["detail"])
            for m in data["measurements"]
        ],
        failures=[
            ResourceFailure(f["member"], f["kind"], f["name"], f["error"]) for f in data["failures"]
        ],
        error=data.get("error"),
    )


def _read(path: Path) -> tuple[str, str, bytes]:
    body = path.read_bytes()
    try:
        head = json.loads(body)
        return str(head["scan_id"]), str(head["source"]), body
    except (ValueError, KeyError, TypeError):
        # Still sent: the server's answer (422) says what is wrong with it.
        return path.stem, "?", body
