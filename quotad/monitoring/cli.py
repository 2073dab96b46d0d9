"""`quotad check`: a Nagios/Icinga plugin, by the Monitoring Plugins Development Guidelines.

Whatever goes wrong (a bad argument, the config, a ledger that cannot be
reached or is not migrated, a timeout) is UNKNOWN with a one-line reason on
stdout, never another exit code or a traceback: a monitoring system reads
exit code 2 as CRITICAL, and the rest of quotad uses 2 for bad usage.
"""

from __future__ import annotations

import argparse
import math
import sys
import threading
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from quotad import logs, migrate
from quotad.config import Settings, load_settings
from quotad.db import make_engine, session_scope, utcnow
from quotad.errors import ConfigError, QuotadError
from quotad.monitoring.repository import MonitoringRepository
from quotad.monitoring.service import (
    UNKNOWN,
    CheckResult,
    Thresholds,
    evaluate,
    one_line,
    read_facts,
    unknown,
)
from scanners.options import parse_duration

DEFAULT_TIMEOUT = 10


class BadArguments(ValueError):
    """Options that parse but do not fit together, or with the config."""


class PluginParser(argparse.ArgumentParser):
    """Bad arguments are UNKNOWN (exit 3) with the reason on stdout, not argparse's exit 2."""

    def error(self, message: str) -> NoReturn:
        sys.stdout.write(unknown(f"bad arguments: {message}").render())
        sys.stderr.write(self.format_usage())
        sys.exit(UNKNOWN)

    def parse_known_args(  # type: ignore[override] # the subcommand's call, one shape
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        # The top-level parser would reject leftovers with its own exit 2:
        # they are this command's bad arguments, so refuse them here.
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def _duration(text: str) -> int:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text!r}")
    return seconds


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"cannot be negative, got {value}")
    return value


def _version() -> str:
    try:
        return metadata.version("quotad")
    except metadata.PackageNotFoundError:
        return "unknown"


def add_check(commands: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register `quotad check` with build_parser's ADD."""
    parser = add(
        commands,
        "check",
        cmd_check,
        "a Nagios/Icinga plugin: stale or failing scans, failed enforcement, unattributed "
        "usage, failed jobs; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN",
    )
    # Every parser build_parser makes is a plain ArgumentParser; this one
    # answers bad arguments the way a plugin must.
    parser.__class__ = PluginParser
    parser.add_argument(
        "-w",
        "--stale-warning",
        type=_duration,
        metavar="DUR",
        help="WARNING when a source's last complete or partial scan is this old "
        "(default: [enforcement] stale_after)",
    )
    parser.add_argument(
        "-c",
        "--stale-critical",
        type=_duration,
        metavar="DUR",
        help="CRITICAL when it is this old (default: twice the warning age)",
    )
    parser.add_argument(
        "--unattributed-warning",
        type=_count,
        default=0,
        metavar="N",
        help="WARNING when more than N resources are charged to no member (default 0)",
    )
    parser.add_argument(
        "--unattributed-critical",
        type=_count,
        metavar="N",
        help="CRITICAL when more than N are (default: never)",
    )
    parser.add_argument(
        "--source",
        dest="check_sources",
        action="append",
        default=[],
        metavar="NAME",
        help="check this source (repeat); default: every configured source. Sources "
        "that agents push without being configured here must be named",
    )
    parser.add_argument(
        "-t",
        "--timeout",
        type=_duration,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"UNKNOWN if the check takes longer (default {DEFAULT_TIMEOUT})",
    )
    parser.add_argument("-V", "--version", action="version", version=f"quotad check {_version()}")


def cmd_check(args: argparse.Namespace) -> int:
    result = run_check(args)
    sys.stdout.write(result.render())
    return result.state


def run_check(args: argparse.Namespace) -> CheckResult:
    """The check within args.timeout; past it, UNKNOWN while the work is left behind.

    The work runs in a daemon thread, so that a ledger that hangs (a
    server that accepts and never answers, a lock) cannot hold the plugin:
    signals do not reach a thread blocked in a driver's C code.
    """
    outcome: list[CheckResult] = []

    def work() -> None:
        outcome.append(_guarded(lambda: _check(args)))

    worker = threading.Thread(target=work, name="quotad-check", daemon=True)
    worker.start()
    worker.join(args.timeout)
    if not outcome:
        return unknown(f"no answer within the {args.timeout}s timeout (ledger hanging?)")
    return outcome[0]


def _guarded(check: Callable[[], CheckResult]) -> CheckResult:
    """CHECK's result, or UNKNOWN with one line saying why it could not be made."""
    try:
        return check()
    except Exception as exc:  # noqa: BLE001 - a plugin answers UNKNOWN, never a traceback
        return unknown(_reason(exc))


# Errors quotad explains itself, with what to put before the explanation.
_EXPLAINED: tuple[tuple[type[Exception], str], ...] = (
    (ConfigError, "config error: "),
    (BadArguments, "bad arguments: "),
    (QuotadError, ""),
)


def _reason(exc: Exception) -> str:
    if isinstance(exc, SQLAlchemyError):
        text = str(getattr(exc, "orig", None) or exc).strip() or type(exc).__name__
        return f"ledger error: {type(exc).__name__}: {one_line(text.splitlines()[0])}"
    for kind, prefix in _EXPLAINED:
        if isinstance(exc, kind):
            return prefix + one_line(str(exc))
    return f"internal error: {type(exc).__name__}: {one_line(str(exc))}"


def _check(args: argparse.Namespace) -> CheckResult:
    settings = load_settings(args.config)
    # Warnings and worse only, on stderr: stdout is the plugin's status line.
    logs.configure(logs.command_settings(settings.logging, verbose=False))
    thresholds = thresholds_for(args, settings)
    names = list(dict.fromkeys(args.check_sources)) or [s.name for s in settings.sources]
    engine = _ledger(settings, args.timeout)
    try:
        migrate.require_current(engine)
        with session_scope(engine) as session:
            facts = read_facts(MonitoringRepository(session), names)
    finally:
        engine.dispose()
    return evaluate(facts, thresholds, utcnow())


def thresholds_for(args: argparse.Namespace, settings: Settings) -> Thresholds:
    warning = args.stale_warning
    if warning is None:
        warning = settings.enforcement.stale_after
    critical = args.stale_critical if args.stale_critical is not None else 2 * warning
    if critical < warning:
        where = "" if args.stale_warning is not None else " ([enforcement] stale_after)"
        raise BadArguments(
            f"the stale warning age{where}, {warning}s, is above the critical age, {critical}s"
        )
    unattributed_critical = args.unattributed_critical
    if unattributed_critical is not None and unattributed_critical < args.unattributed_warning:
        raise BadArguments("--unattributed-critical is below --unattributed-warning")
    return Thresholds(warning, critical, args.unattributed_warning, unattributed_critical)


def _ledger(settings: Settings, timeout: int) -> Engine:
    """An engine for the ledger; a check never creates one where none is."""
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        path = Path(url.database or "")
        if not path.is_file():
            raise migrate.LedgerNotReady(
                f"no ledger at {path}: run `quotad db upgrade` (or check database_url)"
            )
        return make_engine(settings.database_url)
    # libpq waits for ever by default; the thread's join bounds us anyway,
    # but this lets the abandoned attempt end too.
    return make_engine(
        settings.database_url, connect_args={"connect_timeout": max(2, math.ceil(timeout))}
    )
