"""Shared fixtures: a migrated ledger on SQLite and on the real PostgreSQL.

Every ledger test runs on both engines. PostgreSQL gets a fresh database per
test run (dropped afterwards); with CI=true an unreachable server fails the
run instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, text

from quotad import migrate
from quotad.config import Settings, parse_settings
from quotad.db import make_engine
from quotad.models import metadata

IN_CI = os.environ.get("CI") == "true"
PG_ADMIN_DSN = os.environ.get("PG_TEST_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test")


def need(component: str, how: str) -> None:
    """A missing real component fails under CI and skips, saying how to get it, elsewhere."""
    message = f"{component} is not available: {how}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class Ledger:
    """A migrated, empty ledger and the settings pointing at it."""

    backend: str
    url: str
    engine: Engine
    base_dir: Path

    def settings(self, extra: str = "") -> Settings:
        """Settings for this ledger from TOML text (sources, quotas, ...)."""
        raw = tomllib.loads(extra)
        raw["database_url"] = self.url
        return parse_settings(raw, file_label="<test>", base_dir=self.base_dir)

    def config_file(self, extra: str = "") -> Path:
        """A quotad.toml for this ledger, for tests that run the CLI."""
        path = self.base_dir / f"quotad-{uuid.uuid4().hex[:8]}.toml"
        url = self.url.replace("\\", "\\\\").replace('"', '\\"')
        path.write_text(f'database_url = "{url}"\n{extra}', encoding="utf-8")
        return path


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ledger-template") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate.upgrade_engine(engine)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this run, dropped at the end."""
    name = f"quotad_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        admin = psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        need(
            "PostgreSQL at 127.0.0.1:5432",
            f"start it (pg_ctlcluster 15 main start) or set PG_TEST_DSN ({exc})",
        )
        raise AssertionError("unreachable") from exc
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        engine = make_engine(url)
        migrate.upgrade_engine(engine)
        engine.dispose()
        try:
            yield url
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _truncate_pg(engine: Engine) -> None:
    tables = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    backend: str = request.param
    if backend == "sqlite":
        path = tmp_path / "ledger.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        url = f"sqlite:///{path}"
        engine = make_engine(url)
    else:
        url = request.getfixturevalue("pg_database")
        engine = make_engine(url)
        _truncate_pg(engine)
    try:
        yield Ledger(backend, url, engine, tmp_path)
    finally:
        engine.dispose()
