"""Benchmark the HTTP API and scan recording on a PostgreSQL ledger holding a year of scans.

Usage: .venv/bin/python bench/api.py [--quick] [--members N] [--days D] [--tokens T]
           [--clients C] [--duration S] [--rounds R] [--scan-size M] [--repeat R]

A scratch database (dropped at the end, on Ctrl-C and on failure too) is
migrated by quotad and loaded with MEMBERS members, each measured by 4
sources (homes: tree, mail: maildir, www: tree, db: postgres_database) once a
day for DAYS days: the scans, usage_samples, current_usage, resources and
the members' auto-registration audit rows that recording those scans leaves,
written set-based in SQL. Member tokens come from quotad's TokenService.

Serving: a real `quotad serve` (the console script, a config file naming the
scratch database) answers C concurrent keep-alive clients in this process
(asyncio, one connection each, a minimal HTTP/1.1 reader so that the client
leaves the CPU to the server). Each round times `GET /healthz` and
`GET /me/usage` (each request with the token of a random member) for S
seconds each, alternating which goes first; the medians over R rounds are
compared. Goal: /me/usage answers at least 0.5 of /healthz's requests per
second.

Recording: one scan of M measurements (10 resources per member, kind tree)
recorded the way `quotad scan` records it (quotad.scanning.record, one
transaction), first with every resource new to the ledger (a new source
each repetition) and then again with the resources known (a rescan),
against a raw psycopg COPY of the same rows (member, kind, name, bytes,
files) into a scratch table of those columns, committed. Medians of R.
Goal: the first recording takes at most 3 times the COPY. For scale, also
the COPY of the scan's own usage_samples rows into usage_samples (its
foreign keys checked, its indexes kept, rolled back): what storing the
samples alone costs, before resources and current usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine, func, select

# bench/ is not an installed package: the timing is shared with the other benchmarks.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import format_runs, scratch_database, timed
from quotad import migrate
from quotad.auth.service import TokenService
from quotad.config import load_settings
from quotad.db import make_engine, session_scope
from quotad.ledger.models import CurrentUsage, Source, UsageSample
from quotad.ledger.service import ScanInput
from quotad.scanning import record
from scanners.base import Measurement

USAGE_GOAL = 0.5
RECORD_GOAL = 3.0
# (name, source kind, resource kind, size factor): one resource per member each.
SOURCES = (
    ("homes", "tree", "tree", 4),
    ("mail", "maildir", "maildir", 2),
    ("www", "tree", "tree", 1),
    ("db", "postgres", "postgres_database", 1),
)
# Share of members over the default plan's soft limit, so that /me/usage
# also pays for replaying their history (as it does in production).
OVER_SOFT = 0.1
RESOURCES_PER_MEMBER_IN_SCAN = 10
SAMPLE_COLUMNS = "scan_id, resource_id, member_id, measured_at, bytes, files, present, detail"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Sizes:
    members: int
    days: int
    tokens: int
    clients: int
    duration: float
    rounds: int
    scan_size: int
    repeat: int


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to try it out")
    parser.add_argument("--members", type=int, help="members (default 10,000)")
    parser.add_argument("--days", type=int, help="days of daily scans (default 365)")
    parser.add_argument("--tokens", type=int, help="members with a token (default: all)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--duration", type=float, help="seconds per endpoint per round")
    parser.add_argument("--rounds", type=int, help="rounds of both endpoints (default 3)")
    parser.add_argument("--scan-size", type=int, help="measurements in the recorded scan")
    parser.add_argument("--repeat", type=int, help="timed recordings of each kind (default 3)")
    args = parser.parse_args()
    quick = args.quick
    members = args.members or (1000 if quick else 10_000)
    sizes = Sizes(
        members=members,
        days=args.days or (30 if quick else 365),
        tokens=min(args.tokens or members, members),
        clients=args.clients,
        duration=args.duration or (3.0 if quick else 10.0),
        rounds=args.rounds or (2 if quick else 3),
        scan_size=args.scan_size or (10_000 if quick else 100_000),
        repeat=args.repeat or (2 if quick else 3),
    )
    with (
        tempfile.TemporaryDirectory(prefix="quotad-bench-api-") as tmp,
        scratch_database("api") as url,
    ):
        return run(sizes, url, Path(tmp))


def run(sizes: Sizes, url: str, tmp: Path) -> int:
    engine = make_engine(url)
    try:
        migrate.upgrade_engine(engine)
        dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        started = time.perf_counter()
        soft = load_year(dsn, sizes.members, sizes.days)
        samples = sizes.members * len(SOURCES) * sizes.days
        print(
            f"ledger: {sizes.members} members x {len(SOURCES)} sources x {sizes.days} daily "
            f"scans = {samples} usage samples, loaded in {time.perf_counter() - started:.1f}s",
            flush=True,
        )
        started = time.perf_counter()
        tokens = make_tokens(engine, sizes.members, sizes.tokens)
        print(
            f"tokens: {len(tokens)} member tokens from TokenService in "
            f"{time.perf_counter() - started:.1f}s",
            flush=True,
        )
        config = write_config(tmp, url, soft)
        failed = serve_and_measure(config, tmp, tokens, sizes)
        failed |= measure_recording(engine, dsn, config, sizes)
    finally:
        engine.dispose()
    return 1 if failed else 0


# Loading a year of scans


def load_year(dsn: str, members: int, days: int) -> int:
    """Write what DAYS of daily scans of every source leave in the ledger.

    Returns a soft limit that about OVER_SOFT of the members are over today.
    """
    last = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0, tzinfo=None)
    first = last - dt.timedelta(days=days - 1, hours=1)
    with psycopg.connect(dsn) as conn:
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute(
            """
            INSERT INTO members (id, name, created_at)
            SELECT m, 'u' || lpad(m::text, 6, '0'), %(first)s
            FROM generate_series(1, %(n)s) m
            """,
            {"first": first, "n": members},
        )
        for index, (name, kind, _, _) in enumerate(SOURCES, start=1):
            conn.execute(
                "INSERT INTO sources (id, name, kind, created_at) VALUES (%s, %s, %s, %s)",
                (index, name, kind, first),
            )
        conn.execute(
            """
            INSERT INTO audit_log (at, actor, action, subject, reason, detail)
            SELECT %(first)s, 'quotad', 'member.auto_register', 'member:' || name,
                   'first seen by source ''homes''', 'null'::json
            FROM members ORDER BY name
            """,
            {"first": first},
        )
        # Resource id (s - 1) * members + m is member m's resource in source s.
        for index, (_, _, resource_kind, _) in enumerate(SOURCES, start=1):
            conn.execute(
                """
                INSERT INTO resources (id, source_id, kind, name, created_at)
                SELECT (%(s)s - 1) * %(n)s + m, %(s)s, %(kind)s, 'u' || lpad(m::text, 6, '0'),
                       %(first)s
                FROM generate_series(1, %(n)s) m
                """,
                {"s": index, "n": members, "kind": resource_kind, "first": first},
            )
        # Source s's scan of day d finishes 10 minutes after source s - 1's.
        conn.execute(
            """
            CREATE TEMPORARY TABLE bench_scans ON COMMIT DROP AS
            SELECT d AS day, s AS source_id,
                   md5('quotad-bench:' || s || ':' || d)::uuid AS id,
                   %(first)s + d * interval '1 day' + s * interval '10 minutes' AS finished_at
            FROM generate_series(0, %(days)s - 1) d, generate_series(1, %(sources)s) s
            """,
            {"first": first, "days": days, "sources": len(SOURCES)},
        )
        conn.execute(
            """
            INSERT INTO scans (id, source_id, started_at, finished_at, status, error, digest,
                               measurements, failures, recorded_at)
            SELECT id, source_id, finished_at - interval '5 minutes', finished_at, 'complete',
                   NULL, md5(id::text) || md5(id::text || 'x'), %(n)s, 0,
                   finished_at + interval '2 seconds'
            FROM bench_scans ORDER BY finished_at
            """,
            {"n": members},
        )
        with without_secondary_indexes(conn, "usage_samples"):
            for day in range(days):
                insert_day(conn, day, members)
        conn.execute(
            """
            INSERT INTO current_usage (resource_id, source_id, member_id, measured_at, bytes,
                                       files, present, detail, error, error_at)
            SELECT u.resource_id, b.source_id, u.member_id, u.measured_at, u.bytes, u.files,
                   u.present, u.detail, NULL, NULL
            FROM usage_samples u JOIN bench_scans b ON b.id = u.scan_id
            WHERE b.day = %(last)s
            """,
            {"last": days - 1},
        )
        for table in ("members", "sources", "resources", "usage_samples", "audit_log"):
            conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT max(id) FROM {table}))"
            )
        row = conn.execute(
            """
            SELECT percentile_disc(%s) WITHIN GROUP (ORDER BY total)
            FROM (SELECT sum(bytes) AS total FROM current_usage GROUP BY member_id) t
            """,
            (1 - OVER_SOFT,),
        ).fetchone()
        soft = int(row[0]) if row is not None else 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        # The timings below should meet neither a cold planner nor the
        # checkpoint and autovacuum the load would otherwise cause.
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")
    return soft


def insert_day(conn: psycopg.Connection[Any], day: int, members: int) -> None:
    """Every source's samples of DAY, in the order the day's scans were recorded."""
    conn.execute(
        """
        INSERT INTO usage_samples (scan_id, resource_id, member_id, measured_at, bytes, files,
                                   present, detail)
        SELECT b.id, (b.source_id - 1) * %(n)s + m, m, b.finished_at, v.bytes,
               v.bytes / 65536 + 1, true,
               CASE b.source_id
                 WHEN 2 THEN json_build_object('messages', v.bytes / 70000 + 1,
                                               'message_bytes', v.bytes / 100 * 99)
                 WHEN 4 THEN json_build_object('owner', 'u' || lpad(m::text, 6, '0'))
                 ELSE 'null'::json
               END
        FROM bench_scans b
        CROSS JOIN generate_series(1, %(n)s) m
        CROSS JOIN LATERAL (
          SELECT base + base * %(day)s / 1000 + ((m * 31 + %(day)s * 17) %% 1000) * 1024 AS bytes
          FROM (SELECT ((m * 2654435761 + b.source_id * 40503) %% 2000 + 1) * %(mib)s
                       * (%(factors)s::bigint[])[b.source_id] AS base) f
        ) v
        WHERE b.day = %(day)s
        ORDER BY b.source_id, m
        """,
        {
            "n": members,
            "day": day,
            "mib": MIB,
            "factors": [factor for _, _, _, factor in SOURCES],
        },
    )


@contextlib.contextmanager
def without_secondary_indexes(conn: psycopg.Connection[Any], table: str) -> Iterator[None]:
    """Drop TABLE's foreign keys and indexes but the primary key; put them back after.

    Building an index once is far cheaper than updating it row by row, and
    re-adding a foreign key checks every row. The definitions are read from
    the catalog, so they are exactly what the migrations made.
    """
    foreign_keys = conn.execute(
        """
        SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
        WHERE conrelid = %s::regclass AND contype = 'f'
        """,
        (table,),
    ).fetchall()
    indexes = conn.execute(
        """
        SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x
        JOIN pg_class i ON i.oid = x.indexrelid
        WHERE x.indrelid = %s::regclass AND NOT x.indisprimary
        """,
        (table,),
    ).fetchall()
    for name, _ in foreign_keys:
        conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    for name, _ in indexes:
        conn.execute(f'DROP INDEX "{name}"')
    yield
    for _, definition in indexes:
        # A partitioned table's index reads "ON ONLY" (the parent alone);
        # built on the whole table, it is built on every partition too.
        conn.execute(definition.replace(" ON ONLY ", " ON ", 1))
    for name, definition in foreign_keys:
        conn.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')


def make_tokens(engine: Engine, members: int, count: int) -> list[str]:
    """Member tokens for COUNT of the MEMBERS, spread evenly over them."""
    tokens = []
    with session_scope(engine, write=True) as session:
        service = TokenService(session, "bench")
        for number in range(1, members + 1, max(1, members // count))[:count]:
            _, secret = service.create(role="member", member=f"u{number:06d}", label="bench")
            tokens.append(secret)
    return tokens


def write_config(tmp: Path, url: str, soft: int) -> Path:
    path = tmp / "quotad.toml"
    path.write_text(
        f'database_url = "{url}"\n'
        "[server]\n"
        'host = "127.0.0.1"\n'
        f"port = {free_port()}\n"
        "[defaults.quota.total]\n"
        f"soft = {soft}\n"
        f"hard = {soft + soft // 4}\n"
        'grace = "7d"\n',
        encoding="utf-8",
    )
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# Serving


@contextlib.contextmanager
def server(config: Path, log: Path) -> Iterator[int]:
    """`quotad serve` on CONFIG, stopped on the way out; yields its port."""
    settings = load_settings(config)
    port = settings.server.port
    quotad = Path(sys.executable).parent / "quotad"
    with log.open("wb") as out:
        # Its own session: Ctrl-C reaches this process only, which then stops
        # the server itself, in order.
        process = subprocess.Popen(
            [str(quotad), "--config", str(config), "serve"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until_up(process, port, log)
            yield port
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_until_up(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"quotad serve exited ({process.returncode}):\n{log.read_text()}")
        with contextlib.suppress(OSError):
            status, _ = asyncio.run(fetch_once(port, "/healthz", None))
            if status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"quotad serve did not answer /healthz within 30 s:\n{log.read_text()}")


def request_bytes(path: str, token: str | None) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The status and body of one response (the server always sends Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def fetch_once(port: int, path: str, token: str | None) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request_bytes(path, token))
        await writer.drain()
        return await read_response(reader)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@dataclass(frozen=True)
class Load:
    requests: int
    errors: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def drive(
    port: int, path: str, tokens: Sequence[str | None], clients: int, seconds: float
) -> Load:
    """CLIENTS keep-alive connections asking for PATH for SECONDS, each with a random token."""
    requests = [request_bytes(path, token) for token in tokens]
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client(seed: int) -> None:
        nonlocal errors
        rng = random.Random(seed)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while (start := time.perf_counter()) < deadline:
                writer.write(requests[rng.randrange(len(requests))])
                status, _ = await read_response(reader)
                latencies.append(time.perf_counter() - start)
                if status != 200:
                    errors += 1
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    started = time.perf_counter()
    await asyncio.gather(*(client(seed) for seed in range(clients)))
    return Load(len(latencies), errors, time.perf_counter() - started, latencies)


def serve_and_measure(config: Path, tmp: Path, tokens: Sequence[str], sizes: Sizes) -> bool:
    """Time both endpoints in alternating rounds; True if any request failed."""
    log = tmp / "serve.log"
    endpoints: dict[str, Sequence[str | None]] = {"/healthz": [None], "/me/usage": tokens}
    with server(config, log) as port:
        check_usage_answer(port, tokens[0])
        print(
            f"serving: quotad serve on port {port}, {sizes.clients} clients, "
            f"{sizes.duration:g}s per endpoint per round, {sizes.rounds} rounds",
            flush=True,
        )
        for path, path_tokens in endpoints.items():  # warm-up: connections, caches, JIT-less paths
            asyncio.run(drive(port, path, path_tokens, sizes.clients, 2.0))
        loads: dict[str, list[Load]] = {path: [] for path in endpoints}
        for round_ in range(sizes.rounds):
            order = list(endpoints) if round_ % 2 == 0 else list(reversed(endpoints))
            for path in order:
                load = asyncio.run(
                    drive(port, path, endpoints[path], sizes.clients, sizes.duration)
                )
                loads[path].append(load)
    rates: dict[str, float] = {}
    for path, runs in loads.items():
        rates[path] = statistics.median(load.rate for load in runs)
        p50 = statistics.median(load.percentile(0.50) for load in runs) * 1000
        p99 = statistics.median(load.percentile(0.99) for load in runs) * 1000
        errors = sum(load.errors for load in runs)
        print(
            f"GET {path:<10} median {rates[path]:7.1f} req/s  p50 {p50:6.1f} ms  "
            f"p99 {p99:6.1f} ms  errors {errors}  "
            f"runs {' '.join(f'{load.rate:.1f}' for load in runs)} req/s"
        )
    ratio = rates["/me/usage"] / rates["/healthz"]
    print(f"ratio /me/usage / /healthz throughput: {ratio:.2f} (goal >= {USAGE_GOAL:.2f})")
    return any(load.errors for runs in loads.values() for load in runs)


def check_usage_answer(port: int, token: str) -> None:
    """One /me/usage answer, looked at: the shape the benchmark means to measure."""
    status, body = asyncio.run(fetch_once(port, "/me/usage", token))
    if status != 200 or body.count(b'"source"') != len(SOURCES):
        raise RuntimeError(f"unexpected /me/usage answer {status}: {body[:500]!r}")


# Recording


def scan_of(source: str, members: int, size: int, at: dt.datetime, extra: int) -> ScanInput:
    """SIZE measurements of tree resources, RESOURCES_PER_MEMBER_IN_SCAN per member."""
    measurements = []
    for i in range(size):
        number = i // RESOURCES_PER_MEMBER_IN_SCAN % members + 1
        member = f"u{number:06d}"
        measurements.append(
            Measurement(member, "tree", f"{member}/site-{i}", i * 4096 + extra, i % 1000 + 1)
        )
    return ScanInput(
        scan_id=uuid.uuid4(),
        source=source,
        source_kind="tree",
        started_at=at - dt.timedelta(minutes=5),
        finished_at=at,
        measurements=measurements,
    )


def copy_rows(dsn: str, table: str, rows: Sequence[tuple[str | None, str, str, int, int]]) -> None:
    with psycopg.connect(dsn) as conn, conn.cursor() as cursor:
        with cursor.copy(f"COPY {table} (member, kind, name, bytes, files) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        conn.commit()


def measure_recording(engine: Engine, dsn: str, config: Path, sizes: Sizes) -> bool:
    """Time first recordings, rescans and COPY; True if a recording left the wrong rows."""
    settings = load_settings(config)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    members = sizes.members

    def table(rep: int) -> str:
        return f"bench_copy_{rep}"

    with psycopg.connect(dsn, autocommit=True) as conn:
        for rep in range(sizes.repeat + 1):
            conn.execute(
                f"CREATE TABLE {table(rep)} (member varchar(64), kind varchar(32), "
                "name varchar(255), bytes bigint, files bigint)"
            )
    # Warm-up, for both: connections, statement caches.
    warm = scan_of("bench-warm", members, 1000, now - dt.timedelta(hours=3), 0)
    record(engine, settings, warm, "bench")
    copy_rows(dsn, table(0), rows_of(warm))

    first: list[float] = []
    rescan: list[float] = []
    copies: list[float] = []
    floors: list[float] = []
    failed = False
    for rep in range(1, sizes.repeat + 1):
        source = f"bench-{rep}"
        scan = scan_of(source, members, sizes.scan_size, now - dt.timedelta(hours=2), 0)
        again = scan_of(source, members, sizes.scan_size, now - dt.timedelta(hours=1), 1)
        rows = rows_of(scan)
        copies.append(timed(functools.partial(copy_rows, dsn, table(rep), rows)))
        first.append(timed(functools.partial(record, engine, settings, scan, "bench")))
        rescan.append(timed(functools.partial(record, engine, settings, again, "bench")))
        failed |= not check_recorded(engine, scan, current=False)
        failed |= not check_recorded(engine, again, current=True)
        samples = samples_of(dsn, scan.scan_id)
        floors.append(timed(functools.partial(copy_into_ledger, dsn, samples)))

    copy_median = statistics.median(copies)
    first_median = statistics.median(first)
    rescan_median = statistics.median(rescan)
    print(
        f"recording one scan of {sizes.scan_size} measurements "
        f"({RESOURCES_PER_MEMBER_IN_SCAN} tree resources per member) into that ledger:"
    )
    print(f"COPY of the rows:          median {copy_median:.3f}s  runs {format_runs(copies)}")
    floor_median = statistics.median(floors)
    print(f"COPY into usage_samples:   median {floor_median:.3f}s  runs {format_runs(floors)}")
    print(f"record, resources new:     median {first_median:.3f}s  runs {format_runs(first)}")
    print(f"record, resources known:   median {rescan_median:.3f}s  runs {format_runs(rescan)}")
    print(
        f"ratio record (new)/COPY:   {first_median / copy_median:.2f} (goal <= {RECORD_GOAL:.2f})"
    )
    print(f"ratio record (known)/COPY: {rescan_median / copy_median:.2f}")
    print(
        f"ratio record (new, known)/COPY into usage_samples: {first_median / floor_median:.2f}, "
        f"{rescan_median / floor_median:.2f}"
    )
    return failed


def samples_of(dsn: str, scan_id: uuid.UUID) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            # detail as its JSON text, which COPY takes back as it is.
            f"SELECT {SAMPLE_COLUMNS.replace('detail', 'detail::text')} FROM usage_samples "
            "WHERE scan_id = %s ORDER BY id",
            (scan_id,),
        ).fetchall()


def copy_into_ledger(dsn: str, samples: Sequence[tuple[Any, ...]]) -> None:
    """What storing SAMPLES costs the table itself: its keys checked, its indexes kept.

    Rolled back, so the ledger stays as recording left it.
    """
    with psycopg.connect(dsn) as conn, conn.cursor() as cursor:
        with cursor.copy(f"COPY usage_samples ({SAMPLE_COLUMNS}) FROM STDIN") as copy:
            for row in samples:
                copy.write_row(row)
        # The foreign keys are checked at the end of the statement, before this.
        conn.rollback()


def rows_of(scan: ScanInput) -> list[tuple[str | None, str, str, int, int]]:
    return [(m.member, m.kind, m.name, m.bytes, m.files) for m in scan.measurements]


def check_recorded(engine: Engine, scan: ScanInput, *, current: bool) -> bool:
    """The scan's samples (and, if CURRENT, its source's current usage) against its measurements."""
    want = (len(scan.measurements), sum(m.bytes for m in scan.measurements))
    with session_scope(engine) as session:
        samples = session.execute(
            select(func.count(), func.coalesce(func.sum(UsageSample.bytes), 0)).where(
                UsageSample.scan_id == scan.scan_id
            )
        ).one()
        # Every resource of the source is one of the scan's.
        source_id = session.execute(select(Source.id).where(Source.name == scan.source)).scalar()
        now = session.execute(
            select(func.count(), func.coalesce(func.sum(CurrentUsage.bytes), 0)).where(
                CurrentUsage.source_id == source_id,
                CurrentUsage.present,
                CurrentUsage.measured_at == scan.finished_at,
            )
        ).one()
    got = [(samples[0], int(samples[1]))]
    if current:
        got.append((now[0], int(now[1])))
    ok = all(pair == want for pair in got)
    if not ok:
        print(f"MISMATCH: scan {scan.scan_id}: samples and current usage {got}, want {want}")
    return ok


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; the scratch database and the server are gone", file=sys.stderr)
        sys.exit(130)
