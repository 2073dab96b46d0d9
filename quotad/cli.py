"""The `quotad` command (INTERFACE.md section 3).

Each command is one unit of work: it builds its own engine from the settings,
commits at the end, and maps domain errors to exit codes in one place:
0 done, 1 something failed, 2 bad usage, input or configuration.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from quotad import logs, migrate
from quotad.auth.service import TokenInfo, TokenService
from quotad.billing.arithmetic import Period
from quotad.billing.export import statements_csv
from quotad.billing.service import BillingService
from quotad.config import LoggingSettings, Settings, load_settings
from quotad.db import make_engine, session_scope, utcnow
from quotad.demo import write_demo
from quotad.enforcement.service import EnforcementService, Plan
from quotad.enforcers.notify import Notifier
from quotad.errors import ConfigError, InvalidInput, QuotadError
from quotad.formatting import human_size, table
from quotad.ledger.service import COMPLETE, FAILED, LedgerService, ScanInput
from quotad.locks import job_lock
from quotad.members.models import Member
from quotad.members.service import MemberService
from quotad.monitoring.cli import add_check
from quotad.push import (
    PENDING,
    RECORDED,
    REPLAYED,
    Outbox,
    Pusher,
    read_token,
    scan_from_body,
)
from quotad.quotas.service import QuotaService
from quotad.retention.cli import add_retention_command
from quotad.scanning import (
    SourceOutcome,
    context_for,
    measure,
    scan_and_record,
    select_sources,
)
from quotad.timeutil import format_time, parse_time
from scanners.base import Progress
from scanners.options import parse_duration, parse_size

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int]
# A layer above quotad adds its commands (api adds `serve`) without quotad
# importing it: it is given `add(name, handler, help)` and returns nothing.
AddCommand = Callable[[str, Handler, str], argparse.ArgumentParser]
Extension = Callable[[AddCommand], None]


class UsageError(QuotadError):
    """Wrong arguments, found after parsing."""


def actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    # Logging as configured from here on; until now it was the defaults.
    logs.configure(logs.command_settings(settings.logging, verbose=args.verbose))
    return settings


def _engine(args: argparse.Namespace, *, migrated: bool = True) -> tuple[Settings, Engine]:
    settings = _settings(args)
    engine = make_engine(settings.database_url)
    args.cleanup.callback(engine.dispose)
    if migrated:
        migrate.require_current(engine)
    return settings, engine


def _print_json(value: Any, out: TextIO | None = None) -> None:
    json.dump(value, out or sys.stdout, indent=2, ensure_ascii=False)
    (out or sys.stdout).write("\n")


# db


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    _, engine = _engine(args, migrated=False)
    migrate.upgrade_engine(engine)
    print(f"ledger at {engine.url.render_as_string(hide_password=True)} is up to date")
    return EXIT_OK


def cmd_db_rebuild(args: argparse.Namespace) -> int:
    _, engine = _engine(args)
    with session_scope(engine, write=True) as session:
        count = LedgerService(session, actor=actor()).rebuild_current_usage()
    print(f"current usage rebuilt from the samples: {count} resources")
    return EXIT_OK


# scan


def _progress_for(stream: TextIO) -> Callable[[Any], Progress | None]:
    def factory(source: Any) -> Progress | None:
        if not stream.isatty():
            return None

        def show(what: str, done: int, total: int | None) -> None:
            count = f"{done}/{total}" if total is not None else str(done)
            text = f"{source.name}: {count} {what}"[:78]
            stream.write(f"\r\x1b[K{text}")
            stream.flush()

        return show

    return factory


def _outcome_json(outcome: SourceOutcome) -> dict[str, Any]:
    scan = outcome.scan
    if outcome.result is None:  # measured, but recording it failed
        return _scan_json(scan, FAILED, scan.error or outcome.record_error, 0)
    return _scan_json(scan, scan.status, scan.error, outcome.result.zeroed)


def _scan_json(scan: ScanInput, status: str, error: str | None, zeroed: int) -> dict[str, Any]:
    return {
        "scan_id": str(scan.scan_id),
        "source": scan.source,
        "kind": scan.source_kind,
        "status": status,
        "started_at": format_time(scan.started_at),
        "finished_at": format_time(scan.finished_at),
        "resources": len(scan.measurements),
        "bytes": sum(m.bytes for m in scan.measurements),
        "files": sum(m.files for m in scan.measurements),
        "error": error,
        "failures": [
            {"kind": f.kind, "name": f.name, "member": f.member, "error": f.error}
            for f in scan.failures
        ],
        "zeroed": zeroed,
    }


def cmd_scan(args: argparse.Namespace) -> int:
    if (args.push is None) != (args.token_file is None):
        raise UsageError("--push and --token-file go together")
    if args.push is not None:
        return _scan_push(args)
    settings, engine = _engine(args)
    sources = select_sources(settings, args.sources)
    if not sources:
        print("no sources configured: add [[sources]] tables to the config", file=sys.stderr)
        return EXIT_OK
    outcomes = []
    for source in sources:
        # The lock the scheduler's scan of the source takes: a scan from cron
        # and a scheduled one never run side by side (nor their caches).
        with job_lock(engine, f"scan:{source.name}") as held:
            if not held:
                print(
                    f"quotad: another scan of {source.name} is running on this ledger; skipped",
                    file=sys.stderr,
                )
                continue
            outcomes += scan_and_record(
                engine,
                settings,
                [source],
                actor(),
                progress_for=_progress_for(sys.stderr),
                full=args.full,
            )
    if sys.stderr.isatty():
        sys.stderr.write("\r\x1b[K")
    results = [_outcome_json(o) for o in outcomes]
    _print_scans(results, as_json=args.json)
    bad = [r for r in results if r["status"] != COMPLETE]
    _complain(bad)
    return EXIT_FAILED if bad else EXIT_OK


def _print_scans(results: list[dict[str, Any]], *, as_json: bool) -> None:
    if as_json:
        _print_json(results)
        return
    for r in results:
        if "resources" not in r:  # an outbox file that does not read as a scan
            print(f"{r['source']}: scan {r['scan_id']}; {_push_words(r['push'])}")
            continue
        line = (
            f"{r['source']}: {r['status']}, {r['resources']} resources, "
            f"{r['bytes']} bytes ({human_size(r['bytes'])}), {r['files']} files"
        )
        if "push" in r:
            line += f"; {_push_words(r['push'])}"
        print(line)
        if r["error"]:
            print(f"  error: {r['error']}")
        for f in r["failures"]:
            print(f"  failed: {f['kind']} {f['name']}: {f['error']}")


def _complain(bad: list[dict[str, Any]]) -> None:
    for r in bad:
        if r.get("status", COMPLETE) == COMPLETE:
            continue
        why = r["error"] or f"{len(r['failures'])} resources could not be measured"
        print(f"quotad: source {r['source']} {r['status']}: {why}", file=sys.stderr)


def _kept_scan(path: Path) -> ScanInput | None:
    try:
        return scan_from_body(path.read_bytes())
    except (OSError, ValueError, KeyError, TypeError):
        # Sent all the same: the server's answer says what is wrong with it.
        return None


def _push_words(push: dict[str, Any]) -> str:
    outcome = push["outcome"]
    if outcome == RECORDED:
        return "sent, recorded"
    if outcome == REPLAYED:
        return "sent, recorded before (counted once)"
    where = "kept in the outbox to send next run" if outcome == PENDING else "refused"
    status = f"HTTP {push['status']}: " if push["status"] is not None else ""
    return f"{where} ({status}{push['detail']})"


def _scan_push(args: argparse.Namespace) -> int:
    """Measure here, send each scan to the central quotad; the local ledger is not touched."""
    settings = _settings(args)
    if args.retry_for < 0:
        raise UsageError("--retry-for must be 0 or more seconds")
    pusher = Pusher(args.push, read_token(Path(args.token_file)), retry_for=args.retry_for)
    sources = select_sources(settings, args.sources)
    outbox = Outbox(settings.cache_dir / "outbox")
    outbox.check()
    earlier = set(outbox.pending())
    scans: dict[Path, ScanInput | None] = {path: _kept_scan(path) for path in earlier}
    progress_for = _progress_for(sys.stderr)
    for source in sources:
        # An agent sees no ledger, so no member addresses: list owners are
        # matched by the source's owners_map and owner_pattern alone.
        scan = measure(source, progress_for(source), context_for(settings, source, full=args.full))
        scans[outbox.put(scan)] = scan
    if sys.stderr.isatty():
        sys.stderr.write("\r\x1b[K")
    results = []
    for delivery in pusher.deliver(outbox):
        found = scans.get(delivery.path)
        result: dict[str, Any] = (
            {"scan_id": delivery.scan_id, "source": delivery.source}
            if found is None
            else _scan_json(found, found.status, found.error, delivery.zeroed)
        )
        result["earlier"] = delivery.path in earlier
        result["push"] = {
            "outcome": delivery.outcome,
            "status": delivery.status,
            "detail": delivery.detail,
        }
        results.append(result)
    _print_scans(results, as_json=args.json)
    _complain([r for r in results if not r["earlier"]])
    undelivered = [r for r in results if r["push"]["outcome"] not in {RECORDED, REPLAYED}]
    for r in undelivered:
        print(
            f"quotad: scan {r['scan_id']} of {r.get('source', '?')} not delivered: "
            f"{_push_words(r['push'])}",
            file=sys.stderr,
        )
    failed = [r for r in results if not r["earlier"] and r.get("status") != COMPLETE]
    return EXIT_FAILED if failed or undelivered else EXIT_OK


# enforce


def cmd_enforce(args: argparse.Namespace) -> int:
    settings, engine = _engine(args)
    dry_run = args.dry_run or settings.enforcement.dry_run
    notifier = Notifier(settings.smtp, settings.enforcement.templates)
    service = EnforcementService(
        lambda *, write: session_scope(engine, write=write),
        settings,
        actor=actor(),
        notifier=notifier,
    )
    with job_lock(engine, "enforce") as held:
        if not held:
            message = "another quotad enforce is running on this ledger; nothing done"
            if args.json:
                _print_json({"run_id": None, "skipped": message, "changes": [], "failed": 0})
            else:
                print(f"quotad: {message}", file=sys.stderr)
            return EXIT_OK
        plan = service.plan(utcnow(), dry_run=dry_run)
        if not args.json:
            _print_plan(plan)
        service.apply(plan)
    if args.json:
        _print_json(plan.json())
    elif not dry_run:
        _print_outcome(plan)
    return EXIT_FAILED if plan.failed else EXIT_OK


def _change_rows(plan: Plan, *, outcome: bool) -> list[list[str]]:
    rows = []
    for change in plan.changes:
        what = change.scope or ""
        if change.resource is not None:
            what = f"{change.source}:{change.resource}"
        row = [change.type, change.member or "-", what, change.reason]
        if outcome:
            row = [change.status, *row[:3], change.message or ""]
        rows.append(row)
    return rows


def _print_plan(plan: Plan) -> None:
    mode = "dry run: nothing is changed" if plan.dry_run else "applying"
    if not plan.changes:
        print(f"enforce {plan.run_id}: nothing to change")
        return
    print(f"enforce {plan.run_id} ({mode}), {len(plan.changes)} changes:")
    print(table(["change", "member", "on", "why"], _change_rows(plan, outcome=False)))


def _print_outcome(plan: Plan) -> None:
    if not plan.changes:
        return
    print()
    print(
        table(
            ["outcome", "change", "member", "on", "what happened"], _change_rows(plan, outcome=True)
        )
    )
    if plan.failed:
        print(
            f"{plan.failed} changes failed; they are tried again on the next run", file=sys.stderr
        )


# report


def cmd_report(args: argparse.Namespace) -> int:
    settings, engine = _engine(args)
    with session_scope(engine) as session:
        service = QuotaService(session, settings, actor())
        report = service.report()
        unattributed = service.unattributed()
        sources = LedgerService(session).source_status()
    if args.json:
        _print_json(report)
        return EXIT_OK
    rows = []
    for entry in report:
        total = entry["total"]
        files = str(total["files"])
        if not entry["quotas"]:
            rows.append(
                [
                    entry["member"],
                    "-",
                    str(total["bytes"]),
                    human_size(total["bytes"]),
                    "-",
                    "-",
                    "-",
                    "-",
                    files,
                ]
            )
        rows.extend(
            [
                entry["member"],
                q["scope"],
                str(q["used_bytes"]),
                human_size(q["used_bytes"]),
                str(q["soft_bytes"]),
                str(q["hard_bytes"]),
                q["state"],
                q["grace_ends_at"] or "-",
                files,
            ]
            for q in entry["quotas"]
        )
    print(
        table(
            [
                "member",
                "scope",
                "used_bytes",
                "used",
                "soft_bytes",
                "hard_bytes",
                "state",
                "grace_ends",
                "files",
            ],
            rows,
            right=(2, 3, 4, 5, 8),
        )
    )
    if unattributed:
        print("\nunattributed resources:")
        print(
            table(
                ["source", "kind", "name", "bytes", "files"],
                [
                    [r["source"], r["kind"], r["name"], str(r["bytes"]), str(r["files"])]
                    for r in unattributed
                ],
                right=(3, 4),
            )
        )
    failing = [s for s in sources if s.status != COMPLETE]
    if failing:
        print("\nsources whose last scan did not complete:")
        for s in failing:
            print(
                f"  {s.source} ({s.status} at {format_time(s.finished_at)})"
                f"{': ' + s.error if s.error else ''}"
            )
    return EXIT_OK


# members


def _member_json(member: Member) -> dict[str, Any]:
    return {
        "name": member.name,
        "email": member.email,
        "joined_at": format_time(member.joined_at),
        "left_at": format_time(member.left_at),
    }


def _time_arg(text: str | None, flag: str) -> Any:
    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise InvalidInput(f"{flag}: {exc}") from None


def cmd_member_add(args: argparse.Namespace) -> int:
    _, engine = _engine(args)
    with session_scope(engine, write=True) as session:
        member = MemberService(session, actor()).add(
            args.name,
            email=args.email,
            joined_at=_time_arg(args.joined, "--joined"),
            left_at=_time_arg(args.left, "--left"),
        )
        print(f"member {member.name} added")
    return EXIT_OK


def cmd_member_list(args: argparse.Namespace) -> int:
    _, engine = _engine(args)
    with session_scope(engine) as session:
        members = [_member_json(m) for m in MemberService(session, actor()).list()]
    if args.json:
        _print_json(members)
    else:
        print(
            table(
                ["name", "email", "joined_at", "left_at"],
                [
                    [m["name"], m["email"] or "-", m["joined_at"] or "-", m["left_at"] or "-"]
                    for m in members
                ],
            )
        )
    return EXIT_OK


def cmd_member_remove(args: argparse.Namespace) -> int:
    _, engine = _engine(args)
    with session_scope(engine, write=True) as session:
        member = MemberService(session, actor()).remove(args.name)
        print(f"member {member.name} left at {format_time(member.left_at)}; records kept")
    return EXIT_OK


# quotas


def _size_arg(text: str, flag: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise InvalidInput(f"{flag}: {exc}") from None


def cmd_quota_set(args: argparse.Namespace) -> int:
    settings, engine = _engine(args)
    grace = None
    if args.grace is not None:
        try:
            grace = parse_duration(args.grace)
        except ValueError as exc:
            raise InvalidInput(f"--grace: {exc}") from None
    with session_scope(engine, write=True) as session:
        limit = QuotaService(session, settings, actor()).set(
            args.member,
            args.scope,
            soft=_size_arg(args.soft, "--soft"),
            hard=_size_arg(args.hard, "--hard"),
            grace=grace,
            reason=args.reason,
        )
    print(
        f"{args.member} {limit.scope}: soft {limit.soft_bytes} hard {limit.hard_bytes} "
        f"grace {limit.grace_seconds}s"
    )
    return EXIT_OK


def cmd_quota_show(args: argparse.Namespace) -> int:
    settings, engine = _engine(args)
    with session_scope(engine) as session:
        service = QuotaService(session, settings, actor())
        member = service.members.get(args.member)
        limits: list[dict[str, Any]] = [
            {
                "scope": limit.scope,
                "soft_bytes": limit.soft_bytes,
                "hard_bytes": limit.hard_bytes,
                "grace_seconds": limit.grace_seconds,
                "source": "override" if overridden else "default",
            }
            for limit, overridden in service.limits(member).values()
        ]
    if args.json:
        _print_json({"member": args.member, "quotas": limits})
    else:
        print(
            table(
                ["scope", "soft_bytes", "hard_bytes", "grace_seconds", "from"],
                [
                    [
                        q["scope"],
                        str(q["soft_bytes"]),
                        str(q["hard_bytes"]),
                        str(q["grace_seconds"]),
                        q["source"],
                    ]
                    for q in limits
                ],
                right=(1, 2, 3),
            )
            if limits
            else f"{args.member}: no limits"
        )
    return EXIT_OK


def cmd_quota_reset(args: argparse.Namespace) -> int:
    settings, engine = _engine(args)
    with session_scope(engine, write=True) as session:
        QuotaService(session, settings, actor()).reset(args.member, args.scope, args.reason)
    print(f"{args.member} {args.scope}: back to the default plan")
    return EXIT_OK


# tokens


def _token_json(info: TokenInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "role": info.role,
        "member": info.member,
        "sources": None if info.sources is None else list(info.sources),
        "label": info.label,
        "created_at": format_time(info.created_at),
        "created_by": info.created_by,
        "last_used_at": format_time(info.last_used_at),
        "revoked_at": format_time(info.revoked_at),
        "revoked_by": info.revoked_by,
    }


def cmd_token_create(args: argparse.Namespace) -> int:
    _, engine = _engine(args)
    role = "member" if args.member is not None else args.role
    with session_scope(engine, write=True) as session:
        info, secret = TokenService(session, actor()).create(
            role=role, member=args.member, sources=args.sources, label=args.label
        )
    # The token alone on stdout, so that `quotad token create ... > file` holds
    # just the secret; everything said about it goes to stderr.
    what = f"{info.role} token {info.id}"
    if info.member:
        what += f" for {info.member}"
    if info.sources:
        what += f" (sources {', '.join(info.sources)})"
    print(f"{what} created; it is shown only this once", file=sys.stderr)
    print(secret)
    return EXIT_OK


def cmd_token_list(args: argparse.Namespace) -> int:
    _, engine = _engine(args)
    with session_scope(engine) as session:
        tokens = [_token_json(t) for t in TokenService(session, actor()).list()]
    if args.json:
        _print_json(tokens)
    else:
        print(
            table(
                ["id", "role", "member", "sources", "label", "created_at", "last_used", "revoked"],
                [
                    [
                        str(t["id"]),
                        t["role"],
                        t["member"] or "-",
                        ",".join(t["sources"])
                        if t["sources"] is not None
                        else ("*" if t["role"] == "scanner" else "-"),
                        t["label"] or "-",
                        t["created_at"],
                        t["last_used_at"] or "-",
                        t["revoked_at"] or "-",
                    ]
                    for t in tokens
                ],
                right=(0,),
            )
            if tokens
            else "no tokens"
        )
    return EXIT_OK


def cmd_token_revoke(args: argparse.Namespace) -> int:
    _, engine = _engine(args)
    with session_scope(engine, write=True) as session:
        info = TokenService(session, actor()).revoke(args.id)
    print(f"token {info.id} revoked at {format_time(info.revoked_at)}")
    return EXIT_OK


# billing


def cmd_bill(args: argparse.Namespace) -> int:
    settings, engine = _engine(args)
    period = Period.parse(args.period)
    if args.finalize:
        with session_scope(engine, write=True) as session:
            result = BillingService(session, settings.billing, actor()).finalize(period)
        done = "finalized" if result.created else "had been finalized"
        # stderr: stdout holds only the statements, in the format asked for.
        print(
            f"{period} {done} at {format_time(result.finalized_at)} by {result.finalized_by}: "
            f"{result.statements} statements",
            file=sys.stderr,
        )
    with session_scope(engine) as session:
        bodies = [
            dict(doc.body)
            for doc in BillingService(session, settings.billing, actor()).statements(period)
        ]
    if args.format == "json":
        _print_json(bodies)
    elif args.format == "csv":
        sys.stdout.write(statements_csv(bodies))
    elif not bodies:
        print(f"no statements for {period}")
    else:
        print(
            table(
                ["member", "status", "average", "free", "billable_gib_months", "amount"],
                [
                    [
                        b["member"],
                        b["status"],
                        human_size(b["average_bytes"]),
                        human_size(b["free_bytes"]),
                        b["billable_gib_months"],
                        f"{b['amount']} {b['currency']}",
                    ]
                    for b in bodies
                ],
                right=(2, 3, 4, 5),
            )
        )
    return EXIT_OK


def cmd_adjustment_add(args: argparse.Namespace) -> int:
    settings, engine = _engine(args)
    corrects = Period.parse(args.corrects) if args.corrects is not None else None
    with session_scope(engine, write=True) as session:
        row = BillingService(session, settings.billing, actor()).adjust(
            args.member, args.amount, args.reason, corrects
        )
    print(
        f"adjustment {row['id']}: {row['amount']} {row['currency']} for {row['member']}, "
        f"correcting {row['corrects']}, on the {row['period']} statement"
    )
    return EXIT_OK


def cmd_adjustment_list(args: argparse.Namespace) -> int:
    settings, engine = _engine(args)
    period = Period.parse(args.period) if args.period is not None else None
    with session_scope(engine) as session:
        rows = BillingService(session, settings.billing, actor()).adjustments(period, args.member)
    if args.json:
        _print_json(rows)
        return EXIT_OK
    print(
        table(
            ["id", "member", "amount", "corrects", "period", "created_at", "actor", "reason"],
            [
                [
                    str(r["id"]),
                    r["member"],
                    f"{r['amount']} {r['currency']}",
                    r["corrects"],
                    r["period"],
                    r["created_at"],
                    r["actor"],
                    r["reason"],
                ]
                for r in rows
            ],
            right=(0, 2),
        )
        if rows
        else "no adjustments"
    )
    return EXIT_OK


# scheduler


def cmd_scheduler(args: argparse.Namespace) -> int:
    # Imported here so that other commands never load APScheduler.
    from quotad.scheduler import Scheduler  # noqa: PLC0415

    settings, engine = _engine(args)
    # A daemon: it logs at the configured level, not a one-shot command's.
    logs.configure(settings.logging, verbose=args.verbose)
    scheduler = Scheduler(engine, settings)
    if args.list:
        rows = [
            [job.name, job.schedule, format_time(at) or "-"]
            for job, (_, at) in zip(scheduler.jobs, scheduler.next_runs(), strict=True)
        ]
        print(table(["job", "schedule", "next run"], rows) if rows else "no scheduled jobs")
        return EXIT_OK
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    scheduler.start()
    try:
        stop.wait()
    finally:
        # Runs in progress end and record their outcome before the process exits.
        scheduler.shutdown(wait=True)
    return EXIT_OK


def _add_scheduler_command(commands: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    sched = add(
        commands, "scheduler", cmd_scheduler, "run the scheduled jobs, without the HTTP API"
    )
    sched.add_argument("--list", action="store_true", help="list the jobs and their next runs")


# demo


def cmd_demo(args: argparse.Namespace) -> int:
    config = write_demo(Path(args.dir))
    print(
        f"demo written to {args.dir}; try:\n"
        f"  quotad --config {config} db upgrade\n"
        f"  quotad --config {config} scan\n"
        f"  quotad --config {config} report"
    )
    return EXIT_OK


def _add_report_commands(commands: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    enforce = add(
        commands, "enforce", cmd_enforce, "evaluate every member, apply or lift restrictions, warn"
    )
    enforce.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    enforce.add_argument("--json", action="store_true", help="print the plan and outcome as JSON")

    report = add(commands, "report", cmd_report, "every member: usage, limits, state, grace end")
    report.add_argument(
        "--json", action="store_true", help="a JSON array in the shape of GET /me/usage"
    )
    add_check(commands, add)


def _add_token_commands(commands: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    token = commands.add_parser("token", help="API tokens").add_subparsers(
        dest="token_command", required=True, metavar="ACTION"
    )
    tcreate = add(token, "create", cmd_token_create, "make an API token and print it, once")
    twho = tcreate.add_mutually_exclusive_group(required=True)
    twho.add_argument("--member", metavar="NAME", help="a token acting as this member")
    twho.add_argument("--role", choices=("portal", "admin", "scanner"))
    tcreate.add_argument(
        "--source",
        dest="sources",
        action="append",
        default=[],
        metavar="NAME",
        help="scanner tokens: a source it may send scans of (repeat; default: any)",
    )
    tcreate.add_argument("--label", metavar="L", help="what the token is for")
    tlist = add(token, "list", cmd_token_list, "every token, revoked ones too; never a secret")
    tlist.add_argument("--json", action="store_true")
    trevoke = add(token, "revoke", cmd_token_revoke, "refuse a token from now on")
    trevoke.add_argument("id", type=int, metavar="ID")


def _add_billing_commands(commands: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    bill = add(commands, "bill", cmd_bill, "every member's statement for a month")
    bill.add_argument("period", metavar="PERIOD", help="the month, YYYY-MM")
    bill.add_argument(
        "--finalize", action="store_true", help="freeze the month's statements first (once)"
    )
    bill.add_argument("--format", choices=("table", "csv", "json"), default="table")

    adjustment = commands.add_parser(
        "adjustment", help="credits and debits on members' statements"
    ).add_subparsers(dest="adjustment_command", required=True, metavar="ACTION")
    aadd = add(
        adjustment,
        "add",
        cmd_adjustment_add,
        "add a credit (negative) or debit; it shows on the first open month from the one "
        "it corrects",
    )
    aadd.add_argument("member", metavar="MEMBER")
    # A negative amount ("-4.50") is read as an argument, not an option: no
    # option of this command looks like a number.
    aadd.add_argument("amount", metavar="AMOUNT", help='a decimal amount, e.g. "-4.50"')
    aadd.add_argument("--reason", required=True)
    aadd.add_argument(
        "--corrects", metavar="YYYY-MM", help="the month it corrects (default: this one)"
    )
    alist = add(adjustment, "list", cmd_adjustment_list, "adjustments, oldest first")
    alist.add_argument("--member", metavar="M")
    alist.add_argument("--period", metavar="P", help="only those on this month's statement")
    alist.add_argument("--json", action="store_true")
    # Retention thins only finalized months: it belongs with billing.
    add_retention_command(commands, add)


def build_parser(extensions: Sequence[Extension] = ()) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="the configuration file (else $QUOTAD_CONFIG, ./quotad.toml, /etc/quotad/quotad.toml)",
    )
    parser = argparse.ArgumentParser(
        prog="quotad",
        parents=[common],
        description="Quota accounting and disk-usage charging for shared hosting.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(parent: Any, name: str, handler: Handler, help_: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = parent.add_parser(
            name, parents=[common], help=help_, description=help_
        )
        sub.set_defaults(handler=handler)
        return sub

    db = commands.add_parser("db", help="the ledger database").add_subparsers(
        dest="db_command", required=True, metavar="ACTION"
    )
    add(db, "upgrade", cmd_db_upgrade, "create or migrate the ledger")
    add(
        db,
        "rebuild-current",
        cmd_db_rebuild,
        "derive current usage again from the append-only samples",
    )

    scan = add(commands, "scan", cmd_scan, "measure sources now and record the results")
    scan.add_argument("sources", nargs="*", metavar="SOURCE", help="only these sources")
    scan.add_argument("--json", action="store_true", help="print the outcome as JSON")
    scan.add_argument(
        "--full", action="store_true", help="read everything again, believing no scanner cache"
    )
    scan.add_argument(
        "--push",
        metavar="URL",
        help="send the scans to the quotad at URL (POST /scans) instead of the ledger",
    )
    scan.add_argument(
        "--token-file", metavar="F", help="with --push: a file holding a scanner token"
    )
    scan.add_argument(
        "--retry-for",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="with --push: keep trying a server that is down this long (default 300); "
        "what is not sent by then waits in the outbox for the next run",
    )

    _add_report_commands(commands, add)

    member = commands.add_parser("member", help="the member registry").add_subparsers(
        dest="member_command", required=True, metavar="ACTION"
    )
    madd = add(member, "add", cmd_member_add, "register a member")
    madd.add_argument("name")
    madd.add_argument("--email")
    madd.add_argument("--joined", metavar="DATE", help="YYYY-MM-DD or an RFC 3339 time")
    madd.add_argument("--left", metavar="DATE", help="YYYY-MM-DD or an RFC 3339 time")
    mlist = add(member, "list", cmd_member_list, "list members")
    mlist.add_argument("--json", action="store_true")
    mremove = add(
        member, "remove", cmd_member_remove, "mark a member as left now; every record is kept"
    )
    mremove.add_argument("name")

    quota = commands.add_parser("quota", help="per-member quota overrides").add_subparsers(
        dest="quota_command", required=True, metavar="ACTION"
    )
    qset = add(quota, "set", cmd_quota_set, "override a member's limits for a scope")
    qset.add_argument("member")
    qset.add_argument("--scope", default="total", help="total (default) or a resource kind")
    qset.add_argument("--soft", required=True, metavar="SIZE")
    qset.add_argument("--hard", required=True, metavar="SIZE")
    qset.add_argument("--grace", metavar="DURATION")
    qset.add_argument("--reason", required=True)
    qshow = add(quota, "show", cmd_quota_show, "a member's limits and where they come from")
    qshow.add_argument("member")
    qshow.add_argument("--json", action="store_true")
    qreset = add(quota, "reset", cmd_quota_reset, "back to the default plan")
    qreset.add_argument("member")
    qreset.add_argument("--scope", default="total")
    qreset.add_argument("--reason", default="reset to the default plan")

    _add_token_commands(commands, add)
    _add_billing_commands(commands, add)
    _add_scheduler_command(commands, add)

    demo = add(commands, "demo", cmd_demo, "write a demo config and sample data")
    demo.add_argument("dir", nargs="?", default="var/demo", metavar="DIR")

    for extend in extensions:
        extend(lambda name, handler, help_: add(commands, name, handler, help_))
    return parser


def main(  # noqa: PLR0911 - one exit per error kind
    argv: Sequence[str] | None = None, extensions: Sequence[Extension] = ()
) -> int:
    parser = build_parser(extensions)
    args = parser.parse_args(argv)
    if not hasattr(args, "config"):
        args.config = None
    logs.configure(logs.command_settings(LoggingSettings(), verbose=args.verbose))
    handler: Handler = args.handler
    try:
        with ExitStack() as cleanup:
            args.cleanup = cleanup
            return handler(args)
    except ConfigError as exc:
        print(f"quotad: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (InvalidInput, UsageError) as exc:
        print(f"quotad: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except QuotadError as exc:
        print(f"quotad: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except SQLAlchemyError as exc:
        print(
            f"quotad: ledger error: {exc.__class__.__name__}: {_first_line(exc)}", file=sys.stderr
        )
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (`| head`) went away: stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def run() -> None:
    sys.exit(main())
