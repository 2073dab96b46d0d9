"""Configuration: lookup order, environment overrides, human units, precise errors."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

import pytest

from quotad.cli import main
from quotad.config import find_config, load_settings
from quotad.errors import ConfigError
from scanners.options import parse_duration, parse_size
from scanners.tree import TreeScanner


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for var in list(os.environ):
        if var.startswith("QUOTAD_"):
            monkeypatch.delenv(var)
    return tmp_path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("10GiB", 10 * 1024**3),
        ("500MB", 500_000_000),
        ("2.5GiB", 2684354560),
        ("1 KiB", 1024),
        ("12", 12),
        ("7B", 7),
        (4096, 4096),
        ("1.5k", 1500),
        ("1TiB", 1024**4),
    ],
)
def test_sizes(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "ten", "-1GiB", "1.5B", "5XB", "1.0000000001KiB", True, 1.5])
def test_bad_sizes(text: object) -> None:
    with pytest.raises(ValueError, match=r"size|byte|negative"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", 604800),
        ("36h", 129600),
        ("15m", 900),
        ("1h30m", 5400),
        ("90s", 90),
        ("2w", 1209600),
        ("0", 0),
        (60, 60),
        ("1.5h", 5400),
    ],
)
def test_durations(text: object, expected: int) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "7 days", "h", "3x", "1h 30", "-5m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_built_in_defaults_without_any_file(cwd: Path) -> None:
    if Path("/etc/quotad/quotad.toml").exists():
        pytest.fail("/etc/quotad/quotad.toml exists on this machine and would be read")
    settings = load_settings(environ={})
    assert settings.config_path is None
    assert settings.database_url == f"sqlite:///{cwd}/var/quotad.db"
    assert settings.sources == ()
    assert settings.quota_defaults == {}
    assert settings.server.port == 8640


def test_lookup_order(cwd: Path) -> None:
    (cwd / "quotad.toml").write_text("[server]\nport = 1001\n")
    other = cwd / "other.toml"
    other.write_text("[server]\nport = 1002\n")
    explicit = cwd / "explicit.toml"
    explicit.write_text("[server]\nport = 1003\n")
    assert load_settings(environ={}).server.port == 1001
    assert load_settings(environ={"QUOTAD_CONFIG": str(other)}).server.port == 1002
    assert load_settings(explicit, environ={"QUOTAD_CONFIG": str(other)}).server.port == 1003
    with pytest.raises(ConfigError, match="no such file"):
        find_config(cwd / "missing.toml", environ={})


def test_relative_paths_are_relative_to_the_config_file(cwd: Path) -> None:
    folder = cwd / "etc"
    folder.mkdir()
    (folder / "quotad.toml").write_text(
        'database_url = "sqlite:///ledger/q.db"\n'
        '[[sources]]\nname = "homes"\nkind = "tree"\npath = "homes/{member}"\n'
    )
    settings = load_settings(folder / "quotad.toml", environ={})
    assert settings.database_url == f"sqlite:///{folder}/ledger/q.db"
    scanner = settings.sources[0].scanner
    assert isinstance(scanner, TreeScanner)
    assert scanner.pattern.parent == folder / "homes"
    # Scanner caches sit beside an SQLite ledger unless the config says otherwise.
    assert settings.cache_dir == folder / "ledger" / "cache"


def test_cache_dir(cwd: Path) -> None:
    folder = cwd / "etc"
    folder.mkdir()
    config = folder / "quotad.toml"
    config.write_text('cache_dir = "state/cache"\n')
    assert load_settings(config, environ={}).cache_dir == folder / "state" / "cache"
    config.write_text('database_url = "postgresql://q@db/ledger"\n')
    assert load_settings(config, environ={}).cache_dir == folder / "var" / "cache"
    settings = load_settings(config, environ={"QUOTAD_CACHE_DIR": "here"})
    assert settings.cache_dir == cwd / "here"
    # Under systemd (StateDirectory=quotad) the state directory, not /etc.
    under_systemd = {"STATE_DIRECTORY": "/var/lib/quotad:/var/lib/other"}
    assert load_settings(config, environ=under_systemd).cache_dir == Path("/var/lib/quotad/cache")
    config.write_text('database_url = "postgresql://q@db/ledger"\ncache_dir = "/srv/c"\n')
    assert load_settings(config, environ=under_systemd).cache_dir == Path("/srv/c")
    config.write_text("cache_dir = 5\n")
    with pytest.raises(ConfigError, match="cache_dir"):
        load_settings(config, environ={})


def test_environment_overrides(cwd: Path) -> None:
    (cwd / "quotad.toml").write_text(
        'database_url = "sqlite:///a.db"\n[server]\nport = 1001\nhost = "0.0.0.0"\n'
    )
    settings = load_settings(
        environ={
            "QUOTAD_DATABASE_URL": "postgresql://quotad@db1/ledger",
            "QUOTAD_SERVER__PORT": "8641",
            "QUOTAD_MEMBERS": "{auto_register = false}",
            "QUOTAD_CONFIG": str(cwd / "quotad.toml"),
        }
    )
    assert settings.database_url == "postgresql+psycopg://quotad@db1/ledger"
    assert settings.server.port == 8641
    assert settings.server.host == "0.0.0.0"
    assert settings.members.auto_register is False


def test_full_example_parses(cwd: Path) -> None:
    (cwd / "quotad.toml").write_text("""
database_url = "sqlite:///var/quotad.db"
[members]
auto_register = false
[server]
host = "127.0.0.1"
port = 8640
trusted_proxies = ["10.0.0.5", "192.168.1.0/24"]
identity_header = "X-Remote-User"
max_body = "32MiB"
[defaults.quota.total]
soft = "10GiB"
hard = "12GiB"
grace = "7d"
[defaults.quota.maildir]
soft = "2GiB"
hard = "2.5GiB"
grace = "7d"
[enforcement]
dry_run = false
stale_after = "36h"
notify_at = [0.8, 0.9, 1.0]
[smtp]
host = "127.0.0.1"
port = 25
sender = "quota@example.org"
[billing]
currency = "USD"
free = "10GiB"
price_per_gib_month = "0.10"
[[sources]]
name = "homes"
kind = "tree"
path = "/srv/home/{member}"
schedule = "0 */6 * * *"
""")
    s = load_settings(environ={})
    assert s.quota_defaults["total"].soft_bytes == 10 * 1024**3
    assert s.quota_defaults["maildir"].hard_bytes == 2684354560
    assert s.quota_defaults["maildir"].grace_seconds == 604800
    assert s.enforcement.stale_after == 129600
    assert s.enforcement.notify_at == (Decimal("0.8"), Decimal("0.9"), Decimal("1.0"))
    assert s.billing.price_per_gib_month == Decimal("0.10")
    assert s.billing.free_bytes == 10 * 1024**3
    assert s.server.max_body == 32 * 1024**2
    assert [str(n) for n in s.server.trusted_proxies] == ["10.0.0.5/32", "192.168.1.0/24"]
    assert [(x.name, x.kind, x.schedule) for x in s.sources] == [("homes", "tree", "0 */6 * * *")]


@pytest.mark.parametrize(
    ("body", "key", "problem"),
    [
        ("colour = 1\n", "colour", "unknown key"),
        ("[server]\nprot = 8640\n", "server.prot", "unknown key"),
        ('[server]\nport = "x"\n', "server.port", "must be an integer"),
        ("[server]\nport = 70000\n", "server.port", "between 1 and 65535"),
        (
            '[defaults.quota.total]\nsoft = "lots"\nhard = "1GiB"\n',
            "defaults.quota.total.soft",
            "not a size",
        ),
        (
            '[defaults.quota.total]\nsoft = "2GiB"\nhard = "1GiB"\n',
            "defaults.quota.total.soft",
            "must not exceed hard",
        ),
        (
            '[defaults.quota.email]\nsoft = "1GiB"\nhard = "1GiB"\n',
            "defaults.quota.email",
            "unknown scope",
        ),
        ('[enforcement]\nstale_after = "soon"\n', "enforcement.stale_after", "not a duration"),
        ('[billing]\nprice_per_gib_month = "cheap"\n', "billing.price_per_gib_month", "decimal"),
        ('[server]\ntrusted_proxies = ["not-an-ip"]\n', "server.trusted_proxies", "not an address"),
        ('database_url = "mysql://x@y/z"\n', "database_url", "unsupported ledger"),
        ('[[sources]]\nkind = "tree"\npath = "/x/{member}"\n', "sources[0].name", "required"),
        ('[[sources]]\nname = "a"\nkind = "nfs"\n', "sources[a].kind", "unknown kind"),
        (
            '[[sources]]\nname = "a"\nkind = "tree"\npath = "/x/{member}"\nschedule = "soon"\n',
            "sources[a].schedule",
            "cron",
        ),
        ('[[sources]]\nname = "a"\nkind = "tree"\n', "sources[a].path", "required"),
        (
            '[[sources]]\nname = "a"\nkind = "tree"\npath = "/x/{member}"\ncolour = 1\n',
            "sources[a].colour",
            "unknown key",
        ),
        (
            '[[sources]]\nname = "a"\nkind = "tree"\npath = "/x/{member}"\n'  # noqa: ISC004 - one document
            '[[sources]]\nname = "a"\nkind = "tree"\npath = "/y/{member}"\n',
            "sources[a].name",
            "another source",
        ),
        ("[server\nport = 1\n", "(syntax)", "Expected"),
    ],
)
def test_config_errors_name_file_key_and_problem(
    cwd: Path, body: str, key: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = cwd / "bad.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert info.value.file == str(path)
    assert info.value.key == key
    assert problem in info.value.problem
    # The CLI prints the same and exits 2.
    assert main(["--config", str(path), "report"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err
    assert key in err
    assert problem in err


def test_env_errors_name_the_variable(
    cwd: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUOTAD_SERVER__PORT", "high")
    assert main(["report"]) == 2
    err = capsys.readouterr().err
    assert "server.port" in err
    assert "$QUOTAD_SERVER" in err


def test_the_contracts_example_parses_as_written(cwd: Path) -> None:
    # tests/data/interface-example.toml is the configuration example of
    # INTERFACE.md, copied verbatim: what users will paste first.
    example = Path(__file__).parent / "data" / "interface-example.toml"
    settings = load_settings(example, environ={})
    assert [(s.name, s.kind, s.resource_kind) for s in settings.sources] == [
        ("mail", "maildir", "maildir"),
        ("homes", "tree", "tree"),
        ("afs", "afs", "afs_volume"),
        ("pg", "postgres", "postgres_database"),
        ("mysql", "mysql", "mysql_database"),
        ("lists", "mailman", "mailman_archive"),
    ]
    assert settings.quota_defaults["maildir"].soft_bytes == 2 * 1024**3
    assert settings.sources[0].schedule == "0 */6 * * *"


def test_mail_settings(cwd: Path) -> None:
    (cwd / "templates").mkdir()
    (cwd / "quotad.toml").write_text("""
[enforcement]
notify_interval = "3d"
templates = "templates"
notify_admins = ["root@coop.example", "Storage team <storage@coop.example>"]
[smtp]
host = "mail.coop.example"
port = 587
sender = "Quota <quota@coop.example>"
starttls = true
username = "quotad"
password_file = "secrets/smtp"
timeout = "1m"
""")
    s = load_settings(environ={})
    assert s.enforcement.notify_interval == 3 * 86400
    assert s.enforcement.templates == cwd / "templates"
    assert s.enforcement.notify_admins == (
        "root@coop.example",
        "Storage team <storage@coop.example>",
    )
    assert s.smtp.starttls is True
    assert s.smtp.username == "quotad"
    # Relative to the config file; read only when sending, so it need not exist yet.
    assert s.smtp.password_file == cwd / "secrets" / "smtp"
    assert s.smtp.timeout == 60


def test_mail_settings_defaults(cwd: Path) -> None:
    s = load_settings(environ={})
    assert s.enforcement.notify_interval == 7 * 86400
    assert s.enforcement.templates is None
    assert s.enforcement.notify_admins == ()
    assert (s.smtp.starttls, s.smtp.username, s.smtp.password_file) == (False, None, None)
    assert s.smtp.timeout == 30


@pytest.mark.parametrize(
    ("body", "key", "problem"),
    [
        ('[enforcement]\nnotify_interval = "often"\n', "enforcement.notify_interval", "duration"),
        ('[enforcement]\nnotify_interval = "0s"\n', "enforcement.notify_interval", "longer than 0"),
        ('[enforcement]\ntemplates = "no-such-dir"\n', "enforcement.templates", "not a directory"),
        ('[enforcement]\nnotify_admins = "root@x.org"\n', "enforcement.notify_admins", "list"),
        (
            '[enforcement]\nnotify_admins = ["root@x.org, eve@y.org"]\n',
            "enforcement.notify_admins",
            "not a mail address: 'root@x.org, eve@y.org'",
        ),
        ('[smtp]\nsender = "quota"\n', "smtp.sender", "not a mail address"),
        ('[smtp]\nstarttls = "yes"\n', "smtp.starttls", "true or false"),
        ('[smtp]\ntimeout = "0"\n', "smtp.timeout", "longer than 0"),
        ('[smtp]\nusername = "quotad"\n', "smtp.username", "needs smtp.password_file"),
        ('[smtp]\npassword_file = "pw"\n', "smtp.password_file", "needs smtp.username"),
        (
            '[smtp]\nhost = "mail.x.org"\nusername = "q"\npassword_file = "pw"\n',
            "smtp.username",
            "unencrypted to mail.x.org; set smtp.starttls = true",
        ),
        ("[smtp]\npassword = 1\n", "smtp.password", "unknown key"),
    ],
)
def test_mail_config_errors(cwd: Path, body: str, key: str, problem: str) -> None:
    path = cwd / "bad.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert (info.value.file, info.value.key) == (str(path), key)
    assert problem in info.value.problem


def test_login_without_starttls_is_allowed_on_loopback(cwd: Path) -> None:
    (cwd / "quotad.toml").write_text(
        '[smtp]\nhost = "127.0.0.1"\nport = 2525\nusername = "q"\npassword_file = "pw"\n'
    )
    assert load_settings(environ={}).smtp.username == "q"
