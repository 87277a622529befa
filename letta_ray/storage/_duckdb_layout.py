"""The DuckDB layout behind ``MetadataStore``: tables derived from the pydantic schema.

Each table keeps the few typed columns it is queried by plus the whole model as JSON.
Also the SQL helpers the store's queries share.
"""

from __future__ import annotations

import importlib.resources
import json
import re
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import duckdb
import pyarrow as pa
import pydantic_core
from pydantic import BaseModel

from letta_ray.errors import InvalidInputError, StorageError
from letta_ray.mcp import MCPServer
from letta_ray.messages import Message, Role, StepRecord
from letta_ray.schemas import AgentState, Archive, Block, Conversation, FileMetadata, Folder, Identity, Tool

FTS_REBUILD_THRESHOLD = 2_000
# Up to this many rows, one multi-row VALUES insert beats registering an Arrow table
# (~1.5 ms of fixed cost); past it, VALUES grows by ~0.1 ms a row and Arrow barely at all.
_VALUES_INSERT_MAX_ROWS = 8
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

    def replace_many(self, conn: duckdb.DuckDBPyConnection, rows: Sequence[Sequence[Any]]) -> None:
        """Write stored rows anew (in column order, each key once, every key stored; a table
        with one text key): their old versions deleted, the new ones inserted, in the
        caller's transaction. A row whose key is not stored would be inserted: the caller
        passes only stored ones.

        The same as an UPDATE of every column, which DuckDB carries out as a delete and an
        insert anyway (a list column, ``tags``, is never updated in place), at under half its
        cost on a large table: the UPDATE's join probes the whole table and its key index is
        updated row by row (100,000 agents, passes of 450 turns: ~38 ms against ≤ 16 ms;
        bench/store_ceiling.py's mean CPU per turn applied, 0.481 -> 0.436 ms; docs/scaling.md)."""
        if not rows:
            return
        (key,) = self.key
        at = list(self.columns).index(key)
        conn.execute(f"DELETE FROM {self.name} WHERE {key} IN (SELECT unnest(?::VARCHAR[]))",
                     [[row[at] for row in rows]])
        self.insert(conn, rows)

    def _arrow(self, rows: Sequence[Sequence[Any]]) -> pa.Table:
        return pa.table(
            {name: pa.array(values, _ARROW_TYPES[kind])
             for (name, kind), values in zip(self.columns.items(), zip(*rows, strict=True), strict=True)}
        )

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
        table = self._arrow(rows)
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
_MCP_SERVERS = _Table("mcp_servers", MCPServer, ("id", "server_name", "created_at"))
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
_ARCHIVES = _Table("archives", Archive, ("id", "name", "created_at"))
_FOLDERS = _Table("folders", Folder, ("id", "name", "created_at"))
_CONVERSATIONS = _Table("conversations", Conversation, ("id", "agent_id", "created_at"))
_IDENTITIES = _Table("identities", Identity, ("id", "identifier_key", "name", "identity_type", "created_at"))
_FILES = _Table("files", FileMetadata, ("id", "folder_id", "file_name", "created_at"), extra=(("content", "VARCHAR"),))
_STEPS = _Table("steps", StepRecord,
                 ("id", "agent_id", "run_id", "model", "status", "feedback", "created_at", "step_start_ns"))
_STORE_META = _Table("store_meta", None, extra=(("key", "VARCHAR"), ("value", "VARCHAR")), key=("key",))
_DATA_TABLES = (_AGENTS, _BLOCKS, _AGENT_BLOCKS, _MESSAGES, _TOOLS, _MCP_SERVERS, _GROUPS, _RUNS, _STEPS, _ARCHIVES,
                _FOLDERS, _FILES, _IDENTITIES, _CONVERSATIONS)

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


def _message_filters(
    agent_id: str | None,
    roles: Sequence[Role] | None,
    start: datetime | None,
    end: datetime | None,
) -> tuple[list[str], list[Any]]:
    clauses = ["agent_id = ?"] if agent_id is not None else []
    params: list[Any] = [agent_id] if agent_id is not None else []
    if roles:
        clauses.append("list_contains(?::VARCHAR[], role)")
        params.append(list(roles))
    _date_clauses(clauses, params, start, end)
    return clauses, params


def _date_clauses(clauses: list[str], params: list[Any], start: datetime | None, end: datetime | None) -> None:
    """``start <= created_at <= end`` (either side open when None)."""
    if start is not None:
        clauses.append("created_at >= ?")
        params.append(_utc(start))
    if end is not None:
        clauses.append("created_at <= ?")
        params.append(_utc(end))


def _where(clauses: Sequence[str]) -> str:
    return f"WHERE {' AND '.join(clauses)}" if clauses else ""


def _limit(limit: int | None) -> str:
    return "" if limit is None else f"LIMIT {int(limit)}"


def _to_json(doc: dict[str, Any]) -> str:
    return pydantic_core.to_json(doc).decode()
