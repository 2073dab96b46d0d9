"""Benchmark the member and admin pages against the JSON API calls that serve the same figures.

Usage: .venv/bin/python bench/pages.py [--members N] [--days D] [--repeat R] [--warmup W]

A scratch database (dropped at the end, on Ctrl-C and on failure too) is
migrated by quotad and loaded set-based in SQL: MEMBERS members, each
measured by 3 sources (homes: tree, mail: maildir, www: tree) once a day for
DAYS days, with the scans, usage_samples, current_usage and resources that
recording them leaves; a few resources no member is charged for, and recent
enforcement actions on the members over their limits. The config's total
limits put about a tenth of the members over their soft limit (the hard
limit an eighth above it).

Serving: a real `quotad serve` (the console script, as bench/api.py starts
it, with its scheduler off so that no job runs between two requests) asked
by one keep-alive client, one request at a time, every request with a
bearer token (the pages accept one, as the API does).

Timed, R times each after W warm-ups, in rounds alternating which goes
first, medians in ms:

- the member page `GET /` of a member over their soft limit, with DAYS days
  of history, against what a portal would fetch to show the same: the sum of
  the medians of `GET /me/usage`, `GET /me/usage/history?step=day&start=`
  (90 days ago), `GET /me/forecast`, `GET /me/charges` (this month's draft)
  and `GET /me/charges?period=` for each of up to 6 past months the member
  was a member in;
- the admin page `GET /admin` against `GET /report` (the page adds the
  sources, the unattributed resources and the recent actions on top).

The pages call the same services as the API, so the ratio page/baseline is
what rendering (and, for the member, sharing one request) costs or saves.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine

# bench/ is not an installed package: the timing is shared with the other benchmarks.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.api import free_port, read_response, request_bytes, server
from bench.common import scratch_database
from quotad import migrate
from quotad.auth.service import TokenService
from quotad.billing.arithmetic import Period
from quotad.db import make_engine, session_scope
from quotad.retention.repository import PartitionRepository
from quotad.timeutil import format_time

# (name, source kind, resource kind, size factor, path): one resource per member each.
SOURCES = (
    ("homes", "tree", "tree", 4, "homes/{member}"),
    ("mail", "maildir", "maildir", 2, "mail/{member}/Maildir"),
    ("www", "tree", "tree", 1, "www/site-{member}"),
)
# Share of members over the soft limit today.
OVER_SOFT = 0.1
UNATTRIBUTED = 12
ACTIONS = 60
HISTORY_DAYS = 90
PAST_MONTHS = 6
MIB = 1024 * 1024


@dataclass(frozen=True)
class Sizes:
    members: int
    days: int
    repeat: int
    warmup: int


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=300, help="members (default 300)")
    parser.add_argument("--days", type=int, default=90, help="days of daily scans (default 90)")
    parser.add_argument("--repeat", type=int, default=30, help="timed requests of each (30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests first (3)")
    args = parser.parse_args()
    if args.members < 10 or args.days < 2 or args.repeat < 1 or args.warmup < 0:
        parser.error("--members at least 10, --days at least 2, --repeat at least 1")
    with (
        tempfile.TemporaryDirectory(prefix="quotad-bench-pages-") as tmp,
        scratch_database("pages") as url,
    ):
        return run(url, Path(tmp), Sizes(args.members, args.days, args.repeat, args.warmup))


def run(url: str, tmp: Path, sizes: Sizes) -> int:
    members, days = sizes.members, sizes.days
    engine = make_engine(url)
    try:
        migrate.upgrade_engine(engine)
        now = dt.datetime.now(dt.UTC)
        first = now.replace(minute=0, second=0, microsecond=0) - dt.timedelta(
            days=days - 1, hours=1
        )
        # Every month of the history gets its partition, as in a ledger filled
        # as time went by (a no-op where usage_samples is not partitioned).
        with session_scope(engine, write=True) as session:
            PartitionRepository(session).ensure_partitions(first, ahead=1)
        dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        started = time.perf_counter()
        soft, over = load(dsn, members, days, first)
        # The middle one of those over: neither the largest nor the smallest.
        measured = over[len(over) // 2]
        print(
            f"ledger: {members} members x {len(SOURCES)} sources x {days} daily scans = "
            f"{members * len(SOURCES) * days} usage samples, {UNATTRIBUTED} unattributed "
            f"resources, {ACTIONS} enforcement actions; loaded in "
            f"{time.perf_counter() - started:.1f}s; {len(over)} members over the soft "
            f"limit, the one measured {measured}",
            flush=True,
        )
        member_token, admin_token = make_tokens(engine, measured)
        config = write_config(tmp, url, soft)
        # The months a portal would ask for: the page shows this month's
        # draft and up to PAST_MONTHS earlier ones in which the member was one.
        month = Period.containing(now)
        past = []
        period = month.previous()
        for _ in range(PAST_MONTHS):
            if period.end <= first:
                break
            past.append(period)
            period = period.previous()
        start = format_time(now.replace(microsecond=0) - dt.timedelta(days=HISTORY_DAYS))
        baseline = [
            "/me/usage",
            f"/me/usage/history?step=day&start={start}",
            "/me/forecast",
            "/me/charges",
            *(f"/me/charges?period={p}" for p in past),
        ]
        with server(config, tmp / "serve.log") as port:
            print(
                f"serving: quotad serve on port {port}, one keep-alive client, "
                f"{sizes.warmup} warm-ups then {sizes.repeat} timed requests of each, "
                "alternating",
                flush=True,
            )
            asyncio.run(
                measure_all(
                    port,
                    sizes,
                    member=measured,
                    member_token=member_token,
                    admin_token=admin_token,
                    baseline=baseline,
                )
            )
    finally:
        engine.dispose()
    return 0


# Loading the ledger


def load(dsn: str, members: int, days: int, first: dt.datetime) -> tuple[int, list[str]]:
    """DAYS of daily scans of every source, and what the admin page shows besides.

    Returns a soft limit that about OVER_SOFT of the members are over today,
    and the names of those members, in id order.
    """
    start = first.replace(tzinfo=None)
    with psycopg.connect(dsn) as conn:
        conn.execute(
            """
            INSERT INTO members (id, name, created_at)
            SELECT m, 'u' || lpad(m::text, 6, '0'), %(first)s
            FROM generate_series(1, %(n)s) m
            """,
            {"first": start, "n": members},
        )
        for index, (name, kind, _, _, _) in enumerate(SOURCES, start=1):
            conn.execute(
                "INSERT INTO sources (id, name, kind, created_at) VALUES (%s, %s, %s, %s)",
                (index, name, kind, start),
            )
        # Resource id (s - 1) * members + m is member m's resource in source s.
        for index, (_, _, resource_kind, _, _) in enumerate(SOURCES, start=1):
            conn.execute(
                """
                INSERT INTO resources (id, source_id, kind, name, created_at)
                SELECT (%(s)s - 1) * %(n)s + m, %(s)s, %(kind)s, 'u' || lpad(m::text, 6, '0'),
                       %(first)s
                FROM generate_series(1, %(n)s) m
                """,
                {"s": index, "n": members, "kind": resource_kind, "first": start},
            )
        # Source s's scan of day d finishes 10 minutes after source s - 1's.
        conn.execute(
            """
            CREATE TEMPORARY TABLE bench_scans ON COMMIT DROP AS
            SELECT d AS day, s AS source_id,
                   md5('quotad-bench-pages:' || s || ':' || d)::uuid AS id,
                   %(first)s + d * interval '1 day' + s * interval '10 minutes' AS finished_at
            FROM generate_series(0, %(days)s - 1) d, generate_series(1, %(sources)s) s
            """,
            {"first": start, "days": days, "sources": len(SOURCES)},
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
        # Sizes from 1 to 2000 MiB times the source's factor, growing a little
        # each day (so that the forecast has a trend) with some daily noise.
        conn.execute(
            """
            INSERT INTO usage_samples (scan_id, resource_id, member_id, measured_at, bytes,
                                       files, present, detail)
            SELECT b.id, (b.source_id - 1) * %(n)s + m, m, b.finished_at, v.bytes,
                   v.bytes / 65536 + 1, true,
                   CASE b.source_id
                     WHEN 2 THEN json_build_object('messages', v.bytes / 70000 + 1,
                                                   'message_bytes', v.bytes / 100 * 99)
                     ELSE 'null'::json
                   END
            FROM bench_scans b
            CROSS JOIN generate_series(1, %(n)s) m
            CROSS JOIN LATERAL (
              SELECT base + base * b.day / 200 + ((m * 31 + b.day * 17) %% 1000) * 1024 AS bytes
              FROM (SELECT ((m * 2654435761 + b.source_id * 40503) %% 2000 + 1) * %(mib)s
                           * (%(factors)s::bigint[])[b.source_id] AS base) f
            ) v
            ORDER BY b.finished_at, m
            """,
            {"n": members, "mib": MIB, "factors": [f for _, _, _, f, _ in SOURCES]},
        )
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
        load_unattributed(conn, members, days)
        row = conn.execute(
            """
            SELECT percentile_disc(%s) WITHIN GROUP (ORDER BY total)
            FROM (SELECT sum(bytes) AS total FROM current_usage
                  WHERE member_id IS NOT NULL GROUP BY member_id) t
            """,
            (1 - OVER_SOFT,),
        ).fetchone()
        soft = int(row[0]) if row is not None else 0
        over = conn.execute(
            """
            SELECT m.id, m.name FROM members m JOIN current_usage c ON c.member_id = m.id
            GROUP BY m.id, m.name HAVING sum(c.bytes) > %s ORDER BY m.id
            """,
            (soft,),
        ).fetchall()
        load_actions(conn, [member_id for member_id, _ in over])
        for table in ("members", "sources", "resources", "usage_samples", "enforcement_actions"):
            conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT max(id) FROM {table}))"
            )
    with psycopg.connect(dsn, autocommit=True) as conn:
        # The timings below should meet neither a cold planner nor autovacuum.
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")
    return soft, [name for _, name in over]


def load_unattributed(conn: psycopg.Connection[Any], members: int, days: int) -> None:
    """Homes folders no member owns (a project, a former member's), measured daily too."""
    first_id = len(SOURCES) * members + 1
    conn.execute(
        """
        INSERT INTO resources (id, source_id, kind, name, created_at)
        SELECT %(id)s + k, 1, 'tree', 'project-' || k, b.finished_at
        FROM generate_series(0, %(k)s - 1) k JOIN bench_scans b ON b.day = 0 AND b.source_id = 1
        """,
        {"id": first_id, "k": UNATTRIBUTED},
    )
    conn.execute(
        """
        INSERT INTO usage_samples (scan_id, resource_id, member_id, measured_at, bytes, files,
                                   present, detail)
        SELECT b.id, %(id)s + k, NULL, b.finished_at, (k + 1)::bigint * 777 * %(mib)s,
               k * 100 + 1, true, 'null'::json
        FROM bench_scans b CROSS JOIN generate_series(0, %(k)s - 1) k
        WHERE b.source_id = 1
        ORDER BY b.finished_at, k
        """,
        {"id": first_id, "k": UNATTRIBUTED, "mib": MIB},
    )
    conn.execute(
        """
        INSERT INTO current_usage (resource_id, source_id, member_id, measured_at, bytes,
                                   files, present, detail, error, error_at)
        SELECT u.resource_id, 1, NULL, u.measured_at, u.bytes, u.files, true, u.detail,
               NULL, NULL
        FROM usage_samples u JOIN bench_scans b ON b.id = u.scan_id
        WHERE b.day = %(last)s AND u.member_id IS NULL
        """,
        {"last": days - 1},
    )


def load_actions(conn: psycopg.Connection[Any], over: Sequence[int]) -> None:
    """Enforcement's last ACTIONS rows: restricting members over their limits, some lifted."""
    with conn.cursor() as cursor:
        cursor.executemany(
            """
            INSERT INTO enforcement_actions (run_id, member_id, source, kind, resource, action,
                                             status, saved, reason, message, at)
            SELECT %s, id, 'homes', 'tree', name, %s, %s, NULL, %s, NULL,
                   now() AT TIME ZONE 'UTC' - %s * interval '15 minutes'
            FROM members WHERE id = %s
            """,
            [
                (
                    f"00000000-0000-4000-8000-{i // 2:012d}",
                    "lift" if i % 7 == 6 else "restrict",
                    "started" if i % 2 else "done",
                    "over hard limit" if i % 3 else "grace period over",
                    ACTIONS - i,
                    over[i // 2 % len(over)],
                )
                for i in range(ACTIONS)
            ],
        )


def make_tokens(engine: Engine, member: str) -> tuple[str, str]:
    """A member token for MEMBER and an admin token, from quotad's TokenService."""
    with session_scope(engine, write=True) as session:
        service = TokenService(session, "bench")
        _, member_token = service.create(role="member", member=member, label="bench")
        _, admin_token = service.create(role="admin", label="bench")
    return member_token, admin_token


def write_config(tmp: Path, url: str, soft: int) -> Path:
    path = tmp / "quotad.toml"
    sources = "".join(
        f'[[sources]]\nname = "{name}"\nkind = "{kind}"\npath = "{tmp / pattern}"\n'
        "enforce = false\n"
        for name, kind, _, _, pattern in SOURCES
    )
    path.write_text(
        f'database_url = "{url}"\n'
        "[server]\n"
        'host = "127.0.0.1"\n'
        f"port = {free_port()}\n"
        "[scheduler]\n"
        "enabled = false\n"
        "[defaults.quota.total]\n"
        f"soft = {soft}\n"
        f"hard = {soft + soft // 8}\n"
        'grace = "7d"\n' + sources,
        encoding="utf-8",
    )
    return path


# Timing


class Client:
    """One keep-alive connection, one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def get(self, path: str, token: str) -> tuple[int, bytes]:
        self.writer.write(request_bytes(path, token))
        await self.writer.drain()
        return await read_response(self.reader)

    async def timed(self, path: str, token: str) -> float:
        start = time.perf_counter()
        status, body = await self.get(path, token)
        took = time.perf_counter() - start
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body[:300]!r}")
        return took


async def measure_all(
    port: int,
    sizes: Sizes,
    *,
    member: str,
    member_token: str,
    admin_token: str,
    baseline: Sequence[str],
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = Client(reader, writer)
    try:
        await check_answers(client, member, member_token, admin_token)
        await compare(client, sizes, "member page GET /", "/", member_token, baseline)
        await compare(client, sizes, "admin page GET /admin", "/admin", admin_token, ["/report"])
    finally:
        writer.close()
        await writer.wait_closed()


async def check_answers(client: Client, member: str, member_token: str, admin_token: str) -> None:
    """One answer of each page, looked at: the shape the benchmark means to measure."""
    status, body = await client.get("/", member_token)
    wanted = (member.encode(), b"<svg", b"You are over your")
    if status != 200 or not all(part in body for part in wanted):
        raise RuntimeError(f"unexpected member page {status}: {body[:500]!r}")
    status, body = await client.get("/admin", admin_token)
    if status != 200 or b"project-" not in body or member.encode() not in body:
        raise RuntimeError(f"unexpected admin page {status}: {body[:500]!r}")


async def compare(  # noqa: PLR0917 - read at the call: what, the page, its baseline
    client: Client, sizes: Sizes, label: str, page: str, token: str, baseline: Sequence[str]
) -> None:
    """Time PAGE and each BASELINE call, alternating which goes first; print the medians."""
    for _ in range(sizes.warmup):
        for path in (page, *baseline):
            await client.timed(path, token)
    page_times: list[float] = []
    call_times: dict[str, list[float]] = {path: [] for path in baseline}
    for round_ in range(sizes.repeat):
        first_page = round_ % 2 == 0
        if first_page:
            page_times.append(await client.timed(page, token))
        for path in baseline:
            call_times[path].append(await client.timed(path, token))
        if not first_page:
            page_times.append(await client.timed(page, token))
    page_median = statistics.median(page_times) * 1000
    medians = {path: statistics.median(times) * 1000 for path, times in call_times.items()}
    baseline_median = sum(medians.values())
    print(f"{label}:")
    print(
        f"  page      median {page_median:7.1f} ms  "
        f"(min {min(page_times) * 1000:.1f}, max {max(page_times) * 1000:.1f})"
    )
    width = max(len(path) for path in medians)
    for path, median in medians.items():
        print(f"    GET {path:<{width}}  median {median:7.1f} ms")
    calls = f"the sum of {len(medians)} medians" if len(medians) > 1 else "one call"
    print(f"  baseline  median {baseline_median:7.1f} ms  ({calls})")
    print(f"  ratio page/baseline: {page_median / baseline_median:.2f}", flush=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; the scratch database is gone", file=sys.stderr)
        sys.exit(130)
