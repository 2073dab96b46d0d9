"""Typed readers for raw TOML tables: human sizes, durations, paths.

Both quotad's own configuration and every scanner's source options go through
these, so a size or a duration means the same thing everywhere and every
error names its key. They live here, at the bottom of the package stack,
because scanners may not import quotad.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path

from scanners.base import OptionError

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTPE]?i?B?|)\s*$", re.IGNORECASE)
_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "B": 1,
    "K": 1000,
    "KB": 1000,
    "M": 1000**2,
    "MB": 1000**2,
    "G": 1000**3,
    "GB": 1000**3,
    "T": 1000**4,
    "TB": 1000**4,
    "P": 1000**5,
    "PB": 1000**5,
    "E": 1000**6,
    "EB": 1000**6,
    "KI": 1024,
    "KIB": 1024,
    "MI": 1024**2,
    "MIB": 1024**2,
    "GI": 1024**3,
    "GIB": 1024**3,
    "TI": 1024**4,
    "TIB": 1024**4,
    "PI": 1024**5,
    "PIB": 1024**5,
    "EI": 1024**6,
    "EIB": 1024**6,
}

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(w|d|h|m|s)", re.IGNORECASE)
_DURATION_UNITS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_size(value: object) -> int:
    """Bytes from an integer or a human size ("10GiB", "500MB", "1.5 GiB", "0").

    KB/MB/GB are powers of 1000 and KiB/MiB/GiB powers of 1024, as in IEC
    60027-2. A fractional result must land on a whole byte.
    """
    if isinstance(value, bool):
        raise ValueError('expected a size such as "10GiB", got a boolean')
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative, got {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f'expected a size such as "10GiB", got {value!r}')
    match = _SIZE_RE.match(value)
    if match is None:
        raise ValueError(f'not a size: {value!r} (try "10GiB", "500MB" or "0")')
    number, unit = match.groups()
    factor = _SIZE_UNITS.get(unit.upper())
    if factor is None:
        units = "B, KB, MB, GB, TB, KiB, MiB, GiB, TiB"
        raise ValueError(f"unknown size unit in {value!r} (use {units})")
    exact = Decimal(number) * factor
    if exact != exact.to_integral_value():
        raise ValueError(f"{value!r} is not a whole number of bytes")
    return int(exact)


def parse_duration(value: object) -> int:
    """Seconds from an integer or a human duration ("7d", "36h", "15m", "1h30m", "90s")."""
    if isinstance(value, bool):
        raise ValueError('expected a duration such as "7d", got a boolean')
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f'expected a duration such as "7d", got {value!r}')
    text = value.strip()
    if text.isdigit():
        return int(text)
    pos = 0
    total = Decimal(0)
    for match in _DURATION_RE.finditer(text):
        if text[pos : match.start()].strip():
            break
        total += Decimal(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
        pos = match.end()
    if pos == 0 or text[pos:].strip():
        raise ValueError(f'not a duration: {value!r} (try "7d", "36h", "15m" or "1h30m")')
    if total != total.to_integral_value():
        raise ValueError(f"{value!r} is not a whole number of seconds")
    return int(total)


class Options:
    """Reads one raw table, tracking which keys were used so leftovers are errors."""

    def __init__(self, table: Mapping[str, object], prefix: str = "") -> None:
        self._table = table
        self._prefix = prefix
        self._seen: set[str] = set()

    @property
    def prefix(self) -> str:
        """How a key of this table is named in errors ("billing.plans[0].")."""
        return self._prefix

    def _key(self, key: str) -> str:
        return f"{self._prefix}{key}"

    def keys(self) -> list[str]:
        return list(self._table)

    def has(self, key: str) -> bool:
        return key in self._table

    def raw(self, key: str, default: object = None) -> object:
        self._seen.add(key)
        return self._table.get(key, default)

    def _fail(self, key: str, problem: str) -> OptionError:
        return OptionError(self._key(key), problem)

    def string(self, key: str, default: str | None = None, *, required: bool = False) -> str:
        value = self.raw(key)
        if value is None:
            if required or default is None:
                raise self._fail(key, "is required")
            return default
        if not isinstance(value, str):
            raise self._fail(key, f"must be a string, got {_describe(value)}")
        return value

    def optional_string(self, key: str) -> str | None:
        value = self.raw(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self._fail(key, f"must be a string, got {_describe(value)}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise self._fail(key, f"must be true or false, got {_describe(value)}")
        return value

    def integer(
        self, key: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, f"must be an integer, got {_describe(value)}")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise self._fail(key, f"must be between {minimum} and {maximum}, got {value}")
        return value

    def size(self, key: str, default: int | str | None = None) -> int:
        value = self.raw(key, default)
        if value is None:
            raise self._fail(key, "is required")
        try:
            return parse_size(value)
        except ValueError as exc:
            raise self._fail(key, str(exc)) from None

    def optional_size(self, key: str) -> int | None:
        return self.size(key) if self.raw(key) is not None else None

    def duration(self, key: str, default: int | str | None = None) -> int:
        value = self.raw(key, default)
        if value is None:
            raise self._fail(key, "is required")
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise self._fail(key, str(exc)) from None

    def decimal(self, key: str, default: str) -> Decimal:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            got = _describe(value)
            raise self._fail(key, f'must be a decimal number such as "0.10", got {got}')
        try:
            # str() first: a TOML float's repr is what the user wrote, and
            # Decimal(float) would carry binary noise into money.
            result = Decimal(str(value).strip())
        except InvalidOperation:
            problem = f'must be a decimal number such as "0.10", got {value!r}'
            raise self._fail(key, problem) from None
        if not result.is_finite():
            raise self._fail(key, f"must be a finite number, got {value!r}")
        return result

    def string_list(self, key: str, default: Sequence[str] = ()) -> tuple[str, ...]:
        value = self.raw(key, list(default))
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._fail(key, f"must be a list of strings, got {_describe(value)}")
        return tuple(value)

    def path(self, key: str, base_dir: Path, *, required: bool = True) -> Path:
        text = self.string(key, required=required)
        return resolve_path(text, base_dir)

    def table(self, key: str) -> Mapping[str, object]:
        value = self.raw(key, {})
        if not isinstance(value, Mapping):
            raise self._fail(key, f"must be a table, got {_describe(value)}")
        return value

    def finish(self) -> None:
        """Raise for the first key nobody asked for: a typo must not pass silently."""
        for key in self._table:
            if key not in self._seen:
                raise self._fail(key, "unknown key")


def resolve_path(text: str, base_dir: Path) -> Path:
    """A path from the config, relative ones taken from the config file's folder."""
    path = Path(text).expanduser()
    return path if path.is_absolute() else base_dir / path


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    described: tuple[tuple[type, Callable[[], str]], ...] = (
        (int, lambda: f"the integer {value}"),
        (float, lambda: f"the number {value}"),
        (str, lambda: f"the string {value!r}"),
        (list, lambda: "a list"),
        (Mapping, lambda: "a table"),
    )
    for kind, text in described:
        if isinstance(value, kind):
            return text()
    return type(value).__name__
