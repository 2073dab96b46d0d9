"""Alembic environment: the ledger's models are the target; the URL comes from quotad."""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Literal

from alembic import context
from sqlalchemy import Connection

from quotad.db import make_engine
from quotad.models import metadata

config = context.config

# usage_samples' monthly and DEFAULT partitions on PostgreSQL (migration
# 7e3b1d5a9c42): the database's, not the models'. The parent table and its
# partitioned indexes are compared as usual; Alembic does not compare primary
# keys, so the parent's (id, measured_at) against the model's (id) is no drift.
_PARTITION = re.compile(r"usage_samples_(y\d{4}m\d{2}|default)")


def _include_name(
    name: str | None,
    type_: Literal[
        "schema",
        "table",
        "column",
        "index",
        "unique_constraint",
        "foreign_key_constraint",
        "check_constraint",
    ],
    _parent_names: MutableMapping[
        Literal["schema_name", "table_name", "schema_qualified_table_name"], str | None
    ],
) -> bool:
    return not (type_ == "table" and name is not None and _PARTITION.fullmatch(name))


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_name=_include_name,
    )


def run_migrations_online() -> None:
    given = config.attributes.get("connection")
    if isinstance(given, Connection):
        _configure(given)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    try:
        with engine.connect() as connection:
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("quotad's migrations run online only: use `quotad db upgrade`")
run_migrations_online()
