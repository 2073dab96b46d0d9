"""Running the ledger's Alembic migrations from quotad itself."""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from quotad.db import utcnow
from quotad.errors import QuotadError
from quotad.retention.repository import PartitionRepository


class LedgerNotReady(QuotadError):
    """The ledger is missing or behind the code's migrations."""

    code = "ledger_not_ready"


def alembic_config(database_url: str | None = None) -> Config:
    """An Alembic config pointing at the installed migrations."""
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("migrations")))
    if database_url is not None:
        # Alembic's config is ConfigParser-based: a literal % must be doubled.
        cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    cfg.set_main_option("file_template", "%%(year)d%%(month).2d%%(day).2d_%%(rev)s_%%(slug)s")
    return cfg


def upgrade_engine(engine: Engine, revision: str = "head") -> None:
    cfg = alembic_config()
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)
        # usage_samples' monthly partitions (PostgreSQL), kept ahead of time
        # here as well as by the retention job; in the same transaction.
        with Session(bind=connection) as session:
            PartitionRepository(session).ensure_partitions(utcnow())


def check_engine(engine: Engine) -> None:
    """Raise if the models and the migrations have drifted apart."""
    cfg = alembic_config()
    with engine.connect() as connection:
        cfg.attributes["connection"] = connection
        command.check(cfg)


def require_current(engine: Engine) -> None:
    """Fail clearly when the ledger has not been created or migrated yet."""
    heads = set(ScriptDirectory.from_config(alembic_config()).get_heads())
    with engine.connect() as connection:
        current = set(MigrationContext.configure(connection).get_current_heads())
    if current != heads:
        where = engine.url.render_as_string(hide_password=True)
        state = "is not initialised" if not current else "needs migrating"
        raise LedgerNotReady(f"the ledger at {where} {state}: run `quotad db upgrade`")
