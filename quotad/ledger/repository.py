"""SQL for the ledger."""

from __future__ import annotations

import datetime as dt
import operator
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Row,
    Table,
    and_,
    case,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from quotad.db import table_of
from quotad.ledger.models import (
    CurrentUsage,
    MeasurementFailure,
    Resource,
    Scan,
    Source,
    UsageSample,
)

# Rows per statement for bulk writes: keeps each statement's parameters far
# below SQLite's and PostgreSQL's limits while amortising round trips.
CHUNK = 2000


@dataclass(frozen=True, slots=True)
class CurrentRow:
    """A resource's current usage with the names a reader needs."""

    resource_id: int
    source: str
    kind: str
    name: str
    member_id: int | None
    bytes: int
    files: int
    measured_at: dt.datetime | None
    present: bool
    detail: dict[str, Any] | None
    error: str | None
    error_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class SamplePoint:
    resource_id: int
    member_id: int | None
    measured_at: dt.datetime
    bytes: int
    kind: str


# Bulk writes go to the tables, not the mapped classes: the ORM's bulk path
# costs more per row than the database does (measured: 20,000 samples and
# their current rows, 1.1 s through the ORM against 0.6 s as Core). On
# PostgreSQL they go further, to COPY: psycopg's executemany still sends one
# statement per row (measured: 100,000 samples, 13 s as executemany against
# 0.4 s as COPY).
_RESOURCES = table_of(Resource)
_SAMPLES = table_of(UsageSample)
_FAILURES = table_of(MeasurementFailure)
_CURRENT = table_of(CurrentUsage)


def _chunks(rows: Sequence[dict[str, Any]]) -> Iterable[Sequence[dict[str, Any]]]:
    for start in range(0, len(rows), CHUNK):
        yield rows[start : start + CHUNK]


def _remembering(process: Callable[[Any], Any] | None) -> Callable[[Any], Any] | None:
    """PROCESS, answering again from memory for a value it has seen before.

    A scan's rows share their scan, their time and mostly an empty detail;
    converting those once instead of once per row keeps COPY fed. Keyed by
    type too, so that equal values of different types (1 and True) stay apart.
    """
    if process is None:
        return None
    seen: dict[tuple[type, Any], Any] = {}

    def remembered(value: Any) -> Any:
        try:
            key = (type(value), value)
            if key not in seen:
                seen[key] = process(value)
            return seen[key]
        except TypeError:  # unhashable: a detail that is a dict
            return process(value)

    return remembered


class LedgerRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    @property
    def _dialect(self) -> str:
        return self.session.get_bind().dialect.name

    def _copy(self, table: Table, rows: Sequence[dict[str, Any]]) -> None:
        """Insert ROWS (all with the same keys) with COPY, in the session's transaction.

        Each value goes through its column type's own bind processing, as an
        INSERT through SQLAlchemy would, so the rows stored are the same.
        """
        if not rows:
            return
        connection = self.session.connection()
        dialect = connection.dialect
        names = list(rows[0])
        processors = [
            _remembering(process)
            for process in (
                table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names
            )
        ]
        preparer = dialect.identifier_preparer
        columns = ", ".join(preparer.quote(name) for name in names)
        statement = f"COPY {preparer.format_table(table)} ({columns}) FROM STDIN"
        driver = connection.connection.driver_connection
        if driver is None:  # pragma: no cover - a checked-out connection always has one
            raise RuntimeError("the session's connection has no driver connection")
        get = operator.itemgetter(*names)

        def values_of(row: dict[str, Any]) -> Any:
            # itemgetter gives a tuple for several names, the value itself for one.
            return get(row) if len(names) > 1 else (get(row),)

        converted = [(i, process) for i, process in enumerate(processors) if process is not None]
        with driver.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                values = values_of(row)
                if converted:
                    values = list(values)
                    for i, process in converted:
                        values[i] = process(values[i])
                copy.write_row(values)

    # Sources and scans

    def get_source(self, name: str) -> Source | None:
        return self.session.scalars(select(Source).where(Source.name == name)).one_or_none()

    def add_source(self, name: str, kind: str, now: dt.datetime) -> Source:
        source = Source(name=name, kind=kind, created_at=now)
        self.session.add(source)
        self.session.flush()
        return source

    def get_scan(self, scan_id: uuid.UUID) -> Scan | None:
        return self.session.get(Scan, scan_id)

    def add_scan(self, scan: Scan) -> None:
        self.session.add(scan)
        self.session.flush()

    def last_scans(self) -> Sequence[Row[tuple[str, str, Scan]]]:
        """Each source's newest scan, with its name and kind."""
        newest = (
            select(Scan.source_id, func.max(Scan.finished_at).label("at"))
            .group_by(Scan.source_id)
            .subquery()
        )
        query = (
            select(Source.name, Source.kind, Scan)
            .join(Scan, Scan.source_id == Source.id)
            .join(
                newest, and_(newest.c.source_id == Scan.source_id, newest.c.at == Scan.finished_at)
            )
            .order_by(Source.name)
        )
        return self.session.execute(query).all()

    # Resources

    def resource_ids(self, source_id: int) -> dict[tuple[str, str], int]:
        rows = self.session.execute(
            select(Resource.id, Resource.kind, Resource.name).where(Resource.source_id == source_id)
        )
        return {(kind, name): id_ for id_, kind, name in rows}

    def create_resources(
        self, source_id: int, keys: Sequence[tuple[str, str]], now: dt.datetime
    ) -> dict[tuple[str, str], int]:
        if self._dialect == "postgresql" and keys:
            # COPY returns nothing, so the ids are taken from the sequence first.
            ids = self.session.scalars(
                # The sequence looked up once (an InitPlan), not once per row.
                text(
                    "SELECT nextval((SELECT pg_get_serial_sequence('resources', 'id'))::regclass) "
                    "FROM generate_series(1, :n)"
                ),
                {"n": len(keys)},
            ).all()
            rows = [
                {"id": id_, "source_id": source_id, "kind": k, "name": n, "created_at": now}
                for id_, (k, n) in zip(ids, keys, strict=True)
            ]
            self._copy(_RESOURCES, rows)
            return {(row["kind"], row["name"]): row["id"] for row in rows}
        created: dict[tuple[str, str], int] = {}
        rows = [{"source_id": source_id, "kind": k, "name": n, "created_at": now} for k, n in keys]
        for chunk in _chunks(rows):
            result = self.session.execute(
                insert(_RESOURCES).returning(_RESOURCES.c.id, _RESOURCES.c.kind, _RESOURCES.c.name),
                chunk,
            )
            created.update({(kind, name): id_ for id_, kind, name in result})
        return created

    # Samples and failures: only ever inserted.

    def insert_samples(self, rows: Sequence[dict[str, Any]]) -> None:
        self._insert(_SAMPLES, rows)

    def insert_failures(self, rows: Sequence[dict[str, Any]]) -> None:
        self._insert(_FAILURES, rows)

    def _insert(self, table: Table, rows: Sequence[dict[str, Any]]) -> None:
        if self._dialect == "postgresql":
            self._copy(table, rows)
            return
        for chunk in _chunks(rows):
            self.session.execute(insert(table), chunk)

    def zeroed_by(self, scan_id: uuid.UUID) -> int:
        """How many resources SCAN_ID found gone (its zero samples)."""
        return (
            self.session.scalar(
                select(func.count())
                .select_from(UsageSample)
                .where(UsageSample.scan_id == scan_id, UsageSample.present.is_(False))
            )
            or 0
        )

    # Current usage (derived)

    def present_in_source(self, source_id: int, at: dt.datetime) -> Sequence[int]:
        """Resources of the source shown present, measured at AT or before (or never)."""
        return self.session.scalars(
            select(CurrentUsage.resource_id)
            .where(
                CurrentUsage.source_id == source_id,
                CurrentUsage.present,
                or_(CurrentUsage.measured_at.is_(None), CurrentUsage.measured_at <= at),
            )
            # In order, so that the zeros are written alike on every ledger.
            .order_by(CurrentUsage.resource_id)
        ).all()

    def _upsert(self) -> Any:
        return (postgresql.insert if self._dialect == "postgresql" else sqlite.insert)(_CURRENT)

    def _samples_upsert(self, stmt: Any) -> Any:
        """STMT (an insert into current_usage) made to keep only the newest sample per resource.

        An error stays shown only if it is newer than the sample, so a scan
        that lands out of order never hides a later failure.
        """
        cur = _CURRENT.c
        new = stmt.excluded
        return stmt.on_conflict_do_update(
            index_elements=[cur.resource_id],
            set_={
                "member_id": new.member_id,
                "measured_at": new.measured_at,
                "bytes": new.bytes,
                "files": new.files,
                "present": new.present,
                "detail": new.detail,
                "error": case((cur.error_at > new.measured_at, cur.error), else_=None),
                "error_at": case((cur.error_at > new.measured_at, cur.error_at), else_=None),
            },
            where=or_(cur.measured_at.is_(None), cur.measured_at <= new.measured_at),
        )

    def apply_samples_to_current(self, rows: Sequence[dict[str, Any]]) -> None:
        """Make each sample (with its source_id) current unless a newer one already is."""
        stmt = self._samples_upsert(self._upsert())
        for chunk in _chunks(rows):
            self.session.execute(stmt, [{**r, "error": None, "error_at": None} for r in chunk])

    def apply_scan_to_current(
        self, scan_id: uuid.UUID, source_id: int, rows: Sequence[dict[str, Any]]
    ) -> None:
        """Make the samples of SCAN_ID (ROWS, already inserted) current, as above.

        PostgreSQL takes them from usage_samples in one statement rather
        than receiving them a second time.
        """
        if self._dialect != "postgresql":
            self.apply_samples_to_current([{**row, "source_id": source_id} for row in rows])
            return
        columns = ["resource_id", "member_id", "measured_at", "bytes", "files", "present"]
        samples = _SAMPLES.c
        query = select(
            samples.resource_id,
            samples.member_id,
            samples.measured_at,
            samples.bytes,
            samples.files,
            samples.present,
            samples.detail,
            literal(source_id, _CURRENT.c.source_id.type),
        ).where(samples.scan_id == scan_id)
        stmt = self._upsert().from_select([*columns, "detail", "source_id"], query)
        self.session.execute(self._samples_upsert(stmt))

    def apply_failures_to_current(self, rows: Sequence[dict[str, Any]]) -> None:
        """Show each failure unless the resource has been measured since; keep the value."""
        stmt = self._upsert()
        cur = CurrentUsage.__table__.c
        new = stmt.excluded
        stmt = stmt.on_conflict_do_update(
            index_elements=[cur.resource_id],
            set_={"error": new.error, "error_at": new.error_at},
            # A failure in the same second as the last value is newer: scans
            # are recorded in the order they finish.
            where=and_(
                or_(cur.measured_at.is_(None), cur.measured_at <= new.error_at),
                or_(cur.error_at.is_(None), cur.error_at <= new.error_at),
            ),
        )
        for chunk in _chunks(rows):
            self.session.execute(stmt, chunk)

    def clear_current(self) -> None:
        self.session.execute(delete(CurrentUsage))

    def latest_samples(self) -> Sequence[Row[tuple[UsageSample, int, dt.datetime]]]:
        """The newest sample of every resource, with its source and when it was recorded.

        Ties (two scans in one second) go to the one inserted last.
        """
        ranked = select(
            UsageSample.id,
            func.row_number()
            .over(
                partition_by=UsageSample.resource_id,
                order_by=(UsageSample.measured_at.desc(), UsageSample.id.desc()),
            )
            .label("rank"),
        ).subquery()
        query = (
            select(UsageSample, Resource.source_id, Scan.recorded_at)
            .join(ranked, and_(ranked.c.id == UsageSample.id, ranked.c.rank == 1))
            .join(Resource, Resource.id == UsageSample.resource_id)
            .join(Scan, Scan.id == UsageSample.scan_id)
        )
        return self.session.execute(query).all()

    def latest_failures(self) -> Sequence[Row[tuple[MeasurementFailure, int, dt.datetime]]]:
        """The newest failure of every resource, with its source and when it was recorded."""
        ranked = select(
            MeasurementFailure.id,
            func.row_number()
            .over(
                partition_by=MeasurementFailure.resource_id,
                order_by=(MeasurementFailure.failed_at.desc(), MeasurementFailure.id.desc()),
            )
            .label("rank"),
        ).subquery()
        query = (
            select(MeasurementFailure, Resource.source_id, Scan.recorded_at)
            .join(ranked, and_(ranked.c.id == MeasurementFailure.id, ranked.c.rank == 1))
            .join(Resource, Resource.id == MeasurementFailure.resource_id)
            .join(Scan, Scan.id == MeasurementFailure.scan_id)
        )
        return self.session.execute(query).all()

    def current_rows(
        self, member_id: int | None = None, *, unattributed: bool = False
    ) -> list[CurrentRow]:
        """Current usage of one member, of the unattributed resources, or of everyone."""
        # Columns, not the mapped class: a member's usage is read on every
        # request, and loading ORM instances costs more than the query.
        query = (
            select(
                CurrentUsage.resource_id,
                Source.name,
                Resource.kind,
                Resource.name,
                CurrentUsage.member_id,
                CurrentUsage.bytes,
                CurrentUsage.files,
                CurrentUsage.measured_at,
                CurrentUsage.present,
                CurrentUsage.detail,
                CurrentUsage.error,
                CurrentUsage.error_at,
            )
            .join(Resource, Resource.id == CurrentUsage.resource_id)
            .join(Source, Source.id == CurrentUsage.source_id)
            .order_by(Source.name, Resource.kind, Resource.name)
        )
        if unattributed:
            query = query.where(CurrentUsage.member_id.is_(None))
        elif member_id is not None:
            query = query.where(CurrentUsage.member_id == member_id)
        return [CurrentRow(*row) for row in self.session.execute(query)]

    def charged_resources(self, member_id: int) -> Sequence[int]:
        """Every resource the member has ever been charged for.

        Asked first, on its own: inside a larger query PostgreSQL guesses
        hundreds of resources where a member has a handful, and reads the
        whole of usage_samples instead of those resources' samples.
        """
        return self.session.scalars(
            select(UsageSample.resource_id).where(UsageSample.member_id == member_id).distinct()
        ).all()

    def member_history(
        self,
        member_id: int,
        kinds: Collection[str] | None = None,
    ) -> list[SamplePoint]:
        """Every sample of every resource the member has ever been charged for, oldest first."""
        theirs = self.charged_resources(member_id)
        query = (
            select(
                UsageSample.resource_id,
                UsageSample.member_id,
                UsageSample.measured_at,
                UsageSample.bytes,
                Resource.kind,
            )
            .join(Resource, Resource.id == UsageSample.resource_id)
            .where(UsageSample.resource_id.in_(theirs))
            .order_by(UsageSample.measured_at, UsageSample.id)
        )
        if kinds is not None:
            query = query.where(Resource.kind.in_(list(kinds)))
        return [SamplePoint(r, m, at, b, k) for r, m, at, b, k in self.session.execute(query)]

    def over_since(
        self, member_id: int, limit: int, kinds: Collection[str] | None = None
    ) -> dt.datetime | None:
        """over_since() of the member's history, computed by the database in one query.

        Each sample adds the change in its resource's value for the member
        (its bytes while attributed to the member, else 0) since the
        resource's previous sample; samples of one instant form one step.
        The answer is the first step after the last one that left the total
        at or under LIMIT, if any step follows it.
        """
        theirs = self.charged_resources(member_id)
        if not theirs:
            return None
        value = case((UsageSample.member_id == member_id, UsageSample.bytes), else_=0)
        samples = select(
            UsageSample.measured_at,
            (
                value
                - func.coalesce(
                    func.lag(value).over(
                        partition_by=UsageSample.resource_id,
                        order_by=(UsageSample.measured_at, UsageSample.id),
                    ),
                    0,
                )
            ).label("delta"),
        ).where(UsageSample.resource_id.in_(theirs))
        if kinds is not None:
            samples = samples.join(Resource, Resource.id == UsageSample.resource_id).where(
                Resource.kind.in_(list(kinds))
            )
        changes = samples.subquery()
        steps = (
            select(changes.c.measured_at, func.sum(changes.c.delta).label("delta"))
            .group_by(changes.c.measured_at)
            .subquery()
        )
        totals = select(
            steps.c.measured_at,
            func.sum(steps.c.delta).over(order_by=steps.c.measured_at).label("total"),
        ).cte("totals")
        last_under = (
            select(func.max(totals.c.measured_at)).where(totals.c.total <= limit).scalar_subquery()
        )
        query = select(func.min(totals.c.measured_at)).where(
            or_(last_under.is_(None), totals.c.measured_at > last_under)
        )
        result: dt.datetime | None = self.session.scalar(query)
        return result
