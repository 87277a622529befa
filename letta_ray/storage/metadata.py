"""Agents, blocks, messages, tools, groups and runs in one DuckDB file.

``MetadataStore`` is a plain synchronous class; the runtime wraps it in one Ray actor
because DuckDB allows one writing process per file. Each table keeps the few typed
columns it is queried by, derived from the pydantic schema, plus the whole model as
JSON, so every model round-trips exactly and the schema stays the single source of truth.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.resources
import importlib.util
import json
import re
import sys
import threading
import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import duckdb
import pyarrow as pa
import pydantic_core
from pydantic import BaseModel

from letta_ray.errors import ConflictError, InvalidInputError, NotFoundError, StorageError
from letta_ray.messages import Message, Role
from letta_ray.schemas import AgentState, Block, Tool


class _FailPandasImportFast(importlib.abc.MetaPathFinder):
    """Makes ``import pandas`` fail at once when pandas is not installed.

    DuckDB's client tries ``import pandas`` twice per parameter value of every statement
    (to recognise pandas values) and does not remember the failure; each failed import
    stats every sys.path entry (~45 us), so a statement with ten parameters lost ~1 ms.
    A None entry in sys.modules would fail faster still, but lancedb, scikit-learn and
    pyarrow's Cython take an entry there for the module itself and break.
    """

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        # Only an import statement comes through _find_and_load_unlocked. A probe such as
        # importlib.util.find_spec (transformers, lancedb) must keep answering None, so it
        # searches as usual. Should CPython rename that function, imports search as before.
        if name == "pandas" and sys._getframe(2).f_code.co_name == "_find_and_load_unlocked":
            raise ModuleNotFoundError("No module named 'pandas'", name="pandas")
        return None


if importlib.util.find_spec("pandas") is None and not any(
    type(finder).__name__ == _FailPandasImportFast.__name__ for finder in sys.meta_path
):
    sys.meta_path.insert(0, _FailPandasImportFast())

FTS_REBUILD_THRESHOLD = 2_000
# Up to this many rows, one multi-row VALUES insert beats registering an Arrow table
# (~1.5 ms of fixed cost); past it, VALUES grows by ~0.1 ms a row and Arrow barely at all.
_VALUES_INSERT_MAX_ROWS = 8
Order = Literal["asc", "desc"]
_M = TypeVar("_M", bound=BaseModel)

# The default FTS tokenizer drops digits and every non-ASCII letter; keep both.
_FTS_IGNORE = r"[^\p{L}\p{N}]+"
_WORD = re.compile(r"\w+")

_SCALAR_TYPES: dict[Any, str] = {
    str: "VARCHAR",
    int: "BIGINT",
    float: "DOUBLE",
    bool: "BOOLEAN",
    datetime: "TIMESTAMPTZ",
}
_ARROW_TYPES: dict[str, pa.DataType] = {
    "VARCHAR": pa.string(),
    "JSON": pa.string(),
    "BIGINT": pa.int64(),
    "INTEGER": pa.int32(),
    "DOUBLE": pa.float64(),
    "BOOLEAN": pa.bool_(),
    "TIMESTAMPTZ": pa.timestamp("us", tz="UTC"),
    "VARCHAR[]": pa.list_(pa.string()),
}


def _duck_type(annotation: Any) -> str:
    """The DuckDB column type of a pydantic field annotation."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        (inner,) = [arg for arg in get_args(annotation) if arg is not type(None)]
        return _duck_type(inner)
    if origin is Literal:
        return "VARCHAR"
    if origin is list:
        return _duck_type(get_args(annotation)[0]) + "[]"
    if annotation in _SCALAR_TYPES:
        return _SCALAR_TYPES[annotation]
    raise TypeError(f"no DuckDB column type for {annotation!r}")


@dataclass(frozen=True)
class _Table:
    """A table: typed columns named after ``model`` fields, extra columns, the JSON doc."""

    name: str
    model: type[BaseModel] | None
    fields: tuple[str, ...] = ()
    extra: tuple[tuple[str, str], ...] = ()
    key: tuple[str, ...] = ("id",)
    doc_exclude: frozenset[str] = frozenset()

    @cached_property
    def columns(self) -> dict[str, str]:
        cols: dict[str, str] = {}
        if self.model is not None:
            cols = {f: _duck_type(self.model.model_fields[f].annotation) for f in self.fields}
        cols.update(self.extra)
        if self.model is not None:
            cols["doc"] = "JSON"
        return cols

    def ddl(self) -> str:
        cols = ", ".join(f"{name} {kind}" for name, kind in self.columns.items())
        return f"CREATE TABLE IF NOT EXISTS {self.name} ({cols}, PRIMARY KEY ({', '.join(self.key)}))"

    def row(self, obj: BaseModel, **extra: Any) -> list[Any]:
        values = {f: getattr(obj, f) for f in self.fields} | extra
        values["doc"] = obj.model_dump_json(exclude=set(self.doc_exclude) or None)
        return [values[c] for c in self.columns]

    def upsert_sql(self, where: str | None = None) -> str:
        cols = list(self.columns)
        sets = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in self.key)
        sql = (
            f"INSERT INTO {self.name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
            f"ON CONFLICT ({', '.join(self.key)}) DO UPDATE SET {sets}"
        )
        return f"{sql} WHERE {where}" if where else sql

    def update_sql(self, where: str | None = None) -> str:
        """Update the row with a key, from ``update_params``; it returns a row only if one matched.

        An UPDATE costs a fraction of an ``INSERT ... ON CONFLICT`` (~0.7 ms against ~3 ms).
        """
        sets = ", ".join(f"{c} = ?" for c in self.columns if c not in self.key)
        match = " AND ".join([*(f"{k} = ?" for k in self.key), *([where] if where else [])])
        return f"UPDATE {self.name} SET {sets} WHERE {match} RETURNING 1"

    def update_params(self, row: Sequence[Any]) -> list[Any]:
        """``row`` (in column order) reordered for ``update_sql``: the other columns, then the key."""
        values = dict(zip(self.columns, row, strict=True))
        return [*(v for c, v in values.items() if c not in self.key), *(values[k] for k in self.key)]

    def insert(self, conn: duckdb.DuckDBPyConnection, rows: Sequence[Sequence[Any]]) -> None:
        """Insert rows (in column order) in one statement; a key already stored is a conflict."""
        if not rows:
            return
        names = ", ".join(self.columns)
        if len(rows) <= _VALUES_INSERT_MAX_ROWS:
            one = f"({', '.join('?' * len(self.columns))})"
            conn.execute(
                f"INSERT INTO {self.name} ({names}) VALUES {', '.join([one] * len(rows))}",
                [value for row in rows for value in row],
            )
            return
        # Bulk through Arrow: executemany costs about a millisecond per row.
        table = pa.table(
            {name: pa.array(values, _ARROW_TYPES[kind])
             for (name, kind), values in zip(self.columns.items(), zip(*rows, strict=True), strict=True)}
        )
        view = f"_incoming_{self.name}"
        conn.register(view, table)
        try:
            conn.execute(f"INSERT INTO {self.name} ({names}) SELECT {names} FROM {view}")
        finally:
            conn.unregister(view)


_AGENTS = _Table(
    "agents",
    AgentState,
    ("id", "name", "agent_type", "tags", "created_at", "updated_at"),
    doc_exclude=frozenset({"blocks"}),  # blocks live in their own table so they can be shared
)
_BLOCKS = _Table("blocks", Block, ("id", "label", "updated_at"))
_AGENT_BLOCKS = _Table(
    "agent_blocks",
    None,
    extra=(("agent_id", "VARCHAR"), ("block_id", "VARCHAR"), ("position", "INTEGER")),
    key=("agent_id", "block_id"),
)
_MESSAGES = _Table(
    "messages",
    Message,
    ("id", "agent_id", "role", "created_at", "run_id", "step_id", "group_id", "sender_id"),
    extra=(("seq", "BIGINT"), ("text", "VARCHAR")),
)
_TOOLS = _Table("tools", Tool, ("id", "name", "tool_type", "tags"))
_GROUPS = _Table("groups", None, extra=(("id", "VARCHAR"), ("updated_at", "TIMESTAMPTZ"), ("doc", "JSON")))
_RUNS = _Table(
    "runs",
    None,
    extra=(
        ("id", "VARCHAR"),
        ("agent_id", "VARCHAR"),
        ("status", "VARCHAR"),
        ("created_at", "TIMESTAMPTZ"),
        ("doc", "JSON"),
    ),
)
_STORE_META = _Table("store_meta", None, extra=(("key", "VARCHAR"), ("value", "VARCHAR")), key=("key",))
_DATA_TABLES = (_AGENTS, _BLOCKS, _AGENT_BLOCKS, _MESSAGES, _TOOLS, _GROUPS, _RUNS)

# A stale copy of a shared block (held by another agent's host) must not undo a newer edit.
_UPDATE_BLOCK_IF_NEWER = _BLOCKS.update_sql(where="updated_at <= ?")
# A turn's edit of a block under its stored label (a rename needs the label check).
_UPDATE_EDITED_BLOCK = _BLOCKS.update_sql(where="updated_at <= ? AND label = ?")
_UPDATE_AGENT = _AGENTS.update_sql()


def fts_extension_path() -> Path:
    """The FTS extension shipped in the ``duckdb-extension-fts`` wheel (no network)."""
    root = importlib.resources.files("duckdb_extension_fts")
    path = Path(str(root)) / "extensions" / f"v{duckdb.__version__}" / "fts.duckdb_extension"
    if not path.is_file():
        raise StorageError(f"DuckDB fts extension not found at {path}; install duckdb-extension-fts")
    return path


def _sql_str(value: object) -> str:
    return str(value).replace("'", "''")


def _utc(value: datetime) -> datetime:
    """Naive datetimes are taken as UTC; aware ones are converted to UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    if value.utcoffset() == timedelta(0):
        return value
    return value.astimezone(UTC)


def _utc_model(model: _M) -> _M:
    update = {
        name: _utc(value)
        for name in ("created_at", "updated_at")
        if isinstance(value := getattr(model, name, None), datetime) and _utc(value) is not value
    }
    return model.model_copy(update=update) if update else model


def _json_values(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _json_values(item)
    elif isinstance(value, list):
        for item in value:
            yield from _json_values(item)
    elif isinstance(value, str | int | float) and not isinstance(value, bool):
        yield str(value)


def _json_text(raw: str) -> str:
    """The values of a JSON document, so keys like "message" or "status" are not indexed."""
    try:
        return " ".join(_json_values(json.loads(raw)))
    except (json.JSONDecodeError, TypeError):
        return raw


def _search_text(message: Message) -> str:
    """What recall search sees of a message: its content and its tool-call arguments."""
    content = message.content or ""
    if message.role == "tool" and content.lstrip().startswith("{"):
        content = _json_text(content)
    parts = [content, *(_json_text(call.arguments) for call in message.tool_calls)]
    return "\n".join(part for part in parts if part)


def _like_pattern(word: str) -> str:
    escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 0:
        raise InvalidInputError(f"limit must be >= 0, got {limit}")


def _check_order(order: str) -> str:
    if order not in ("asc", "desc"):
        raise InvalidInputError(f"order must be 'asc' or 'desc', got {order!r}")
    return order.upper()


class MetadataStore:
    """Agents, blocks, messages, tools, groups and runs in one DuckDB file.

    Every public method holds one lock: DuckDB connections are not meant to be shared
    between threads, and one owner process serialises writes anyway. Each write commits
    before it returns; wrap several in ``transaction()`` to commit them together.
    """

    def __init__(self, path: str | Path, *, fts_rebuild_threshold: int = FTS_REBUILD_THRESHOLD) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._fts_rebuild_threshold = fts_rebuild_threshold
        self._lock = threading.RLock()
        self._depth = 0
        try:
            self._conn: duckdb.DuckDBPyConnection | None = duckdb.connect(self.path)
        except duckdb.Error as exc:  # e.g. another process holds the file
            raise StorageError(f"cannot open {self.path}: {exc}") from exc
        try:
            self._conn.execute("SET TimeZone = 'UTC'")
            # LOAD by path, not INSTALL: installing copies the file into ~/.duckdb, which
            # may be read-only on a cluster node.
            self._conn.execute(f"LOAD '{_sql_str(fts_extension_path())}'")
            for table in (*_DATA_TABLES, _STORE_META):
                self._conn.execute(table.ddl())
            self._max_seq: int = self._conn.execute(
                "SELECT coalesce(max(seq), 0) FROM messages"
            ).fetchone()[0]  # type: ignore[index]
            self._fts_watermark = self._read_watermark()
        except BaseException:
            self._conn.close()
            raise

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> MetadataStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Commit every write inside the block together (group commit), or none of them."""
        with self._tx():
            yield

    @contextmanager
    def _locked(self) -> Iterator[duckdb.DuckDBPyConnection]:
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
    def _tx(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._locked() as conn:
            if self._depth:  # already inside a transaction: join it
                self._depth += 1
                try:
                    yield conn
                finally:
                    self._depth -= 1
                return
            conn.execute("BEGIN TRANSACTION")
            self._depth = 1
            try:
                yield conn
            except BaseException:
                self._depth = 0
                with suppress(duckdb.Error):  # keep the original error, not a failed rollback's
                    conn.execute("ROLLBACK")
                raise
            self._depth = 0
            conn.execute("COMMIT")

    # ------------------------------------------------------------------ agents

    def upsert_agent(self, state: AgentState) -> None:
        """Store an agent, its blocks and their order.

        A block is written only if it is at least as new (``updated_at``) as the stored
        one, so an agent holding a stale copy of a shared block cannot undo an edit.
        """
        state = _utc_model(state)
        with self._tx() as conn:
            row = _AGENTS.row(state)
            if conn.execute(_UPDATE_AGENT, _AGENTS.update_params(row)).fetchone() is None:
                _AGENTS.insert(conn, [row])
            self._write_blocks(conn, state)

    def create_agents(self, states: Sequence[AgentState]) -> None:
        """Store new agents with their blocks: one bulk insert per table for the whole batch.

        An agent id already stored, or given twice, is a ConflictError and nothing is
        written. Blocks may be shared between the agents or with stored agents; a stored
        block is replaced only by a copy at least as new.
        """
        if not states:
            return
        states = [_utc_model(state) for state in states]
        blocks: dict[str, Block] = {}
        links: list[tuple[str, str, int]] = []
        for state in states:
            for position, block in enumerate(map(_utc_model, state.blocks)):
                held = blocks.get(block.id)
                if held is None or block.updated_at >= held.updated_at:
                    blocks[block.id] = block
                links.append((state.id, block.id, position))
        with self._tx() as conn:
            _AGENTS.insert(conn, [_AGENTS.row(state) for state in states])
            stored = {
                r[0] for r in conn.execute(
                    "SELECT id FROM blocks WHERE id IN (SELECT unnest(?::VARCHAR[]))", [list(blocks)]
                ).fetchall()
            }
            _BLOCKS.insert(conn, [_BLOCKS.row(b) for b in blocks.values() if b.id not in stored])
            for block_id in stored:
                block = blocks[block_id]
                conn.execute(_UPDATE_BLOCK_IF_NEWER, [*_BLOCKS.update_params(_BLOCKS.row(block)), block.updated_at])
            _AGENT_BLOCKS.insert(conn, links)
            if stored:  # only a block shared with stored agents can bring a clash
                self._check_labels(conn, list(stored))

    def commit_turn(self, state: AgentState, messages: Sequence[Message], edited_blocks: Sequence[Block] = ()) -> None:
        """Persist one turn of a stored agent whose set of attached blocks did not change.

        Appends ``messages``, updates the agent's row and writes only ``edited_blocks``
        (each only if at least as new as the stored copy); the attachments are not
        rewritten. NotFoundError if the agent is not stored.
        """
        state = _utc_model(state)
        attached = {block.id for block in state.blocks}
        stray = next((b.id for b in edited_blocks if b.id not in attached), None)
        if stray is not None:
            raise InvalidInputError(f"edited block {stray!r} is not attached to agent {state.id!r}")
        with self._tx() as conn:
            if conn.execute(_UPDATE_AGENT, _AGENTS.update_params(_AGENTS.row(state))).fetchone() is None:
                raise NotFoundError("agent", state.id)
            self.append_messages(messages)
            for block in map(_utc_model, edited_blocks):
                params = [*_BLOCKS.update_params(_BLOCKS.row(block)), block.updated_at, block.label]
                if conn.execute(_UPDATE_EDITED_BLOCK, params).fetchone() is None:
                    # A newer stored copy, a renamed block or one deleted meanwhile: take the
                    # careful path, which keeps the newer copy and checks labels.
                    self._write_blocks(conn, state)
                    break

    def _write_blocks(self, conn: duckdb.DuckDBPyConnection, state: AgentState) -> None:
        """Write a stored agent's blocks (each only if newer) and, if they changed, their order."""
        blocks = [_utc_model(block) for block in state.blocks]
        ids = [block.id for block in blocks]
        stored = {
            r[0]: (r[1], r[2]) for r in conn.execute(
                "SELECT id, label, doc FROM blocks WHERE id IN (SELECT unnest(?::VARCHAR[]))", [ids]
            ).fetchall()
        }
        labels: list[str] = []  # the agent's labels once written
        renamed: list[str] = []
        fresh: list[list[Any]] = []
        for block in blocks:
            row = _BLOCKS.row(block)
            if block.id not in stored:
                fresh.append(row)
                labels.append(block.label)
                continue
            label, doc = stored[block.id]
            written = doc != row[-1] and conn.execute(
                _UPDATE_BLOCK_IF_NEWER, [*_BLOCKS.update_params(row), block.updated_at]
            ).fetchone() is not None
            labels.append(block.label if written else label)
            if written and block.label != label:
                renamed.append(block.id)
        _BLOCKS.insert(conn, fresh)
        clash = next((label for label in labels if labels.count(label) > 1), None)
        if clash is not None:
            raise ConflictError(f"agent {state.id!r} would have two blocks labelled {clash!r}")
        order = conn.execute(
            "SELECT block_id FROM agent_blocks WHERE agent_id = ? ORDER BY position", [state.id]
        ).fetchall()
        if [r[0] for r in order] != ids:
            if order:
                conn.execute("DELETE FROM agent_blocks WHERE agent_id = ?", [state.id])
            _AGENT_BLOCKS.insert(conn, [(state.id, block_id, i) for i, block_id in enumerate(ids)])
        if renamed:  # a new label on a shared block may clash in another agent
            self._check_labels(conn, renamed)

    def get_agent(self, agent_id: str) -> AgentState:
        with self._locked() as conn:
            row = conn.execute("SELECT id, doc FROM agents WHERE id = ?", [agent_id]).fetchone()
            if row is None:
                raise NotFoundError("agent", agent_id)
            return self._assemble(conn, [row])[0]

    def get_agent_by_name(self, name: str) -> AgentState:
        """The agent called ``name``; the oldest one if several share it."""
        with self._locked() as conn:
            row = conn.execute(
                "SELECT id, doc FROM agents WHERE name = ? ORDER BY created_at, id LIMIT 1", [name]
            ).fetchone()
            if row is None:
                raise NotFoundError("agent", name)
            return self._assemble(conn, [row])[0]

    def list_agents(
        self,
        *,
        name: str | None = None,
        tags: Sequence[str] | None = None,
        match_all_tags: bool = False,
        limit: int | None = 50,
        after: str | None = None,
        before: str | None = None,
        order: Order = "asc",
    ) -> list[AgentState]:
        """Agents ordered by (created_at, id); ``after``/``before`` are agent ids.

        The range between the cursors is sorted by ``order`` and cut at ``limit``.
        """
        _check_limit(limit)
        direction = _check_order(order)
        with self._locked() as conn:
            clauses: list[str] = []
            params: list[Any] = []
            if name is not None:
                clauses.append("name = ?")
                params.append(name)
            if tags:
                clauses.append(f"{'list_has_all' if match_all_tags else 'list_has_any'}(tags, ?::VARCHAR[])")
                params.append(list(tags))
            for cursor, op in ((after, ">"), (before, "<")):
                if cursor is not None:
                    self._add_cursor(
                        conn, clauses, params, "agents", "agent", ("created_at", "id"), cursor, op
                    )
            rows = conn.execute(
                f"SELECT id, doc FROM agents {_where(clauses)} "
                f"ORDER BY created_at {direction}, id {direction} {_limit(limit)}",
                params,
            ).fetchall()
            return self._assemble(conn, rows)

    def delete_agent(self, agent_id: str) -> None:
        """Delete an agent, its messages and attachments, and blocks no other agent uses."""
        with self._tx() as conn:
            self._require(conn, "agents", "agent", agent_id)
            block_ids = [
                r[0]
                for r in conn.execute(
                    "SELECT block_id FROM agent_blocks WHERE agent_id = ?", [agent_id]
                ).fetchall()
            ]
            conn.execute("DELETE FROM messages WHERE agent_id = ?", [agent_id])
            conn.execute("DELETE FROM agent_blocks WHERE agent_id = ?", [agent_id])
            conn.execute(
                "DELETE FROM blocks WHERE list_contains(?::VARCHAR[], id) "
                "AND id NOT IN (SELECT block_id FROM agent_blocks)",
                [block_ids],
            )
            conn.execute("DELETE FROM agents WHERE id = ?", [agent_id])

    def count_agents(self) -> int:
        with self._locked() as conn:
            return conn.execute("SELECT count(*) FROM agents").fetchone()[0]  # type: ignore[index]

    def _assemble(self, conn: duckdb.DuckDBPyConnection, rows: Sequence[tuple[Any, ...]]) -> list[AgentState]:
        """Agents from their docs, with blocks read from the blocks table in attachment order."""
        blocks: dict[str, list[Any]] = {row[0]: [] for row in rows}
        if blocks:
            for agent_id, doc in conn.execute(
                "SELECT ab.agent_id, b.doc FROM agent_blocks ab JOIN blocks b ON b.id = ab.block_id "
                "WHERE list_contains(?::VARCHAR[], ab.agent_id) ORDER BY ab.agent_id, ab.position",
                [list(blocks)],
            ).fetchall():
                blocks[agent_id].append(json.loads(doc))
        agents = []
        for agent_id, doc in rows:
            data = json.loads(doc)
            data["blocks"] = blocks[agent_id]
            agents.append(AgentState.model_validate(data))
        return agents

    # ------------------------------------------------------------------ blocks

    def upsert_block(self, block: Block) -> None:
        """Store a block; every agent it is attached to sees the new value."""
        block = _utc_model(block)
        with self._tx() as conn:
            conn.execute(_BLOCKS.upsert_sql(), _BLOCKS.row(block))
            self._check_labels(conn, [block.id])

    def get_block(self, block_id: str) -> Block:
        with self._locked() as conn:
            row = conn.execute("SELECT doc FROM blocks WHERE id = ?", [block_id]).fetchone()
            if row is None:
                raise NotFoundError("block", block_id)
            return Block.model_validate_json(row[0])

    def list_blocks(
        self, *, label: str | None = None, limit: int | None = 50, after: str | None = None
    ) -> list[Block]:
        """Blocks ordered by id; ``after`` is a block id."""
        _check_limit(limit)
        clauses: list[str] = []
        params: list[Any] = []
        if label is not None:
            clauses.append("label = ?")
            params.append(label)
        if after is not None:
            clauses.append("id > ?")
            params.append(after)
        with self._locked() as conn:
            rows = conn.execute(
                f"SELECT doc FROM blocks {_where(clauses)} ORDER BY id {_limit(limit)}", params
            ).fetchall()
        return [Block.model_validate_json(row[0]) for row in rows]

    def delete_block(self, block_id: str) -> None:
        """Delete a block and detach it from every agent."""
        with self._tx() as conn:
            self._require(conn, "blocks", "block", block_id)
            conn.execute("DELETE FROM agent_blocks WHERE block_id = ?", [block_id])
            conn.execute("DELETE FROM blocks WHERE id = ?", [block_id])

    def attach_block(self, agent_id: str, block_id: str) -> None:
        """Attach a stored block after the agent's other blocks; a no-op if attached."""
        with self._tx() as conn:
            self._require(conn, "agents", "agent", agent_id)
            self._require(conn, "blocks", "block", block_id)
            conn.execute(
                "INSERT INTO agent_blocks (agent_id, block_id, position) "
                "SELECT ?, ?, coalesce(max(position) + 1, 0) FROM agent_blocks WHERE agent_id = ? "
                "ON CONFLICT DO NOTHING",
                [agent_id, block_id, agent_id],
            )
            self._check_labels(conn, [block_id])

    def detach_block(self, agent_id: str, block_id: str) -> None:
        """Detach a block from an agent; the block itself stays. A no-op if not attached."""
        with self._tx() as conn:
            self._require(conn, "agents", "agent", agent_id)
            conn.execute(
                "DELETE FROM agent_blocks WHERE agent_id = ? AND block_id = ?", [agent_id, block_id]
            )

    def agents_of_block(self, block_id: str) -> list[str]:
        """Ids of the agents a block is attached to."""
        with self._locked() as conn:
            self._require(conn, "blocks", "block", block_id)
            rows = conn.execute(
                "SELECT agent_id FROM agent_blocks WHERE block_id = ? ORDER BY agent_id", [block_id]
            ).fetchall()
        return [row[0] for row in rows]

    def _check_labels(self, conn: duckdb.DuckDBPyConnection, block_ids: list[str]) -> None:
        """Refuse a write that would give an agent two blocks with one label."""
        if not block_ids:
            return
        clash = conn.execute(
            "SELECT ab.agent_id, b.label FROM agent_blocks ab JOIN blocks b ON b.id = ab.block_id "
            "WHERE ab.agent_id IN (SELECT agent_id FROM agent_blocks "
            "WHERE list_contains(?::VARCHAR[], block_id)) "
            "GROUP BY ab.agent_id, b.label HAVING count(*) > 1 LIMIT 1",
            [block_ids],
        ).fetchone()
        if clash is not None:
            raise ConflictError(f"agent {clash[0]!r} would have two blocks labelled {clash[1]!r}")

    # ------------------------------------------------------------------ messages

    def append_messages(self, messages: Sequence[Message]) -> None:
        """Store new messages in one bulk insert; an id already stored is a ConflictError."""
        if not messages:
            return
        with self._tx() as conn:
            first = self._max_seq + 1
            _MESSAGES.insert(conn, [
                _MESSAGES.row(_utc_model(m), seq=first + i, text=_search_text(m))
                for i, m in enumerate(messages)
            ])
            self._max_seq = first + len(messages) - 1

    def get_messages(self, ids: Sequence[str]) -> list[Message]:
        """The messages with these ids, in the order of ``ids``."""
        with self._locked() as conn:
            rows = conn.execute(
                "SELECT id, doc FROM messages WHERE id IN (SELECT unnest(?::VARCHAR[]))", [list(ids)]
            ).fetchall()
        docs = dict(rows)
        missing = next((i for i in ids if i not in docs), None)
        if missing is not None:
            raise NotFoundError("message", missing)
        return [Message.model_validate_json(docs[i]) for i in ids]

    def list_messages(
        self,
        agent_id: str,
        *,
        limit: int | None = 50,
        before: str | None = None,
        after: str | None = None,
        order: Order = "asc",
        roles: Sequence[Role] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[Message]:
        """An agent's messages ordered by (created_at, insertion).

        ``before``/``after`` are message ids; the range between them is sorted by
        ``order`` and cut at ``limit``. Page back with ``order="desc", before=<oldest>``,
        forward with ``order="asc", after=<newest>``. ``start``/``end`` are inclusive.
        """
        _check_limit(limit)
        direction = _check_order(order)
        clauses, params = _message_filters(agent_id, roles, start, end)
        with self._locked() as conn:
            for cursor, op in ((after, ">"), (before, "<")):
                if cursor is not None:
                    self._add_cursor(
                        conn, clauses, params, "messages", "message", ("created_at", "seq"), cursor, op
                    )
            rows = conn.execute(
                f"SELECT doc FROM messages {_where(clauses)} "
                f"ORDER BY created_at {direction}, seq {direction} {_limit(limit)}",
                params,
            ).fetchall()
        return [Message.model_validate_json(row[0]) for row in rows]

    def count_messages(self, agent_id: str) -> int:
        with self._locked() as conn:
            return conn.execute(
                "SELECT count(*) FROM messages WHERE agent_id = ?", [agent_id]
            ).fetchone()[0]  # type: ignore[index]

    def search_messages(
        self,
        agent_id: str,
        query: str | None,
        *,
        roles: Sequence[Role] | None = None,
        limit: int = 10,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[Message]:
        """Full-text search of an agent's history.

        Messages covered by the index are ranked by BM25; the newer, not yet indexed tail
        is scanned (case-insensitive, per query word) and follows, most words matched
        then newest first. No query: the most recent messages matching the filters.
        """
        _check_limit(limit)
        clauses, params = _message_filters(agent_id, roles, start, end)
        with self._locked() as conn:
            if not query or not query.strip():
                rows = conn.execute(
                    f"SELECT doc FROM messages {_where(clauses)} "
                    "ORDER BY created_at DESC, seq DESC LIMIT ?",
                    [*params, limit],
                ).fetchall()
                return [Message.model_validate_json(row[0]) for row in rows]
            if self._depth == 0 and self._max_seq - self._fts_watermark > self._fts_rebuild_threshold:
                self.rebuild_search_index()
            watermark = self._fts_watermark
            rows = []
            if watermark:
                rows = conn.execute(
                    "SELECT doc FROM (SELECT doc, seq, fts_main_messages.match_bm25(id, ?) AS score "
                    f"FROM messages {_where([*clauses, 'seq <= ?'])}) "
                    "WHERE score IS NOT NULL ORDER BY score DESC, seq DESC LIMIT ?",
                    [query, *params, watermark, limit],
                ).fetchall()
            words = list(dict.fromkeys(w.lower() for w in _WORD.findall(query)))
            if words and len(rows) < limit:
                matched = " + ".join(["(text ILIKE ? ESCAPE '\\')::INTEGER"] * len(words))
                rows += conn.execute(
                    f"SELECT doc FROM (SELECT doc, created_at, seq, {matched} AS matched "
                    f"FROM messages {_where([*clauses, 'seq > ?'])}) WHERE matched > 0 "
                    "ORDER BY matched DESC, created_at DESC, seq DESC LIMIT ?",
                    [*map(_like_pattern, words), *params, watermark, limit - len(rows)],
                ).fetchall()
        return [Message.model_validate_json(row[0]) for row in rows]

    def rebuild_search_index(self) -> None:
        """Rebuild the full-text index over every message (searches do this when needed)."""
        with self._locked():
            if self._depth:
                raise StorageError("rebuild_search_index cannot run inside transaction()")
            with self._tx() as conn:
                top = conn.execute("SELECT coalesce(max(seq), 0) FROM messages").fetchone()[0]  # type: ignore[index]
                if top == 0:
                    return
                conn.execute(
                    "PRAGMA create_fts_index('messages', 'id', 'text', stemmer='porter', "
                    f"stopwords='english', ignore='{_FTS_IGNORE}', strip_accents=1, lower=1, "
                    "overwrite=1)"
                )
                conn.execute(_STORE_META.upsert_sql(), ["fts_watermark", str(top)])
            self._fts_watermark = top

    @property
    def search_index_watermark(self) -> int:
        """The highest message sequence number the full-text index covers (0: no index)."""
        return self._fts_watermark

    def _read_watermark(self) -> int:
        assert self._conn is not None
        has_index = self._conn.execute(
            "SELECT count(*) FROM duckdb_schemas() WHERE schema_name = 'fts_main_messages'"
        ).fetchone()[0]  # type: ignore[index]
        row = self._conn.execute("SELECT value FROM store_meta WHERE key = 'fts_watermark'").fetchone()
        return int(row[0]) if has_index and row else 0

    # ------------------------------------------------------------------ bookkeeping

    def get_meta(self, key: str) -> str | None:
        """A value of the store's own bookkeeping (e.g. how far a journal was applied)."""
        with self._locked() as conn:
            row = conn.execute("SELECT value FROM store_meta WHERE key = ?", [key]).fetchone()
            return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as conn:
            conn.execute(_STORE_META.upsert_sql(), [key, value])

    # ------------------------------------------------------------------ tools

    def upsert_tool(self, tool: Tool) -> Tool:
        """Store a tool; a tool of the same name is replaced, keeping its id. Returns it stored."""
        with self._tx() as conn:
            by_name = conn.execute("SELECT id FROM tools WHERE name = ?", [tool.name]).fetchone()
            if by_name is not None and by_name[0] != tool.id:
                if conn.execute("SELECT 1 FROM tools WHERE id = ?", [tool.id]).fetchone():
                    raise ConflictError(f"tool name {tool.name!r} is already used by {by_name[0]!r}")
                tool = tool.model_copy(update={"id": by_name[0]})
            conn.execute(_TOOLS.upsert_sql(), _TOOLS.row(tool))
        return tool

    def get_tool(self, tool_id: str) -> Tool:
        return self._get_doc(Tool, "tools", "tool", "id", tool_id)

    def get_tool_by_name(self, name: str) -> Tool:
        return self._get_doc(Tool, "tools", "tool", "name", name)

    def list_tools(self, limit: int | None = 50, after: str | None = None) -> list[Tool]:
        """Tools ordered by name; ``after`` is a tool id."""
        _check_limit(limit)
        clauses: list[str] = []
        params: list[Any] = []
        with self._locked() as conn:
            if after is not None:
                self._add_cursor(conn, clauses, params, "tools", "tool", ("name", "id"), after, ">")
            rows = conn.execute(
                f"SELECT doc FROM tools {_where(clauses)} ORDER BY name, id {_limit(limit)}", params
            ).fetchall()
        return [Tool.model_validate_json(row[0]) for row in rows]

    def delete_tool(self, tool_id: str) -> None:
        with self._tx() as conn:
            self._require(conn, "tools", "tool", tool_id)
            conn.execute("DELETE FROM tools WHERE id = ?", [tool_id])

    # ------------------------------------------------------------------ groups and runs

    def upsert_group(self, group_id: str, doc: dict[str, Any]) -> None:
        with self._tx() as conn:
            conn.execute(
                _GROUPS.upsert_sql(),
                [group_id, datetime.now(UTC), _to_json({**doc, "id": group_id})],
            )

    def get_group(self, group_id: str) -> dict[str, Any]:
        with self._locked() as conn:
            row = conn.execute("SELECT doc FROM groups WHERE id = ?", [group_id]).fetchone()
        if row is None:
            raise NotFoundError("group", group_id)
        return json.loads(row[0])

    def list_groups(self, limit: int | None = 50, after: str | None = None) -> list[dict[str, Any]]:
        """Group docs ordered by id; ``after`` is a group id."""
        _check_limit(limit)
        clauses, params = (["id > ?"], [after]) if after is not None else ([], [])
        with self._locked() as conn:
            rows = conn.execute(
                f"SELECT doc FROM groups {_where(clauses)} ORDER BY id {_limit(limit)}", params
            ).fetchall()
        return [json.loads(row[0]) for row in rows]

    def delete_group(self, group_id: str) -> None:
        with self._tx() as conn:
            self._require(conn, "groups", "group", group_id)
            conn.execute("DELETE FROM groups WHERE id = ?", [group_id])

    def upsert_run(self, run_id: str, doc: dict[str, Any]) -> None:
        """Store a run doc (``agent_id``, ``status``, ``created_at``); created_at defaults to
        the stored one, else now."""
        with self._tx() as conn:
            created = doc.get("created_at")
            if isinstance(created, str):
                created = datetime.fromisoformat(created)
            if created is None:
                row = conn.execute(
                    "SELECT doc->>'created_at' FROM runs WHERE id = ?", [run_id]
                ).fetchone()
                created = datetime.fromisoformat(row[0]) if row and row[0] else datetime.now(UTC)
            if not isinstance(created, datetime):
                raise InvalidInputError(f"run created_at must be a datetime, got {created!r}")
            created = _utc(created)
            full = {**doc, "id": run_id, "created_at": created}
            conn.execute(
                _RUNS.upsert_sql(),
                [run_id, doc.get("agent_id"), doc.get("status"), created, _to_json(full)],
            )

    def get_run(self, run_id: str) -> dict[str, Any]:
        with self._locked() as conn:
            row = conn.execute("SELECT doc FROM runs WHERE id = ?", [run_id]).fetchone()
        if row is None:
            raise NotFoundError("run", run_id)
        return json.loads(row[0])

    def list_runs(
        self, agent_id: str | None = None, *, status: str | None = None, limit: int | None = 50
    ) -> list[dict[str, Any]]:
        """Run docs, newest first."""
        _check_limit(limit)
        clauses: list[str] = []
        params: list[Any] = []
        if agent_id is not None:
            clauses.append("agent_id = ?")
            params.append(agent_id)
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        with self._locked() as conn:
            rows = conn.execute(
                f"SELECT doc FROM runs {_where(clauses)} "
                f"ORDER BY created_at DESC, id DESC {_limit(limit)}",
                params,
            ).fetchall()
        return [json.loads(row[0]) for row in rows]

    # ------------------------------------------------------------------ export

    def export_parquet(self, out_dir: str | Path) -> dict[str, Path]:
        """Write one Parquet file per table into ``out_dir``; returns table name -> path."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {}
        with self._locked() as conn:
            for table in _DATA_TABLES:
                path = out / f"{table.name}.parquet"
                order = "seq" if table is _MESSAGES else ", ".join(table.key)
                conn.execute(
                    f"COPY (SELECT * FROM {table.name} ORDER BY {order}) "
                    f"TO '{_sql_str(path)}' (FORMAT parquet)"
                )
                paths[table.name] = path
        return paths

    # ------------------------------------------------------------------ helpers

    def _require(self, conn: duckdb.DuckDBPyConnection, table: str, kind: str, key: str) -> None:
        if conn.execute(f"SELECT 1 FROM {table} WHERE id = ?", [key]).fetchone() is None:
            raise NotFoundError(kind, key)

    def _get_doc(self, model: type[_M], table: str, kind: str, column: str, key: str) -> _M:
        with self._locked() as conn:
            row = conn.execute(f"SELECT doc FROM {table} WHERE {column} = ?", [key]).fetchone()
        if row is None:
            raise NotFoundError(kind, key)
        return model.model_validate_json(row[0])

    def _add_cursor(
        self,
        conn: duckdb.DuckDBPyConnection,
        clauses: list[str],
        params: list[Any],
        table: str,
        kind: str,
        order: tuple[str, str],
        cursor: str,
        op: str,
    ) -> None:
        """Keep rows strictly ``op`` the cursor row in ``order`` (a column and a tiebreak)."""
        self._require(conn, table, kind, cursor)
        column, tiebreak = order
        value = f"(SELECT {{}} FROM {table} WHERE id = ?)"
        clauses.append(
            f"({column} {op} {value.format(column)} OR "
            f"({column} = {value.format(column)} AND {tiebreak} {op} {value.format(tiebreak)}))"
        )
        params.extend([cursor] * 3)


def _message_filters(
    agent_id: str,
    roles: Sequence[Role] | None,
    start: datetime | None,
    end: datetime | None,
) -> tuple[list[str], list[Any]]:
    clauses = ["agent_id = ?"]
    params: list[Any] = [agent_id]
    if roles:
        clauses.append("list_contains(?::VARCHAR[], role)")
        params.append(list(roles))
    if start is not None:
        clauses.append("created_at >= ?")
        params.append(_utc(start))
    if end is not None:
        clauses.append("created_at <= ?")
        params.append(_utc(end))
    return clauses, params


def _where(clauses: Sequence[str]) -> str:
    return f"WHERE {' AND '.join(clauses)}" if clauses else ""


def _limit(limit: int | None) -> str:
    return "" if limit is None else f"LIMIT {int(limit)}"


def _to_json(doc: dict[str, Any]) -> str:
    return pydantic_core.to_json(doc).decode()
