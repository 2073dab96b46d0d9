"""deploy/: systemd units and timers, the cron file, the proxy snippets, the example config.

The units name /usr/local/bin/quotad, which `systemd-analyze verify` insists
exists. Each unit is therefore verified twice: as it is, where the only
complaint allowed is that missing program, and as a copy whose only change
is that path, pointed at this checkout's installed `quotad`, which must pass
without a word. Every command line the units, the cron file and
docs/operations.md run is parsed by the parser of the installed `quotad`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import ipaddress
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Mapping, Sequence
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from quotad import cli
from quotad.config import Settings, load_settings
from quotad.enforcers import ENFORCERS
from quotad.enforcers.dovecot import DovecotEnforcer
from quotad.sources import SCANNERS
from tests.conftest import need

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
EXAMPLE = DEPLOY / "quotad.toml"
CRON = DEPLOY / "cron" / "quotad"
APACHE = DEPLOY / "apache" / "quotad.conf"
NGINX = DEPLOY / "nginx" / "quotad.conf"
OPERATIONS = ROOT / "docs" / "operations.md"

BINARY = "/usr/local/bin/quotad"
INSTALLED = Path(sys.executable).with_name("quotad")
CONFIG_PATH = "/etc/quotad/quotad.toml"
STATE_DIR = Path("/var/lib/quotad")

UNITS = sorted(p.name for p in SYSTEMD.iterdir())
SERVICES = [u for u in UNITS if u.endswith(".service")]
TIMERS = [u for u in UNITS if u.endswith(".timer")]
# Units that scan members' trees, Maildirs and list archives, whatever their modes.
SCANNING = {
    "quotad.service",
    "quotad-scheduler.service",
    "quotad-scan@.service",
    "quotad-agent@.service",
}
# Units that read no member's file and need no capability.
UNPRIVILEGED = {"quotad-api.service", "quotad-bill.service", "quotad-retention.service"}


# --- reading unit files -------------------------------------------------------


def unit_settings(name: str) -> dict[str, list[str]]:
    """Every `Key=value` of a unit file, all sections together, in order."""
    result: dict[str, list[str]] = {}
    for line in (SYSTEMD / name).read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        result.setdefault(key.strip(), []).append(value.strip())
    return result


def one(settings: Mapping[str, list[str]], key: str) -> str:
    values = settings.get(key, [])
    assert len(values) == 1, f"{key}= given {len(values)} times: {values}"
    return values[0]


SPECIFIER_RE = re.compile(r"%(.)")
VARIABLE_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def exec_argv(line: str, specifiers: Mapping[str, str], env: Mapping[str, str]) -> list[str]:
    """An ExecStart= line as systemd passes it to execve (the subset the units use)."""

    def specifier(match: re.Match[str]) -> str:
        letter = match.group(1)
        if letter == "%":
            return "%"
        assert letter in specifiers, f"specifier %{letter} in {line!r}"
        return specifiers[letter]

    def variable(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(2)
        assert name in env, f"${name} in {line!r} is not set by the test"
        return env[name]

    return [VARIABLE_RE.sub(variable, SPECIFIER_RE.sub(specifier, w)) for w in shlex.split(line)]


# --- the installed command's parser ------------------------------------------


class _Captured(Exception):
    pass


@pytest.fixture(scope="module")
def quotad_parser() -> argparse.ArgumentParser:
    """The parser `quotad` (the console script) builds, with every command it adds."""
    (script,) = entry_points(group="console_scripts", name="quotad")
    main = script.load()
    original = cli.build_parser
    captured: list[argparse.ArgumentParser] = []

    def spy(extensions: Sequence[cli.Extension] = ()) -> argparse.ArgumentParser:
        captured.append(original(extensions))
        raise _Captured

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli, "build_parser", spy)
        with pytest.raises(_Captured):
            main([])
    return captured[0]


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """ARGV as `quotad` would read it; a failed assertion quoting argparse's error if not."""
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        try:
            return parser.parse_args(argv)
        except SystemExit:
            pass
    pytest.fail(f"`quotad {shlex.join(argv)}` is not a valid command: {errors.getvalue()}")


# --- systemd-analyze verify --------------------------------------------------


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        need("systemd-analyze", "apt-get install systemd (make test installs it)")
    assert found is not None
    return found


def verify(program: str, unit: Path) -> tuple[int, list[str]]:
    """Exit status and the lines about quotad's units from `systemd-analyze verify`.

    Lines about other units (the host's own, pulled in as dependencies) are
    the host's business, as are their errors: --recursive-errors=no.
    """
    done = subprocess.run(
        [program, "verify", "--man=no", "--recursive-errors=no", str(unit)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    lines = (done.stdout + done.stderr).splitlines()
    return done.returncode, [line for line in lines if "quotad" in line]


def test_the_units_named_in_the_guide_exist() -> None:
    expected = {
        "quotad.service",
        "quotad-api.service",
        "quotad-scheduler.service",
        "quotad-agent@.service",
        "quotad-agent@.timer",
        "quotad-enforce.service",
        "quotad-enforce.timer",
        "quotad-scan@.service",
        "quotad-scan@.timer",
        "quotad-bill.service",
        "quotad-bill.timer",
        "quotad-retention.service",
        "quotad-retention.timer",
    }
    assert expected <= set(UNITS)
    guide = OPERATIONS.read_text(encoding="utf-8")
    assert [u for u in UNITS if u.rpartition(".")[0] not in guide] == []


@pytest.mark.parametrize("unit", UNITS)
def test_unit_passes_systemd_analyze_verify(
    unit: str, systemd_analyze: str, tmp_path: Path
) -> None:
    assert INSTALLED.is_file(), f"{INSTALLED} missing: pip install -e . makes it"
    # The whole folder: a timer is verified with the service it starts.
    for path in SYSTEMD.iterdir():
        text = path.read_text(encoding="utf-8")
        (tmp_path / path.name).write_text(text.replace(BINARY, str(INSTALLED)), encoding="utf-8")
    status, lines = verify(systemd_analyze, tmp_path / unit)
    assert lines == []
    assert status == 0


@pytest.mark.parametrize("unit", UNITS)
def test_unit_as_shipped_lacks_nothing_but_the_installed_program(
    unit: str, systemd_analyze: str
) -> None:
    status, lines = verify(systemd_analyze, SYSTEMD / unit)
    missing = re.compile(rf"^quotad[^:]*: Command {re.escape(BINARY)} is not executable: ")
    assert [line for line in lines if not missing.match(line)] == []
    if not lines:
        assert status == 0


@pytest.mark.parametrize("timer", TIMERS)
def test_each_timer_starts_a_unit_that_is_shipped(timer: str) -> None:
    # systemd-analyze verify accepts a timer whose service does not exist.
    settings = unit_settings(timer)
    target = settings.get("Unit", [timer.removesuffix(".timer") + ".service"])[0]
    assert target in SERVICES
    assert settings.get("OnCalendar"), "a timer of quotad's runs on a calendar"
    assert one(settings, "WantedBy") == "timers.target"


# --- what each unit runs and may do ------------------------------------------

# What each service must run: the command, and what its arguments must say.
COMMANDS: dict[str, tuple[str, dict[str, object]]] = {
    "quotad.service": ("serve", {"no_scheduler": False}),
    "quotad-api.service": ("serve", {"no_scheduler": True}),
    "quotad-scheduler.service": ("scheduler", {}),
    "quotad-enforce.service": ("enforce", {"dry_run": False}),
    "quotad-scan@.service": ("scan", {"sources": ["mail"], "push": None}),
    "quotad-agent@.service": (
        "scan",
        {
            "sources": ["mail"],
            "push": "https://quotad.example.org",
            "token_file": "/run/credentials/quotad-agent@mail.service/token",
        },
    ),
    "quotad-bill.service": ("bill", {"finalize": True}),
    "quotad-retention.service": ("retention", {"dry_run": False}),
}
SPECIFIERS = {"i": "mail", "d": "/run/credentials/quotad-agent@mail.service"}
ENVIRONMENT = {"PUSH_URL": "https://quotad.example.org"}
# What systemd gives a system service's processes (systemd.exec(5), "PATH").
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def test_every_service_has_its_command_listed() -> None:
    assert set(COMMANDS) == set(SERVICES)


def service_argv(unit: str, tmp_path: Path) -> list[str]:
    """What the service runs, as quotad's arguments; a shell line is run to find them."""
    argv = exec_argv(one(unit_settings(unit), "ExecStart"), SPECIFIERS, ENVIRONMENT)
    if argv[0] == BINARY:
        return argv[1:]
    assert argv[:2] == ["/bin/sh", "-c"], f"{unit} runs {argv[0]}, not {BINARY}"
    # Run the shell line for real, with the one path pointed at a program that
    # writes its arguments down: what the shell computes is what is checked.
    echo = tmp_path / "quotad"
    out = tmp_path / "argv"
    echo.write_text(f'#!/bin/sh\nprintf "%s\\0" "$@" > {out}\n', encoding="utf-8")
    echo.chmod(0o755)
    assert argv[2].count(BINARY) == 1
    subprocess.run(
        ["/bin/sh", "-c", argv[2].replace(BINARY, str(echo))],
        env={"PATH": SYSTEMD_PATH},
        check=True,
        timeout=30,
    )
    return out.read_text(encoding="utf-8").split("\0")[:-1]


@pytest.mark.parametrize("unit", sorted(COMMANDS))
def test_service_runs_a_valid_quotad_command(
    unit: str, quotad_parser: argparse.ArgumentParser, tmp_path: Path
) -> None:
    command, expected = COMMANDS[unit]
    before = dt.datetime.now(dt.UTC)
    argv = service_argv(unit, tmp_path)
    after = dt.datetime.now(dt.UTC)
    assert argv[0] == command
    args = parse(quotad_parser, argv)
    assert {key: getattr(args, key) for key in expected} == expected
    if command == "bill":
        # Last month in UTC, also on the 31st and in January.
        periods = {
            (t.replace(day=1) - dt.timedelta(days=1)).strftime("%Y-%m") for t in (before, after)
        }
        assert args.period in periods


@pytest.mark.parametrize("unit", SERVICES)
def test_service_runs_as_quotad_with_the_hardening(unit: str) -> None:
    settings = unit_settings(unit)
    expected = {
        "User": "quotad",
        "Group": "quotad",
        "Environment": f"QUOTAD_CONFIG={CONFIG_PATH}",
        "StateDirectory": "quotad",
        "WorkingDirectory": str(STATE_DIR),
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictSUIDSGID": "yes",
        "SystemCallFilter": "@system-service",
    }
    assert {key: one(settings, key) for key in expected} == expected
    # StateDirectory= is the one writable place; nothing else is opened up.
    assert "ReadWritePaths" not in settings
    assert one(settings, "UMask") in {"0027", "0077"}


@pytest.mark.parametrize("unit", sorted(SCANNING))
def test_scanning_units_may_read_members_files_and_nothing_more(unit: str) -> None:
    settings = unit_settings(unit)
    # Members' Maildirs and homes are theirs (0700); the scanner must read them
    # all, under /srv and /home alike, and `vos -localauth` the AFS KeyFile.
    assert one(settings, "AmbientCapabilities") == "CAP_DAC_READ_SEARCH"
    assert one(settings, "CapabilityBoundingSet") == "CAP_DAC_READ_SEARCH"
    assert one(settings, "ProtectHome") == "read-only"
    # vos talks Rx over UDP, the databases and the central quotad over TCP.
    families = set(one(settings, "RestrictAddressFamilies").split())
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= families
    assert "PrivateNetwork" not in settings


@pytest.mark.parametrize("unit", sorted(UNPRIVILEGED))
def test_units_that_read_no_members_files_hold_no_capability(unit: str) -> None:
    settings = unit_settings(unit)
    assert one(settings, "CapabilityBoundingSet") == ""
    assert "AmbientCapabilities" not in settings
    assert one(settings, "ProtectHome") == "yes"


def test_the_agent_reads_its_token_as_a_credential_and_pushes() -> None:
    settings = unit_settings("quotad-agent@.service")
    assert one(settings, "LoadCredential") == "token:/etc/quotad/agent-%i.token"
    # QUOTAD_* variables are config overrides: the URL's variable must not be one.
    for line in [*settings.get("Environment", []), one(settings, "ExecStart")]:
        assert not re.search(r"\$\{?QUOTAD_", line)


# --- the example config -------------------------------------------------------


@pytest.fixture(scope="module")
def example() -> Settings:
    # An empty environment: a QUOTAD_* variable of the machine must not change it.
    return load_settings(EXAMPLE, environ={})


def example_raw() -> dict[str, object]:
    return tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))


def test_example_config_uses_every_source_kind(example: Settings) -> None:
    assert sorted(s.kind for s in example.sources) == sorted(SCANNERS)


def test_example_config_has_every_section() -> None:
    raw = example_raw()
    sections = [
        "members",
        "server",
        "defaults",
        "enforcement",
        "smtp",
        "billing",
        "scheduler",
        "retention",
        "logging",
        "sources",
    ]
    assert [s for s in sections if s not in raw] == []
    billing = raw["billing"]
    assert isinstance(billing, dict)
    assert billing.get("plans")
    defaults = raw["defaults"]
    assert isinstance(defaults, dict)
    assert "total" in defaults["quota"]


def test_example_config_enforces_wherever_a_kind_can(example: Settings) -> None:
    # A Mailman source with an owners_file, or a Maildir source without
    # Dovecot's file, would load fine and silently never restrict anybody.
    unenforced = [s.name for s in example.sources if s.kind in ENFORCERS and s.enforcer is None]
    assert unenforced == []


def test_example_config_writes_only_where_the_units_allow(example: Settings) -> None:
    for unit in SERVICES:
        assert one(unit_settings(unit), "StateDirectory") == STATE_DIR.name
    written = [example.cache_dir]
    if example.database_url.startswith("sqlite"):
        written.append(Path(example.database_url.partition(":///")[2]))
    dovecot = [s.enforcer for s in example.sources if isinstance(s.enforcer, DovecotEnforcer)]
    assert dovecot
    written += [enforcer.quota_file for enforcer in dovecot]
    assert [p for p in written if not Path(p).is_relative_to(STATE_DIR)] == []


def test_example_config_trusts_the_proxy_it_is_shipped_with(example: Settings) -> None:
    for host, port in proxy_upstreams():
        assert port == example.server.port
        peer = ipaddress.ip_address(host)
        assert any(peer in network for network in example.server.trusted_proxies)
    # A proxy may assert identity; a whole client network never.
    assert all(n.num_addresses == 1 for n in example.server.trusted_proxies)


# --- cron ---------------------------------------------------------------------

CRON_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day", 1, 31), ("month", 1, 12), ("dow", 0, 7))


def cron_field_problem(text: str, low: int, high: int) -> str | None:
    """None for a valid numeric cron field (*, N, N-M, with /STEP, in lists)."""
    for part in text.split(","):
        match = re.fullmatch(r"(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?", part)
        if match is None:
            return f"cannot read {part!r}"
        start, end, step = match.group(2), match.group(3), match.group(4)
        numbers = [int(n) for n in (start, end) if n is not None]
        if any(not low <= n <= high for n in numbers):
            return f"{part!r} is outside {low}-{high}"
        if end is not None and int(start) > int(end):
            return f"{part!r} runs backwards"
        if step is not None and int(step) == 0:
            return f"{part!r} has a step of 0"
    return None


def cron_entries() -> tuple[dict[str, str], list[tuple[list[str], str, str]]]:
    """The file's variables, and each job as (5 time fields, user, command)."""
    env: dict[str, str] = {}
    jobs: list[tuple[list[str], str, str]] = []
    for line in CRON.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        variable = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)", line)
        if variable:
            env[variable.group(1)] = variable.group(2)
            continue
        fields = line.split(None, 6)
        assert len(fields) == 7, f"not 5 time fields, a user and a command: {line!r}"
        jobs.append((fields[:5], fields[5], fields[6]))
    return env, jobs


def test_cron_file_is_one_cron_reads() -> None:
    text = CRON.read_bytes()
    # cron ignores a last line without a line break; a dot in the name, the file.
    assert text.endswith(b"\n")
    assert "." not in CRON.name
    env, jobs = cron_entries()
    assert jobs
    assert env.get("QUOTAD_CONFIG") == CONFIG_PATH
    for times, user, command in jobs:
        problems = [
            f"{name}: {problem}"
            for value, (name, low, high) in zip(times, CRON_FIELDS, strict=True)
            if (problem := cron_field_problem(value, low, high))
        ]
        assert problems == [], command
        assert user == "quotad"
        # An unescaped % ends cron's command and feeds the rest as stdin.
        assert not re.search(r"(?<!\\)%", command), command


def test_cron_jobs_run_valid_quotad_commands(
    quotad_parser: argparse.ArgumentParser, tmp_path: Path
) -> None:
    env, jobs = cron_entries()
    record = tmp_path / "calls"
    record.mkdir()
    # Each line runs in a real shell as cron runs it, with `quotad` and
    # `logger` found first on PATH as programs that write their arguments down.
    for name, stdin in (("quotad", ""), ("logger", "cat >/dev/null\n")):
        stub = tmp_path / name
        write = f'printf "%s\\0" "$@" > "$(mktemp {record}/{name}.XXXXXX)"'
        stub.write_text(f"#!/bin/sh\n{stdin}{write}\n", encoding="utf-8")
        stub.chmod(0o755)
    commands = []
    for _, _, command in jobs:
        for call in record.iterdir():
            call.unlink()
        shell_env = {**env, "PATH": f"{tmp_path}:{env.get('PATH', '/usr/bin:/bin')}"}
        subprocess.run(
            [env.get("SHELL", "/bin/sh"), "-c", command.replace("\\%", "%")],
            env=shell_env,
            check=True,
            timeout=30,
        )
        calls = sorted(record.glob("quotad.*"))
        assert len(calls) == 1, command
        argv = calls[0].read_text(encoding="utf-8").split("\0")[:-1]
        commands.append(parse(quotad_parser, argv).command)
    assert {"enforce", "scan", "bill", "retention"} <= set(commands)


# --- reverse proxies ----------------------------------------------------------


def proxy_upstreams() -> list[tuple[str, int]]:
    """Every address:port the proxy snippets send requests to."""
    found = re.findall(r'ProxyPass\s+"/"\s+"http://([\d.]+):(\d+)/"', APACHE.read_text())
    found += re.findall(r"^\s*server\s+([\d.]+):(\d+);", NGINX.read_text(), re.MULTILINE)
    assert len(found) == 2, found
    return [(host, int(port)) for host, port in found]


def apache_directives() -> list[tuple[str, list[str]]]:
    """Each directive of the Apache snippet with its arguments, in order."""
    result = []
    for line in APACHE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            words = shlex.split(stripped, posix=True)
            result.append((words[0], words[1:]))
    return result


def test_apache_drops_the_clients_identity_header_first(example: Settings) -> None:
    header = example.server.identity_header.lower()
    directives = apache_directives()
    touching = [
        (name, args)
        for name, args in directives
        if name == "RequestHeader" and len(args) > 1 and args[1].lower() == header
    ]
    # Unset early (before any module, authentication included, runs) and
    # before anything is proxied; then set only from an authenticated user.
    unset = ("RequestHeader", ["unset", example.server.identity_header, "early"])
    assert touching[0] == unset
    first_proxy = next(i for i, (name, _) in enumerate(directives) if name.startswith("Proxy"))
    assert directives.index(unset) < first_proxy
    assert [args[0] for _, args in touching] == ["unset", "set", "edit"]
    assert touching[1][1] == [
        "set",
        example.server.identity_header,
        "expr=%{REMOTE_USER}",
        "expr=-n %{REMOTE_USER}",
    ]


def test_apache_strips_only_its_own_realm() -> None:
    (edit,) = [
        args for name, args in apache_directives() if name == "RequestHeader" and args[0] == "edit"
    ]
    pattern, replacement = re.compile(edit[2]), edit[3].replace("$1", r"\1")

    def member(principal: str) -> str:
        return pattern.sub(replacement, principal)

    assert member("alice@COOP.EXAMPLE") == "alice"
    assert member("alice@OTHER.EXAMPLE") == "alice@OTHER.EXAMPLE"
    assert member("alice/admin@COOP.EXAMPLE") == "alice/admin@COOP.EXAMPLE"


def test_apache_lets_bearer_tokens_through_and_asks_the_rest_for_kerberos() -> None:
    directives = apache_directives()
    expr = next(args for name, args in directives if name == "Require" and args[0] == "expr")
    match = re.fullmatch(r"%\{HTTP:Authorization\} =~ /(.*)/i", expr[1])
    assert match is not None
    bearer = re.compile(match.group(1), re.IGNORECASE)
    assert bearer.search("Bearer abc.def")
    assert bearer.search("bearer abc")
    assert not bearer.search("Negotiate YIIC")
    assert not bearer.search("Basic YWxpY2U6eA==")
    assert ("Require", ["valid-user"]) in directives
    assert ("AuthType", ["GSSAPI"]) in directives
    assert ("GssapiAllowedMech", ["krb5"]) in directives


def nginx_blocks() -> dict[str, str]:
    """The body of each `location` block of the nginx snippet, by its argument."""
    text = re.sub(r"#.*", "", NGINX.read_text(encoding="utf-8"))
    blocks = {}
    for match in re.finditer(r"location\s+([^{]+?)\s*\{", text):
        depth, end = 1, match.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
        blocks[match.group(1)] = text[match.end() : end - 1]
    return blocks


def test_nginx_sets_the_identity_header_in_every_proxied_location(example: Settings) -> None:
    header = re.escape(example.server.identity_header)
    blocks = nginx_blocks()
    proxied = {name: body for name, body in blocks.items() if "proxy_pass" in body}
    assert set(proxied) >= {"/", "@token", "= /healthz", "= /metrics"}
    for name, body in proxied.items():
        values = re.findall(rf"proxy_set_header\s+{header}\s+(\S+);", body, re.IGNORECASE)
        # proxy_set_header replaces the client's header; without it, it passes.
        assert len(values) == 1, name
        if re.search(r"^\s*auth_gss\s+on;", body, re.MULTILINE):
            assert values == ["$remote_user"], name
        else:
            assert values == ['""'], name
    kerberos = [name for name, body in proxied.items() if "auth_gss on" in body]
    assert kerberos == ["/"]
    assert "auth_gss_allow_basic_fallback off;" in blocks["/"]
    assert re.search(r"auth_gss_realm\s+\S+;", blocks["/"])


def test_nginx_sends_bearer_tokens_past_kerberos() -> None:
    body = nginx_blocks()["/"]
    match = re.search(r'if \(\$http_authorization ~\* "(.*)"\)\s*\{\s*return (\d+);', body)
    assert match is not None
    bearer = re.compile(match.group(1), re.IGNORECASE)
    assert bearer.search("Bearer abc")
    assert not bearer.search("Negotiate YIIC")
    text = NGINX.read_text(encoding="utf-8")
    assert re.search(rf"error_page\s+{match.group(2)}\s+=\s+@token;", text)


# --- the operations guide -----------------------------------------------------


SHELL_ENDS = {"|", ">", ">>", "<", "&&", "||", ";"}


def guide_commands() -> list[list[str]]:
    """Every `quotad ...` line of the guide's sh blocks, as quotad's arguments.

    A line may start with VAR=value words and `sudo -u quotad`; the command
    ends at a pipe, a redirection or the next command.
    """
    text = OPERATIONS.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
                words = words[1:]
            if words[:3] == ["sudo", "-u", "quotad"]:
                words = words[3:]
            if words and Path(words[0]).name == "quotad":
                argv = words[1:]
                ends = [i for i, w in enumerate(argv) if w in SHELL_ENDS]
                commands.append(argv[: ends[0]] if ends else argv)
    return commands


def test_guide_commands_are_valid(quotad_parser: argparse.ArgumentParser) -> None:
    commands = guide_commands()
    assert len(commands) >= 10
    for argv in commands:
        parse(quotad_parser, argv)


def test_guide_config_snippets_load(tmp_path: Path) -> None:
    blocks = re.findall(r"```toml\n(.*?)```", OPERATIONS.read_text(encoding="utf-8"), re.DOTALL)
    assert blocks
    for index, block in enumerate(blocks):
        path = tmp_path / f"snippet-{index}.toml"
        path.write_text(textwrap.dedent(block), encoding="utf-8")
        settings = load_settings(path, environ={})
        # An agent's outbox must be where its unit may write.
        assert settings.cache_dir.is_relative_to(STATE_DIR)
