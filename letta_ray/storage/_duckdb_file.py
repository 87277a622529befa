"""One DuckDB file: its connection, the lock around it, transactions, shared lookups.

``MetadataStore`` and ``MessageStore`` are two adapters over one file (a turn writes an
agent, its blocks and its messages in one transaction), so they share this object.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from letta_ray.errors import ConflictError, NotFoundError, StorageError
from letta_ray.schemas import Cursor, Order
from letta_ray.storage._duckdb_layout import (
    _DATA_TABLES,
    _M,
    _STORE_META,
    _check_limit,
    _check_order,
    _limit,
    _sql_str,
    _where,
    fts_extension_path,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

class DuckDBFile:
    """The connection to one DuckDB file, used under one lock.

    DuckDB connections are not meant to be shared between threads, and one owner process
    serialises writes anyway. ``tx()`` joins a transaction already open on this thread's
    behalf, so the adapters' writes compose inside ``transaction()``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self.depth = 0  # nesting of tx(); > 0 inside a transaction
        try:
            self._conn: duckdb.DuckDBPyConnection | None = duckdb.connect(self.path)
        except duckdb.Error as exc:  # e.g. another process holds the file
            raise StorageError(f"cannot open {self.path}: {exc}") from exc
        try:
            self._conn.execute("SET TimeZone = 'UTC'")
            # Checkpoint when the WAL reaches 256 MB, not DuckDB's 16 MB: the agents table is
            # rewritten by every turn, and fewer checkpoints rewrite its row groups less often
            # (bench/store_ceiling.py: +14 % turns/s applied). The price is a longer WAL replay
            # after a crash (seconds).
            self._conn.execute("SET checkpoint_threshold = '256MB'")
            # LOAD by path, not INSTALL: installing copies the file into ~/.duckdb, which
            # may be read-only on a cluster node.
            self._conn.execute(f"LOAD '{_sql_str(fts_extension_path())}'")
            for table in (*_DATA_TABLES, _STORE_META):
                self._conn.execute(table.ddl())
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @contextmanager
    def locked(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The connection, held for the block; DuckDB's errors come out as ours."""
        with self._lock:
            if self._conn is None:
                raise StorageError(f"metadata store {self.path} is closed")
            try:
                yield self._conn
            except duckdb.ConstraintException as exc:
                raise ConflictError(str(exc)) from exc
            except duckdb.Error as exc:
                raise StorageError(str(exc)) from exc

    @contextmanager
    def tx(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A transaction: committed at the end of the outermost block, rolled back on error."""
        with self.locked() as conn:
            if self.depth:  # already inside a transaction: join it
                self.depth += 1
                try:
                    yield conn
                finally:
                    self.depth -= 1
                return
            conn.execute("BEGIN TRANSACTION")
            self.depth = 1
            try:
                yield conn
            except BaseException:
                self.depth = 0
                with suppress(duckdb.Error):  # keep the original error, not a failed rollback's
                    conn.execute("ROLLBACK")
                raise
            self.depth = 0
            conn.execute("COMMIT")

    # ------------------------------------------------------------------ lookups both adapters use

    def get_meta(self, key: str) -> str | None:
        """A value of the store's own bookkeeping (e.g. how far a journal was applied)."""
        with self.locked() as conn:
            row = conn.execute("SELECT value FROM store_meta WHERE key = ?", [key]).fetchone()
            return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self.tx() as conn:
            conn.execute(_STORE_META.upsert_sql(), [key, value])

    def page_docs(self, table: str, kind: str, clauses: list[str], params: list[Any], *, after: Cursor | None,
                  before: Cursor | None, limit: int | None, order: Order, column: str = "created_at") -> list[str]:
        """The JSON docs of ``table`` matching ``clauses``, by (``column``, id) in ``order``,
        later than the row ``after`` and earlier than the row ``before`` (ids, in that order
        whatever ``order`` is), at most ``limit``."""
        _check_limit(limit)
        direction = _check_order(order)
        with self.locked() as conn:
            for cursor, op in ((after, ">"), (before, "<")):
                if cursor is not None:
                    self.add_cursor(conn, clauses, params, table, kind, (column, "id"), cursor, op)
            rows = conn.execute(f"SELECT doc FROM {table} {_where(clauses)} "
                                f"ORDER BY {column} {direction}, id {direction} {_limit(limit)}", params).fetchall()
        return [row[0] for row in rows]

    def cursor_key(self, table: str, order: tuple[str, str], key: str, *, timestamp: bool = True
                   ) -> tuple[Any, Any] | None:
        """The values of the ``order`` columns of the row with id ``key`` (None if absent);
        ``timestamp``: the first is a TIMESTAMPTZ (read as microseconds: DuckDB's own
        conversion to Python needs pytz)."""
        column = f"epoch_us({order[0]})" if timestamp else order[0]
        with self.locked() as conn:
            row = conn.execute(f"SELECT {column}, {order[1]} FROM {table} WHERE id = ?", [key]).fetchone()
        if row is None:
            return None
        first = from_epoch_us(row[0]) if timestamp else row[0]
        return first, row[1]

    @staticmethod
    def require(conn: duckdb.DuckDBPyConnection, table: str, kind: str, key: str) -> None:
        """NotFoundError unless ``table`` has a row with id ``key``."""
        if conn.execute(f"SELECT 1 FROM {table} WHERE id = ?", [key]).fetchone() is None:
            raise NotFoundError(kind, key)

    def get_doc(self, model: type[_M], table: str, kind: str, column: str, key: str) -> _M:
        """The model stored as the JSON doc of the row whose ``column`` is ``key``."""
        with self.locked() as conn:
            row = conn.execute(f"SELECT doc FROM {table} WHERE {column} = ?", [key]).fetchone()
        if row is None:
            raise NotFoundError(kind, key)
        return model.model_validate_json(row[0])

    def add_cursor(self, conn: duckdb.DuckDBPyConnection, clauses: list[str], params: list[Any], table: str,
                   kind: str, order: tuple[str, str], cursor: Cursor, op: str) -> None:
        """Keep rows strictly ``op`` the cursor row in ``order`` (a column and a tiebreak).

        ``cursor`` is a row's id, or the values of its ``order`` columns (a row of another
        store: the shards of a sharded store page one list together, see ``cursor_key``)."""
        column, tiebreak = order
        if isinstance(cursor, (tuple, list)):
            clauses.append(f"({column} {op} ? OR ({column} = ? AND {tiebreak} {op} ?))")
            params.extend([cursor[0], cursor[0], cursor[1]])
            return
        self.require(conn, table, kind, cursor)
        value = f"(SELECT {{}} FROM {table} WHERE id = ?)"
        clauses.append(
            f"({column} {op} {value.format(column)} OR "
            f"({column} = {value.format(column)} AND {tiebreak} {op} {value.format(tiebreak)}))"
        )
        params.extend([cursor] * 3)


def from_epoch_us(epoch_us: int) -> datetime:
    """A DuckDB ``epoch_us(<TIMESTAMPTZ>)`` as an aware UTC datetime (reading the TIMESTAMPTZ
    itself needs pytz)."""
    return _EPOCH + timedelta(microseconds=epoch_us)
