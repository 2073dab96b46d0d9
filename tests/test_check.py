"""`quotad check`, the Nagios/Icinga plugin, run as a monitoring system runs it.

Each state is reached through a real ledger on both engines, written the way
quotad writes it (scans through LedgerService, enforcement through `quotad
enforce` or its repository, job runs as rows), and judged by what Icinga
reads: the exit code and a first line in the Monitoring Plugins format.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

from quotad.cli import main
from quotad.db import session_scope, utcnow
from quotad.enforcement.repository import EnforcementRepository
from quotad.jobs.models import JobRun
from quotad.ledger.service import LedgerService, ScanInput
from quotad.monitoring.repository import (
    ActionFact,
    JobFact,
    ScanFact,
    SourceFacts,
    Unattributed,
)
from quotad.monitoring.service import Facts, Thresholds, duration, evaluate
from scanners.base import Measurement, ResourceFailure
from tests.conftest import Ledger
from tests.databases import PgObjects, SilentServer, pg, silent_server, tag

__all__ = ["pg", "silent_server"]

HOUR = dt.timedelta(hours=1)
QUOTAD = Path(sys.executable).parent / "quotad"

# The guidelines' grammar: 'label'=value[UOM];[warn];[crit];[min];[max], where
# warn and crit are ranges ([@][start:][end], start may be ~) and the rest numbers.
NUMBER = r"-?[0-9]+(?:\.[0-9]+)?"
RANGE = rf"@?(?:(?:{NUMBER}|~):)?(?:{NUMBER})?"
PERF_RE = re.compile(
    rf"(?P<label>'[^'=]+'|[^'= ]+)=(?P<value>{NUMBER}|U)(?P<uom>[a-zA-Z%]*)"
    rf"(?:;(?P<warn>{RANGE}))?(?:;(?P<crit>{RANGE}))?"
    rf"(?:;(?P<min>{NUMBER})?)?(?:;(?P<max>{NUMBER})?)?"
)
STATUS_RE = re.compile(
    r"QUOTAD (?P<state>OK|WARNING|CRITICAL|UNKNOWN) - (?P<summary>[^|\n]+?)"
    r"(?: \| (?P<perf>[^|\n]+))?"
)
EXIT = {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}

CONFIG = """
[enforcement]
stale_after = "36h"

[[sources]]
name = "mail"
kind = "maildir"
path = "/nonexistent/{member}/Maildir"

[[sources]]
name = "homes"
kind = "tree"
path = "/nonexistent/{member}"
"""


class Output:
    """What the plugin printed, read the way a monitoring system reads it."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err
        lines = out.splitlines()
        assert lines, f"no output (stderr: {err!r})"
        first = STATUS_RE.fullmatch(lines[0])
        assert first is not None, f"not a plugin status line: {lines[0]!r}"
        self.state = first["state"]
        self.summary = first["summary"]
        self.long = lines[1:]
        self.perf: dict[str, dict[str, str | None]] = {}
        text = first["perf"] or ""
        pos = 0
        for match in PERF_RE.finditer(text):
            assert text[pos : match.start()].strip() == "", f"unparsable perfdata: {text!r}"
            self.perf[match["label"].strip("'")] = match.groupdict()
            pos = match.end()
        assert text[pos:].strip() == "", f"unparsable perfdata: {text[pos:]!r}"
        assert EXIT[self.state] == code, (code, out)
        assert "Traceback" not in out + err
        assert all("|" not in line for line in self.long), "perfdata stays on the first line"

    def value(self, label: str) -> str | None:
        return self.perf[label]["value"]


def check(capsys: pytest.CaptureFixture[str], config: Path | str, *args: str) -> Output:
    """`quotad --config CONFIG check ARGS...` in-process, bad arguments included."""
    try:
        code = main(["--config", str(config), "check", *args])
    except SystemExit as exc:  # argparse's way out, which the plugin makes exit 3
        code = exc.code if isinstance(exc.code, int) else -1
    out, err = capsys.readouterr()
    return Output(code, out, err)


def record(
    ledger: Ledger,
    source: str,
    at: dt.datetime,
    measurements: Sequence[Measurement] = (),
    *,
    failures: Sequence[ResourceFailure] = (),
    error: str | None = None,
) -> None:
    kind = {"mail": "maildir", "homes": "tree"}[source]
    scan = ScanInput(
        uuid.uuid4(),
        source,
        kind,
        at - dt.timedelta(seconds=30),
        at,
        list(measurements),
        list(failures),
        error,
    )
    with session_scope(ledger.engine, write=True) as session:
        LedgerService(session).record(scan)


def fresh(ledger: Ledger, ago: dt.timedelta = HOUR, *, skip: str = "") -> None:
    """Complete scans of every source AGO, each resource someone's."""
    now = utcnow()
    if skip != "mail":
        record(ledger, "mail", now - ago, [Measurement("alice", "maildir", "alice", 1000, 3)])
    if skip != "homes":
        record(ledger, "homes", now - ago, [Measurement("bob", "tree", "bob", 5000, 8)])


def enforcement_row(
    ledger: Ledger,
    resource: str,
    action: str,
    status: str,
    at: dt.datetime,
    *,
    message: str | None = None,
) -> None:
    with session_scope(ledger.engine, write=True) as session:
        EnforcementRepository(session).add_action(
            {
                "run_id": str(uuid.uuid4()),
                "member_id": None,
                "source": "mail",
                "kind": "maildir",
                "resource": resource,
                "action": action,
                "status": status,
                "saved": None,
                "reason": "test",
                "message": message,
                "at": at,
            }
        )


def job_run(
    ledger: Ledger, job: str, slot: dt.datetime, outcome: str, detail: str | None = None
) -> None:
    with session_scope(ledger.engine, write=True) as session:
        session.add(
            JobRun(
                job=job,
                slot=slot,
                instance="host:1",
                started_at=slot,
                finished_at=None if outcome == "running" else slot + dt.timedelta(seconds=5),
                outcome=outcome,
                duration_us=None if outcome == "running" else 5_000_000,
                detail=detail,
            )
        )


@pytest.fixture
def config(ledger: Ledger) -> Path:
    return ledger.config_file(CONFIG)


# OK


def test_fresh_scans_and_nothing_wrong_is_ok(
    ledger: Ledger, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh(ledger)
    result = check(capsys, config)
    assert result.state == "OK"
    assert result.summary == (
        "2 sources scanned within 36h (oldest 1h ago); no failed enforcement or jobs"
    )
    assert result.long == []
    assert result.perf["sources"]["value"] == "2"
    for label in ("stale_sources", "failing_sources", "partial_sources", "failed_jobs"):
        assert result.perf[label]["value"] == "0"
        assert result.perf[label]["warn"] == "0"
    assert result.perf["failed_enforcement"]["crit"] == "0"
    age = result.perf["age_mail"]
    assert age["uom"] == "s"
    assert 3600 <= int(age["value"] or 0) < 3700
    assert (age["warn"], age["crit"], age["min"]) == ("129600", "259200", "0")


def test_failures_since_put_right_are_ok(
    ledger: Ledger, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failed scan, restrict, push or job run that a later one succeeded after is history."""
    now = utcnow()
    record(ledger, "mail", now - 3 * HOUR, error="server down")
    record(
        ledger,
        "homes",
        now - 3 * HOUR,
        [Measurement("bob", "tree", "bob", 1, 1)],
        failures=[ResourceFailure("carol", "tree", "carol", "unreadable")],
    )
    fresh(ledger)
    enforcement_row(ledger, "alice", "restrict", "failed", now - 2 * HOUR, message="daemon down")
    enforcement_row(ledger, "alice", "restrict", "done", now - HOUR)
    enforcement_row(ledger, "dave", "push_limit", "failed", now - 2 * HOUR, message="vos down")
    enforcement_row(ledger, "dave", "restrict", "done", now - HOUR)
    job_run(ledger, "billing", now - 2 * HOUR, "failed", "boom")
    job_run(ledger, "billing", now - HOUR, "ok")
    result = check(capsys, config)
    assert result.state == "OK", result.out


# WARNING


def test_a_stale_source_warns(
    ledger: Ledger, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh(ledger, skip="mail")
    record(ledger, "mail", utcnow() - 40 * HOUR, [Measurement("alice", "maildir", "alice", 1, 1)])
    result = check(capsys, config)
    assert result.state == "WARNING"
    assert result.summary == "1 stale source (mail: last scan 40h ago)"
    assert result.value("stale_sources") == "1"
    assert 40 * 3600 <= int(result.value("age_mail") or 0) < 40 * 3600 + 300
    assert len(result.long) == 1
    assert result.long[0].startswith("WARNING: source mail: last complete or partial scan ")
    assert "(warning at 36h, critical at 3d)" in result.long[0]


def test_stale_thresholds_come_from_the_options(
    ledger: Ledger, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh(ledger, 10 * HOUR)
    assert check(capsys, config).state == "OK"
    result = check(capsys, config, "-w", "8h", "--stale-critical", "1d")
    assert result.state == "WARNING"
    assert result.summary == "2 stale sources (mail: last scan 10h ago, homes: last scan 10h ago)"
    assert result.perf["age_homes"]["warn"] == "28800"
    assert result.perf["age_homes"]["crit"] == "86400"
    result = check(capsys, config, "--stale-warning", "4h", "-c", "9h")
    assert result.state == "CRITICAL"
    # Without -c, critical is twice the warning age.
    assert check(capsys, config, "-w", "5h").state == "CRITICAL"
    assert check(capsys, config, "-w", "6h").state == "WARNING"


def test_unattributed_resources_warn_unless_accepted(
    ledger: Ledger, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh(ledger, skip="homes")
    record(
        ledger,
        "homes",
        utcnow() - HOUR,
        [
            Measurement("bob", "tree", "bob", 5000, 8),
            Measurement(None, "tree", "shared", 3 << 20, 2),
            Measurement(None, "tree", "old-project", 1 << 20, 2),
        ],
    )
    result = check(capsys, config)
    assert result.state == "WARNING"
    assert result.summary == "2 unattributed resources (4.0 MiB)"
    assert result.value("unattributed") == "2"
    assert result.perf["unattributed_bytes"]["value"] == str(4 << 20)
    assert result.perf["unattributed_bytes"]["uom"] == "B"
    assert result.long == [
        (
            "WARNING: 2 unattributed resources (4.0 MiB) measured but charged to no member; "
            "largest: homes:shared 3.0 MiB, homes:old-project 1.0 MiB"
        )
    ]
    accepted = check(capsys, config, "--unattributed-warning", "2")
    assert accepted.state == "OK"
    assert accepted.summary == (
        "2 sources scanned within 36h (oldest 1h ago); 2 unattributed resources "
        "(up to 2 accepted); no failed enforcement or jobs"
    )
    assert accepted.perf["unattributed"]["warn"] == "2"
    critical = check(capsys, config, "--unattributed-critical", "1")
    assert critical.state == "CRITICAL"
    assert critical.perf["unattributed"]["crit"] == "1"


def test_a_partial_scan_warns(
    ledger: Ledger, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh(ledger, skip="homes")
    record(
        ledger,
        "homes",
        utcnow() - HOUR,
        [Measurement("bob", "tree", "bob", 5000, 8)],
        failures=[
            ResourceFailure("carol", "tree", "carol", "permission denied: /srv/home/carol/x"),
            ResourceFailure("dave", "tree", "dave", "permission denied: /srv/home/dave/y"),
        ],
    )
    result = check(capsys, config)
    assert result.state == "WARNING"
    assert result.summary == "1 partial scan (homes: 2 resources failed)"
    assert result.value("partial_sources") == "1"
    assert result.value("stale_sources") == "0"


def test_a_failed_scan_warns_while_the_last_good_one_is_recent(
    ledger: Ledger, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh(ledger, 2 * HOUR)
    record(ledger, "mail", utcnow() - HOUR, error="cannot read /srv/mail: | no such directory")
    result = check(capsys, config)
    assert result.state == "WARNING"
    assert result.summary == "1 failing source (mail: cannot read /srv/mail: / no such directory)"
    assert result.value("failing_sources") == "1"
    assert 2 * 3600 <= int(result.value("age_mail") or 0) < 2 * 3600 + 300


def test_a_failed_scheduled_job_warns(
    ledger: Ledger, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh(ledger)
    now = utcnow()
    job_run(ledger, "billing", now - 2 * HOUR, "ok")
    job_run(ledger, "billing", now - HOUR, "failed", "OperationalError: disk full")
    # A run still going tells nothing yet: the failure before it stands.
    job_run(ledger, "billing", now, "running")
    job_run(ledger, "enforce", now - HOUR, "ok")
    result = check(capsys, config)
    assert result.state == "WARNING"
    assert result.summary == "1 failed job (billing)"
    assert result.value("failed_jobs") == "1"
    assert len(result.long) == 1
    assert re.fullmatch(
        r"WARNING: job billing: its latest run \(slot \S+Z\) failed at \S+Z: "
        r"OperationalError: disk full",
        result.long[0],
    ), result.long


def test_a_failed_native_limit_warns(
    ledger: Ledger, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh(ledger)
    enforcement_row(ledger, "alice", "push_limit", "done", utcnow() - 2 * HOUR)
    enforcement_row(
        ledger, "alice", "push_limit", "failed", utcnow() - HOUR, message="vos: no quorum"
    )
    result = check(capsys, config)
    assert result.state == "WARNING"
    assert result.summary == "1 failed native limit (mail:alice)"
    assert result.value("failed_limits") == "1"
    assert "vos: no quorum" in result.long[0]


# CRITICAL


def test_a_very_stale_source_is_critical(
    ledger: Ledger, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh(ledger, skip="mail")
    record(ledger, "mail", utcnow() - 80 * HOUR, [Measurement("alice", "maildir", "alice", 1, 1)])
    # Failing since: the failure warns, the age is what makes it critical.
    record(ledger, "mail", utcnow() - HOUR, error="server down")
    result = check(capsys, config)
    assert result.state == "CRITICAL"
    assert result.summary == (
        "1 stale source (mail: last scan 3d8h ago); 1 failing source (mail: server down)"
    )
    assert result.long[0].startswith("CRITICAL: source mail: last complete or partial scan")
    assert result.long[1].startswith("WARNING: source mail: last scan failed at")


def test_a_source_never_scanned_is_critical(
    ledger: Ledger, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh(ledger, skip="homes")
    result = check(capsys, config)
    assert result.state == "CRITICAL"
    assert result.summary == "1 source never scanned (homes)"
    assert result.value("age_homes") == "U"
    assert result.value("stale_sources") == "1"
    assert result.long == ["CRITICAL: source homes: never scanned"]
    # Only ever failed counts as never scanned.
    record(ledger, "homes", utcnow() - HOUR, error="permission denied")
    again = check(capsys, config)
    assert again.state == "CRITICAL"
    assert again.summary == "1 source never scanned (homes)"
    assert "never scanned successfully; its last scan failed" in again.long[0]
    assert "permission denied" in again.long[0]


def test_sources_named_on_the_command_line_are_the_ones_checked(
    ledger: Ledger, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh(ledger, skip="homes")
    result = check(capsys, config, "--source", "mail")
    assert result.state == "OK"
    assert result.value("sources") == "1"
    # A source an agent pushes without it being configured here.
    result = check(capsys, config, "--source", "mail", "--source", "afs-agent")
    assert result.state == "CRITICAL"
    assert result.summary == "1 source never scanned (afs-agent)"


def test_a_failed_restrict_is_critical(
    ledger: Ledger, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh(ledger)
    now = utcnow()
    enforcement_row(ledger, "alice", "restrict", "started", now - HOUR)
    enforcement_row(
        ledger, "alice", "restrict", "failed", now - HOUR, message="cannot reach the daemon"
    )
    enforcement_row(ledger, "bob", "restrict", "done", now - 2 * HOUR)
    enforcement_row(ledger, "bob", "lift", "failed", now - HOUR, message="cannot reach the daemon")
    result = check(capsys, config)
    assert result.state == "CRITICAL"
    assert result.summary == "2 failed enforcement actions (restrict mail:alice, lift mail:bob)"
    assert result.value("failed_enforcement") == "2"
    assert all("cannot reach the daemon" in line for line in result.long)


def test_an_interrupted_restrict_is_critical_once_its_run_is_surely_over(
    ledger: Ledger, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh(ledger)
    enforcement_row(ledger, "alice", "restrict", "started", utcnow() - dt.timedelta(minutes=5))
    assert check(capsys, config).state == "OK"
    enforcement_row(ledger, "bob", "restrict", "started", utcnow() - 2 * HOUR)
    result = check(capsys, config)
    assert result.state == "CRITICAL"
    assert result.summary == "1 failed enforcement action (restrict mail:bob interrupted)"


def test_a_restriction_quotad_enforce_could_not_apply_is_critical_until_applied(
    ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """End to end: `quotad scan`, a failing `quotad enforce`, the check; then a good run."""
    quota_file = tmp_path / "dovecot-quota"
    config = ledger.config_file(
        f"""
[defaults.quota.total]
soft = "10KiB"
hard = "20KiB"
grace = "7d"

[[sources]]
name = "mail"
kind = "maildir"
path = "{tmp_path}/mail/{{member}}/Maildir"
dovecot_quota_file = "{quota_file}"
"""
    )
    for member, size in (("alice", 30 * 1024), ("bob", 1024)):
        root = tmp_path / "mail" / member / "Maildir"
        for sub in ("cur", "new", "tmp"):
            (root / sub).mkdir(parents=True)
        (root / "cur" / f"1700000000.M1P1.host,S={size}:2,S").write_bytes(b"x" * size)
    assert main(["--config", str(config), "scan"]) == 0
    quota_file.mkdir()  # the enforcer cannot write its file: the path is a directory
    assert main(["--config", str(config), "enforce"]) == 1
    capsys.readouterr()
    result = check(capsys, config)
    assert result.state == "CRITICAL"
    assert result.summary == "1 failed enforcement action (restrict mail:alice)"
    assert result.long[0].startswith(
        "CRITICAL: restrict of mail maildir alice (member alice) failed in the run of "
    )
    quota_file.rmdir()
    assert main(["--config", str(config), "enforce"]) == 0
    capsys.readouterr()
    assert check(capsys, config).state == "OK"


def test_the_worst_state_wins_and_every_problem_has_a_line(
    ledger: Ledger, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh(ledger, skip="homes")
    record(ledger, "mail", utcnow(), [Measurement(None, "maildir", "postmaster", 10, 1)])
    job_run(ledger, "enforce", utcnow() - HOUR, "failed", "boom")
    result = check(capsys, config)
    assert result.state == "CRITICAL"
    assert result.summary == (
        "1 source never scanned (homes); 1 unattributed resource (10 B); 1 failed job (enforce)"
    )
    assert [line.split(":")[0] for line in result.long] == ["CRITICAL", "WARNING", "WARNING"]


# UNKNOWN


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--bogus"], "bad arguments: unrecognized arguments: --bogus"),
        (["extra"], "bad arguments: unrecognized arguments: extra"),
        (["-w", "banana"], "bad arguments: argument -w/--stale-warning: not a duration"),
        (["-w", "0"], "bad arguments: argument -w/--stale-warning: must be more than 0"),
        (["-w", "2d", "-c", "1d"], "bad arguments: the stale warning age, 172800s, is above"),
        (["--unattributed-warning", "-1"], "bad arguments: argument --unattributed-warning"),
        (
            ["--unattributed-warning", "5", "--unattributed-critical", "2"],
            "bad arguments: --unattributed-critical is below --unattributed-warning",
        ),
        (["-t", "soon"], "bad arguments: argument -t/--timeout: not a duration"),
    ],
)
def test_bad_arguments_are_unknown(
    ledger: Ledger,
    config: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    reason: str,
) -> None:
    fresh(ledger)
    result = check(capsys, config, *args)
    assert result.state == "UNKNOWN"
    assert result.summary.startswith(reason), result.summary
    assert result.long == []


def test_config_errors_are_unknown_not_exit_2(
    ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = check(capsys, tmp_path / "missing.toml")
    assert result.state == "UNKNOWN"
    assert result.summary == f"config error: {tmp_path / 'missing.toml'}: --config: no such file"
    broken = ledger.config_file('[enforcement]\nstale_after = "soon"\n')
    result = check(capsys, broken)
    assert result.state == "UNKNOWN"
    assert result.summary.startswith(f"config error: {broken}: enforcement.stale_after: ")


def test_a_ledger_not_migrated_is_unknown(
    ledger: Ledger,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if ledger.backend == "sqlite":
        path = tmp_path / "empty.db"
        path.touch()
        url = f"sqlite:///{path}"
    else:
        pg: PgObjects = request.getfixturevalue("pg")
        url = f"postgresql://postgres@127.0.0.1:5432/{pg.database(f'quotad_check_{tag()}')}"
    config = tmp_path / "unmigrated.toml"
    config.write_text(f'database_url = "{url}"\n{CONFIG}', encoding="utf-8")
    result = check(capsys, config)
    assert result.state == "UNKNOWN"
    assert re.fullmatch(
        r"the ledger at \S+ is not initialised: run `quotad db upgrade`", result.summary
    ), result.summary


def test_a_missing_sqlite_ledger_is_unknown_and_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "quotad.toml"
    config.write_text(f'database_url = "sqlite:///var/ledger.db"\n{CONFIG}', encoding="utf-8")
    result = check(capsys, config)
    assert result.state == "UNKNOWN"
    assert result.summary.startswith(f"no ledger at {tmp_path / 'var' / 'ledger.db'}: ")
    assert not (tmp_path / "var").exists()


def test_an_unreachable_ledger_is_unknown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "quotad.toml"
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    config.write_text('database_url = "postgresql://postgres@127.0.0.1:1/x"\n', encoding="utf-8")
    result = check(capsys, config)
    assert result.state == "UNKNOWN"
    assert result.summary.startswith("ledger error: OperationalError: ")
    assert "Connection refused" in result.summary


def test_a_hanging_ledger_times_out_as_unknown(tmp_path: Path, silent_server: SilentServer) -> None:
    """As a monitoring system runs it: a process that must end by itself, on time."""
    config = tmp_path / "quotad.toml"
    config.write_text(
        f'database_url = "postgresql://postgres@127.0.0.1:{silent_server.port}/x"\n',
        encoding="utf-8",
    )
    started = time.monotonic()
    done = subprocess.run(
        [str(QUOTAD), "--config", str(config), "check", "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    elapsed = time.monotonic() - started
    result = Output(done.returncode, done.stdout, done.stderr)
    assert result.state == "UNKNOWN"
    assert result.summary == "no answer within the 2s timeout (ledger hanging?)"
    # Two seconds of waiting plus the interpreter's start; libpq's own
    # connect_timeout (the same 2 s) would end it too, but later.
    assert 2 <= elapsed < 10, elapsed


def test_the_installed_command_exits_with_the_plugin_codes(ledger: Ledger, config: Path) -> None:
    fresh(ledger, skip="homes")

    def run(*args: str) -> Output:
        done = subprocess.run(
            [str(QUOTAD), "--config", str(config), "check", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return Output(done.returncode, done.stdout, done.stderr)

    assert run().state == "CRITICAL"
    assert run("--source", "mail").state == "OK"
    bad = run("--no-such-option")
    assert bad.state == "UNKNOWN"
    assert bad.code == 3
    version = subprocess.run(
        [str(QUOTAD), "check", "--version"], capture_output=True, text=True, check=False
    )
    assert version.returncode == 0
    assert re.fullmatch(r"quotad check \S+\n", version.stdout)


# The verdict alone, without a ledger: cases a ledger makes awkward to reach.

NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
THRESHOLDS = Thresholds(36 * 3600, 72 * 3600)
NOTHING = Unattributed(0, 0, ())


def test_many_problems_of_a_kind_are_counted_not_listed() -> None:
    sources = [SourceFacts(f"s{i}", None, None) for i in range(5)]
    result = evaluate(Facts(sources, [], NOTHING, []), THRESHOLDS, NOW)
    assert result.summary == "5 sources never scanned (s0, s1, s2, 2 more)"
    assert len(result.long) == 5
    assert result.render().count("\n") == 6


def test_problem_text_never_breaks_the_status_line() -> None:
    good = ScanFact(NOW - HOUR, "complete", None, 0)
    failed = ScanFact(NOW, "failed", "first | line\nsecond line", 0)
    actions = [
        ActionFact("mail", "maildir", "x", "x", "lift", "failed", NOW, "a|b\nc"),
    ]
    jobs = [JobFact("scan:mail", NOW, "failed", NOW, "multi\nline | detail")]
    facts = Facts([SourceFacts("mail", failed, good)], actions, NOTHING, jobs)
    lines = evaluate(facts, THRESHOLDS, NOW).render().splitlines()
    assert len(lines) == 4
    assert lines[0].count("|") == 1
    assert all("|" not in line for line in lines[1:])


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (59, "59s"),
        (60, "1m"),
        (3599, "59m"),
        (3600, "1h"),
        (40 * 3600, "40h"),
        (48 * 3600, "2d"),
        (80 * 3600 + 59, "3d8h"),
    ],
)
def test_ages_read_as_quotad_durations(seconds: int, text: str) -> None:
    assert duration(seconds) == text
