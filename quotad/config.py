"""Loading and validating quotad.toml (INTERFACE.md section 1).

Every problem becomes a ConfigError naming the file, the key and what is
wrong; unknown keys are errors so that a typo never silently changes a limit
or a price.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from decimal import Decimal
from email.utils import getaddresses
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from quotad import sources as source_registry
from quotad.enforcers import ENFORCERS
from quotad.enforcers.base import Enforcer
from quotad.errors import ConfigError
from quotad.timeutil import parse_time
from scanners.base import OptionError, Scanner
from scanners.options import Options, resolve_path

ENV_PREFIX = "QUOTAD_"
# Variables that steer the loading itself rather than override a key.
ENV_RESERVED = frozenset({"QUOTAD_CONFIG"})
DEFAULT_LOCATIONS = (Path("quotad.toml"), Path("/etc/quotad/quotad.toml"))
DEFAULT_DATABASE_URL = "sqlite:///var/quotad.db"
SOURCE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
HEADER_RE = re.compile(r"^[A-Za-z0-9-]+$")
CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
# A bound that no storage price reaches, so that a typo ("1e9") is caught.
MAX_PRICE = Decimal(1_000_000)
BUILTIN = "<built-in defaults>"


@dataclass(frozen=True, slots=True)
class QuotaLimit:
    """A soft and hard limit with its grace, for one scope (`total` or a resource kind)."""

    scope: str
    soft_bytes: int
    hard_bytes: int
    grace_seconds: int


@dataclass(frozen=True, slots=True)
class MembersSettings:
    auto_register: bool = True


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8640
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    identity_header: str = "X-Remote-User"
    max_body: int = 32 * 1024**2


@dataclass(frozen=True, slots=True)
class EnforcementSettings:
    dry_run: bool = False
    stale_after: int = 36 * 3600
    notify_at: tuple[Decimal, ...] = (Decimal("0.8"), Decimal("0.9"), Decimal("1.0"))
    # A warning for the same level is repeated at most once per interval.
    notify_interval: int = 7 * 86400
    # A folder whose warning.txt, state.txt or all_clear.txt replace the shipped ones.
    templates: Path | None = None
    # Addresses that get a copy of every state change.
    notify_admins: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str = "127.0.0.1"
    port: int = 25
    sender: str = "quota@localhost"
    starttls: bool = False
    username: str | None = None
    # Read when sending, so the password is never part of the settings or a log line.
    password_file: Path | None = None
    timeout: int = 30


@dataclass(frozen=True, slots=True)
class RatePlan:
    """The free allowance and prices in force from `starts_at` until the next plan.

    `prices` holds the kinds with a price of their own; every other kind
    costs `price_per_gib_month`.
    """

    starts_at: dt.datetime | None  # None: since the beginning
    free_bytes: int
    price_per_gib_month: Decimal
    prices: Mapping[str, Decimal] = field(default_factory=dict)

    def price_of(self, kind: str) -> Decimal:
        return self.prices.get(kind, self.price_per_gib_month)


@dataclass(frozen=True, slots=True)
class BillingSettings:
    currency: str = "USD"
    free_bytes: int = 0
    price_per_gib_month: Decimal = Decimal(0)
    prices: Mapping[str, Decimal] = field(default_factory=dict)
    # Later plans ([[billing.plans]]), oldest first, each with its start.
    changes: tuple[RatePlan, ...] = ()
    # The scheduler finalizes a period this long after it ends; None: by hand.
    finalize_after: int | None = None

    @property
    def plans(self) -> tuple[RatePlan, ...]:
        """Every plan, the base one (from the beginning) first."""
        base = RatePlan(None, self.free_bytes, self.price_per_gib_month, self.prices)
        return (base, *self.changes)


@dataclass(frozen=True, slots=True)
class SchedulerSettings:
    """The built-in scheduler's jobs; a schedule of None turns that job off."""

    enabled: bool = True
    enforce: str | None = "*/15 * * * *"
    billing: str | None = "5 * * * *"
    full_rescan: str | None = "0 3 * * 0"
    retention: str | None = "30 4 * * *"
    # A run missed by less than this (a busy or restarted process) still runs,
    # once for all the slots it missed.
    misfire_grace: int = 15 * 60


@dataclass(frozen=True, slots=True)
class RetentionSettings:
    # Raw samples older than this are thinned to one per resource and day;
    # None keeps every sample for ever.
    raw_samples: int | None = 400 * 86400
    job_runs: int = 90 * 86400


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    format: str = "text"  # or "json"
    level: str = "INFO"


@dataclass(frozen=True, slots=True)
class SourceSettings:
    name: str
    kind: str
    schedule: str | None
    enforce: bool
    scanner: Scanner = field(compare=False)
    # None when the kind has no enforcer or enforcement is off for the source.
    enforcer: Enforcer | None = field(default=None, compare=False)

    @property
    def resource_kind(self) -> str:
        return self.scanner.resource_kind


@dataclass(frozen=True, slots=True)
class Settings:
    config_path: Path | None = None
    database_url: str = DEFAULT_DATABASE_URL
    members: MembersSettings = MembersSettings()
    server: ServerSettings = ServerSettings()
    quota_defaults: Mapping[str, QuotaLimit] = field(default_factory=dict)
    enforcement: EnforcementSettings = EnforcementSettings()
    smtp: SmtpSettings = SmtpSettings()
    billing: BillingSettings = BillingSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    retention: RetentionSettings = RetentionSettings()
    logging: LoggingSettings = LoggingSettings()
    sources: tuple[SourceSettings, ...] = ()
    # Scanners' caches (the Maildir scanner's directory summaries); safe to delete.
    cache_dir: Path = Path("var/cache")

    def source(self, name: str) -> SourceSettings | None:
        return next((s for s in self.sources if s.name == name), None)


def find_config(
    explicit: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Path | None:
    """The config file by the documented lookup order, or None for built-in defaults."""
    env = os.environ if environ is None else environ
    for given, origin in ((explicit, "--config"), (env.get("QUOTAD_CONFIG"), "$QUOTAD_CONFIG")):
        if given:
            path = Path(given)
            if not path.is_file():
                raise ConfigError(str(path), origin, "no such file")
            return path
    return next((p for p in DEFAULT_LOCATIONS if p.is_file()), None)


def load_settings(
    explicit: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Find, read, override from the environment, and validate the configuration."""
    env = os.environ if environ is None else environ
    path = find_config(explicit, env)
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(path), "(syntax)", str(exc)) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(str(path), "(file)", f"cannot read: {exc}") from None
    env_keys = _apply_environment(raw, env)
    file_label = str(path) if path is not None else BUILTIN
    base_dir = path.resolve().parent if path is not None else Path.cwd()
    # systemd's StateDirectory= (a colon-separated list when there are several).
    state = env.get("STATE_DIRECTORY", "").split(":")[0]
    return parse_settings(
        raw,
        file_label=file_label,
        base_dir=base_dir,
        config_path=path,
        env_keys=env_keys,
        state_dir=Path(state) if state else None,
    )


def _apply_environment(raw: dict[str, Any], env: Mapping[str, str]) -> set[str]:
    """Override top-level keys (QUOTAD_KEY) and table keys (QUOTAD_TABLE__KEY) from env."""
    applied: set[str] = set()
    for var, text in env.items():
        if not var.startswith(ENV_PREFIX) or var in ENV_RESERVED:
            continue
        parts = var[len(ENV_PREFIX) :].lower().split("__")
        if not all(parts) or len(parts) > 2:  # noqa: PLR2004 - a table and one key at most
            raise ConfigError(f"${var}", var, "cannot be mapped to a config key")
        value = _env_value(text)
        if len(parts) == 1:
            raw[parts[0]] = value
        else:
            table = raw.setdefault(parts[0], {})
            if not isinstance(table, dict):
                raise ConfigError(f"${var}", parts[0], "is not a table")
            table[parts[1]] = value
        applied.add(parts[0])
    return applied


def _env_value(text: str) -> Any:
    """A TOML value when the text is one (8641, true, [..], {..}), else the text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_settings(
    raw: Mapping[str, Any],
    *,
    file_label: str,
    base_dir: Path,
    config_path: Path | None = None,
    env_keys: set[str] | frozenset[str] = frozenset(),
    state_dir: Path | None = None,
) -> Settings:
    """Validate a raw TOML document into Settings; STATE_DIR: systemd's, if any."""
    top = Options(raw)
    try:
        url_base = Path.cwd() if "database_url" in env_keys else base_dir
        database_url = _database_url(top.string("database_url", DEFAULT_DATABASE_URL), url_base)
        members = _members(Options(top.table("members"), "members."))
        server = _server(Options(top.table("server"), "server."))
        defaults = _quota_defaults(Options(top.table("defaults"), "defaults."))
        enforcement = _enforcement(
            Options(top.table("enforcement"), "enforcement."),
            Path.cwd() if "enforcement" in env_keys else base_dir,
        )
        smtp = _smtp(
            Options(top.table("smtp"), "smtp."), Path.cwd() if "smtp" in env_keys else base_dir
        )
        billing = _billing(Options(top.table("billing"), "billing."))
        scheduler = _scheduler(Options(top.table("scheduler"), "scheduler."))
        retention = _retention(Options(top.table("retention"), "retention."))
        logging = _logging(Options(top.table("logging"), "logging."))
        sources = _sources(top.raw("sources", []), base_dir)
        cache_dir = _cache_dir(top, database_url, env_keys, base_dir, state_dir)
        top.finish()
    except OptionError as exc:
        label = file_label
        root = exc.key.split(".", 1)[0].split("[", 1)[0]
        if root in env_keys:
            label = f"{file_label} (overridden by ${ENV_PREFIX}{root.upper()})"
        raise ConfigError(label, exc.key, exc.problem) from None
    return Settings(
        config_path=config_path,
        database_url=database_url,
        members=members,
        server=server,
        quota_defaults=defaults,
        enforcement=enforcement,
        smtp=smtp,
        billing=billing,
        scheduler=scheduler,
        retention=retention,
        logging=logging,
        sources=sources,
        cache_dir=cache_dir,
    )


def _cache_dir(
    top: Options,
    database_url: str,
    env_keys: AbstractSet[str],
    base: Path,
    state_dir: Path | None,
) -> Path:
    """`cache_dir`: by default beside an SQLite ledger, else in systemd's state directory.

    Without either, ./var/cache by the config. Under systemd the config's
    folder (/etc/quotad) is read-only, and an agent's outbox must survive.
    """
    text = top.optional_string("cache_dir")
    if text:
        return resolve_path(text, Path.cwd() if "cache_dir" in env_keys else base)
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database:
        return Path(url.database).parent / "cache"
    if state_dir is not None:
        return state_dir / "cache"
    return base / "var" / "cache"


def _database_url(text: str, base_dir: Path) -> str:
    try:
        url = make_url(text)
    except ArgumentError:
        raise OptionError("database_url", f"not a database URL: {text!r}") from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:"):
            raise OptionError("database_url", "an SQLite ledger needs a file path")
        if not Path(database).is_absolute():
            url = url.set(database=str(base_dir / database))
    elif backend in ("postgresql", "postgres"):
        # psycopg 3 is the driver quotad ships; a bare postgresql:// would ask for psycopg2.
        url = URL.create(
            "postgresql+psycopg",
            url.username,
            url.password,
            url.host,
            url.port,
            url.database,
            url.query,
        )
    else:
        raise OptionError(
            "database_url", f"unsupported ledger database {backend!r} (use sqlite or postgresql)"
        )
    return url.render_as_string(hide_password=False)


def _members(opts: Options) -> MembersSettings:
    result = MembersSettings(auto_register=opts.boolean("auto_register", default=True))
    opts.finish()
    return result


def _server(opts: Options) -> ServerSettings:
    proxies = []
    for text in opts.string_list("trusted_proxies"):
        try:
            proxies.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise OptionError(
                "server.trusted_proxies", f"not an address or network: {text!r}"
            ) from None
    header = opts.string("identity_header", "X-Remote-User")
    if not HEADER_RE.fullmatch(header):
        raise OptionError("server.identity_header", f"not a header name: {header!r}")
    result = ServerSettings(
        host=opts.string("host", "127.0.0.1"),
        port=opts.integer("port", 8640, minimum=1, maximum=65535),
        trusted_proxies=tuple(proxies),
        identity_header=header,
        max_body=opts.size("max_body", "32MiB"),
    )
    opts.finish()
    return result


def _quota_defaults(opts: Options) -> dict[str, QuotaLimit]:
    quota = Options(opts.table("quota"), "defaults.quota.")
    opts.finish()
    limits: dict[str, QuotaLimit] = {}
    for scope in quota.keys():  # noqa: SIM118 - Options is not a dict
        table = quota.table(scope)
        if scope not in source_registry.QUOTA_SCOPES:
            raise OptionError(
                f"defaults.quota.{scope}",
                "unknown scope (use total or one of "
                f"{', '.join(sorted(source_registry.RESOURCE_KINDS))})",
            )
        limits[scope] = quota_limit(scope, Options(table, f"defaults.quota.{scope}."))
    quota.finish()
    return limits


def quota_limit(scope: str, opts: Options) -> QuotaLimit:
    soft = opts.size("soft")
    hard = opts.size("hard")
    if soft > hard:
        raise OptionError(f"defaults.quota.{scope}.soft", "must not exceed hard")
    result = QuotaLimit(scope, soft, hard, opts.duration("grace", "7d"))
    opts.finish()
    return result


def _enforcement(opts: Options, base_dir: Path) -> EnforcementSettings:
    raw_levels = opts.raw("notify_at", [0.8, 0.9, 1.0])
    if not isinstance(raw_levels, list):
        raise OptionError("enforcement.notify_at", "must be a list of fractions such as [0.8, 1.0]")
    levels = []
    for item in raw_levels:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise OptionError("enforcement.notify_at", f"not a fraction: {item!r}")
        level = Decimal(str(item))
        if not Decimal(0) < level <= Decimal(10):
            raise OptionError("enforcement.notify_at", f"{item} is not a fraction above 0")
        levels.append(level)
    result = EnforcementSettings(
        dry_run=opts.boolean("dry_run", default=False),
        stale_after=opts.duration("stale_after", "36h"),
        notify_at=tuple(sorted(set(levels))),
        notify_interval=_positive_duration(opts, "enforcement", "notify_interval", "7d"),
        templates=_templates_dir(opts, base_dir),
        notify_admins=tuple(
            _mail_address("enforcement.notify_admins", text)
            for text in opts.string_list("notify_admins")
        ),
    )
    opts.finish()
    return result


def _templates_dir(opts: Options, base_dir: Path) -> Path | None:
    text = opts.optional_string("templates")
    if text is None:
        return None
    path = resolve_path(text, base_dir)
    if not path.is_dir():
        raise OptionError("enforcement.templates", f"not a directory: {path}")
    return path


def _positive_duration(opts: Options, table: str, key: str, default: str) -> int:
    seconds = opts.duration(key, default)
    if seconds <= 0:
        raise OptionError(f"{table}.{key}", "must be longer than 0 seconds")
    return seconds


def _mail_address(key: str, text: str) -> str:
    """TEXT when it is one address, bare or with a name ("Quota <quota@example.org>")."""
    text = text.strip()
    found = getaddresses([text])
    address = found[0][1] if len(found) == 1 else ""
    local, _, domain = address.rpartition("@")
    # The parser drops what it cannot read ("not an address" comes back as "not"),
    # so the address must be all of TEXT or its <...> part.
    whole = text == address or text.endswith(f"<{address}>")
    if not (whole and local and domain) or any(c.isspace() for c in address) or "\n" in text:
        raise OptionError(key, f"not a mail address: {text!r}")
    return text


def _smtp(opts: Options, base_dir: Path) -> SmtpSettings:
    host = opts.string("host", "127.0.0.1")
    starttls = opts.boolean("starttls", default=False)
    username = opts.optional_string("username")
    password_text = opts.optional_string("password_file")
    if username is None and password_text is not None:
        raise OptionError("smtp.password_file", "needs smtp.username as well")
    if username is not None and password_text is None:
        raise OptionError("smtp.username", "needs smtp.password_file as well")
    if username is not None and not starttls and not _is_loopback(host):
        raise OptionError(
            "smtp.username",
            f"would send the password unencrypted to {host}; set smtp.starttls = true",
        )
    result = SmtpSettings(
        host=host,
        port=opts.integer("port", 25, minimum=1, maximum=65535),
        sender=_mail_address("smtp.sender", opts.string("sender", "quota@localhost")),
        starttls=starttls,
        username=username,
        password_file=None if password_text is None else resolve_path(password_text, base_dir),
        timeout=_positive_duration(opts, "smtp", "timeout", "30s"),
    )
    opts.finish()
    return result


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _billing(opts: Options) -> BillingSettings:
    currency = opts.string("currency", "USD")
    if not CURRENCY_RE.fullmatch(currency):
        raise OptionError("billing.currency", f"not an ISO 4217 code: {currency!r}")
    base = RatePlan(
        None,
        opts.size("free", "0"),
        _price(opts, "price_per_gib_month", "0", currency),
        _kind_prices(opts, currency, {}),
    )
    changes: list[RatePlan] = []
    plans = opts.raw("plans", [])
    if not isinstance(plans, list):
        raise OptionError("billing.plans", "must be an array of tables ([[billing.plans]])")
    for index, table in enumerate(plans):
        if not isinstance(table, dict):
            raise OptionError(f"billing.plans[{index}]", "must be a table")
        plan_opts = Options(table, f"billing.plans[{index}].")
        starts_at = _plan_start(plan_opts)
        before = changes[-1] if changes else base
        if before.starts_at is not None and starts_at <= before.starts_at:
            raise OptionError(
                f"billing.plans[{index}].from", "must be later than the plan before it"
            )
        # A key left out keeps its value from the plan before: a plan that
        # only changes the price says only that.
        changes.append(
            RatePlan(
                starts_at,
                plan_opts.size("free", before.free_bytes),
                _price(plan_opts, "price_per_gib_month", str(before.price_per_gib_month), currency),
                _kind_prices(plan_opts, currency, before.prices),
            )
        )
        plan_opts.finish()
    finalize_after = _finalize_after(opts)
    opts.finish()
    return BillingSettings(
        currency=currency,
        free_bytes=base.free_bytes,
        price_per_gib_month=base.price_per_gib_month,
        prices=base.prices,
        changes=tuple(changes),
        finalize_after=finalize_after,
    )


def _finalize_after(opts: Options) -> int | None:
    if not opts.has("finalize_after"):
        return None
    return opts.duration("finalize_after")


def _scheduler(opts: Options) -> SchedulerSettings:
    defaults = SchedulerSettings()
    result = SchedulerSettings(
        enabled=opts.boolean("enabled", default=True),
        enforce=_job_schedule(opts, "enforce", defaults.enforce),
        billing=_job_schedule(opts, "billing", defaults.billing),
        full_rescan=_job_schedule(opts, "full_rescan", defaults.full_rescan),
        retention=_job_schedule(opts, "retention", defaults.retention),
        misfire_grace=_positive_duration(opts, "scheduler", "misfire_grace", "15m"),
    )
    opts.finish()
    return result


def _job_schedule(opts: Options, key: str, default: str | None) -> str | None:
    """A job's cron expression; `false` turns the job off."""
    value = opts.raw(key, default)
    if value is False or value is None:
        return None
    if not isinstance(value, str):
        raise OptionError(f"{opts.prefix}{key}", "must be a cron expression or false")
    problem = source_registry.check_schedule(value)
    if problem:
        raise OptionError(f"{opts.prefix}{key}", problem)
    return value


def _retention(opts: Options) -> RetentionSettings:
    raw_samples: int | None = None
    value = opts.raw("raw_samples", "400d")
    if value is not False:
        raw_samples = _positive_duration(opts, "retention", "raw_samples", "400d")
        if raw_samples < 2 * 86400:
            raise OptionError("retention.raw_samples", "must be at least 2d (or false: keep all)")
    result = RetentionSettings(
        raw_samples=raw_samples,
        job_runs=_positive_duration(opts, "retention", "job_runs", "90d"),
    )
    opts.finish()
    return result


LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _logging(opts: Options) -> LoggingSettings:
    fmt = opts.string("format", "text")
    if fmt not in LOG_FORMATS:
        raise OptionError("logging.format", f"use {' or '.join(LOG_FORMATS)}, not {fmt!r}")
    level = opts.string("level", "INFO").upper()
    if level not in LOG_LEVELS:
        raise OptionError("logging.level", f"use one of {', '.join(LOG_LEVELS)}")
    result = LoggingSettings(format=fmt, level=level)
    opts.finish()
    return result


def _price(opts: Options, key: str, default: str, currency: str) -> Decimal:
    price = opts.decimal(key, default)
    if price < 0:
        raise OptionError(f"{opts.prefix}{key}", "must not be negative")
    if price > MAX_PRICE:
        raise OptionError(f"{opts.prefix}{key}", f"must be at most {MAX_PRICE} {currency}")
    return price


def _kind_prices(
    opts: Options, currency: str, inherited: Mapping[str, Decimal]
) -> Mapping[str, Decimal]:
    if not opts.has("prices"):
        return inherited
    table = Options(opts.table("prices"), f"{opts.prefix}prices.")
    prices: dict[str, Decimal] = {}
    known = ", ".join(sorted(source_registry.RESOURCE_KINDS))
    for kind in table.keys():  # noqa: SIM118 - Options is not a dict
        if kind not in source_registry.RESOURCE_KINDS:
            raise OptionError(
                f"{opts.prefix}prices.{kind}", f"unknown resource kind (use one of {known})"
            )
        prices[kind] = _price(table, kind, "0", currency)
    table.finish()
    return prices


def _plan_start(opts: Options) -> dt.datetime:
    key = f"{opts.prefix}from"
    value = opts.raw("from")
    if value is None:
        raise OptionError(key, 'is required (a date such as 2027-01-01, or "2027-01-01T00:00:00Z")')
    # TOML has dates and times of its own; a string is read as RFC 3339.
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise OptionError(key, "needs a time zone (end it with Z for UTC)")
        return value.astimezone(dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime.combine(value, dt.time(), dt.UTC)
    if isinstance(value, str):
        try:
            return parse_time(value)
        except ValueError as exc:
            raise OptionError(key, str(exc)) from None
    raise OptionError(key, f"must be a date or a time, got {type(value).__name__}")


def _sources(tables: object, base_dir: Path) -> tuple[SourceSettings, ...]:
    if not isinstance(tables, list):
        raise OptionError("sources", "must be an array of tables ([[sources]])")
    result: list[SourceSettings] = []
    for index, table in enumerate(tables):
        source = _source(index, table, base_dir)
        if any(s.name == source.name for s in result):
            raise OptionError(f"sources[{source.name}].name", "is used by another source")
        result.append(source)
    return tuple(result)


def _source(index: int, table: object, base_dir: Path) -> SourceSettings:
    if not isinstance(table, Mapping):
        raise OptionError(f"sources[{index}]", "must be a table")
    label = f"sources[{index}]"
    given = table.get("name")
    if isinstance(given, str) and given:
        label = f"sources[{given}]"
    opts = Options(table, f"{label}.")
    name = opts.string("name", required=True)
    if not SOURCE_NAME_RE.fullmatch(name):
        raise OptionError(f"{label}.name", "use letters, digits, '.', '_' and '-' only")
    kind = opts.string("kind", required=True)
    scanner_class = source_registry.SCANNERS.get(kind)
    if scanner_class is None:
        raise OptionError(
            f"{label}.kind",
            f"unknown kind {kind!r} (known: {', '.join(sorted(source_registry.SCANNERS))})",
        )
    schedule = opts.optional_string("schedule")
    if schedule is not None:
        problem = source_registry.check_schedule(schedule)
        if problem:
            raise OptionError(f"{label}.schedule", problem)
    enforcer_class = ENFORCERS.get(kind)
    asked = opts.has("enforce")
    enforce = opts.boolean("enforce", default=True)
    enforcer_keys = enforcer_class.OPTIONS if enforcer_class else frozenset()
    rest = {
        k: v
        for k, v in table.items()
        if k not in ("name", "kind", "schedule", "enforce") and k not in enforcer_keys
    }
    try:
        scanner = scanner_class.from_options(name, rest, base_dir)
    except OptionError as exc:
        raise OptionError(f"{label}.{exc.key}", exc.problem) from None
    enforcer = None
    if enforce:
        enforcer = _enforcer(label, kind, scanner, table, base_dir, asked=asked)
    return SourceSettings(
        name=name,
        kind=kind,
        schedule=schedule,
        enforce=enforcer is not None,
        scanner=scanner,
        enforcer=enforcer,
    )


def _enforcer(
    label: str,
    kind: str,
    scanner: Scanner,
    table: Mapping[str, object],
    base_dir: Path,
    *,
    asked: bool,
) -> Enforcer | None:
    """The source's enforcer; None where there is none and the config did not ask for one.

    Enforcing is on by default wherever it is possible; a source whose
    settings rule it out (a Mailman source without its REST API) is then
    only watched, unless `enforce = true` asks for it, which is an error.
    """
    enforcer_class = ENFORCERS.get(kind)
    if enforcer_class is None:
        why_not: str | None = (
            f"sources of kind {kind!r} have no enforcer (their members are warned by mail)"
        )
    else:
        missing = sorted(enforcer_class.REQUIRED - table.keys())
        why_not = f"it needs {missing[0]}" if missing else enforcer_class.available(scanner)
    if why_not is not None or enforcer_class is None:
        if asked:
            raise OptionError(f"{label}.enforce", f"cannot be true: {why_not}")
        return None
    own = {k: v for k, v in table.items() if k in enforcer_class.OPTIONS}
    try:
        return enforcer_class.from_options(scanner, own, base_dir)
    except OptionError as exc:
        raise OptionError(f"{label}.{exc.key}", exc.problem) from None
