"""`quotad retention [--dry-run] [--json]`: the retention job, for cron."""

from __future__ import annotations

import argparse
import functools
import getpass
import json
import sys
from collections.abc import Callable
from typing import Any

from quotad import logs, migrate
from quotad.config import load_settings
from quotad.db import make_engine, session_scope, utcnow
from quotad.locks import job_lock
from quotad.retention.service import RetentionResult, RetentionService


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _print_text(result: RetentionResult) -> None:
    verb = "would delete" if result.dry_run else "deleted"
    periods = ", ".join(result.periods) or "none"
    lines = [
        f"usage samples {verb}: {result.samples_deleted} (periods thinned: {periods})",
        f"job runs {verb}: {result.job_runs_deleted}",
    ]
    if result.partitions_created:
        lines.append(f"partitions created: {', '.join(result.partitions_created)}")
    sys.stdout.write("".join(f"{line}\n" for line in lines))


def cmd_retention(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    logs.configure(logs.command_settings(settings.logging, verbose=args.verbose))
    engine = make_engine(settings.database_url)
    args.cleanup.callback(engine.dispose)
    migrate.require_current(engine)
    service = RetentionService(
        functools.partial(session_scope, engine), settings.retention, actor=_actor()
    )
    with job_lock(engine, "retention") as held:
        if not held:
            message = "another quotad retention is running on this ledger; nothing done"
            if args.json:
                json.dump({"skipped": message}, sys.stdout, indent=2)
                sys.stdout.write("\n")
            else:
                sys.stderr.write(f"quotad: {message}\n")
            return 0
        result = service.run(utcnow(), dry_run=args.dry_run)
    if args.json:
        json.dump(result.as_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_text(result)
    return 0


def add_retention_command(commands: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register `quotad retention` on the parser's COMMANDS (quotad.cli.build_parser)."""
    sub = add(
        commands,
        "retention",
        cmd_retention,
        "thin raw usage samples of finalized months older than [retention] raw_samples "
        "to one per resource and day, and prune old job runs",
    )
    sub.add_argument("--dry-run", action="store_true", help="count what would go; change nothing")
    sub.add_argument("--json", action="store_true", help="print the outcome as JSON")
