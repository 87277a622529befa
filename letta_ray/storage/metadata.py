"""Agents, blocks, messages, tools, groups and runs in one DuckDB file.

``MetadataStore`` is a plain synchronous class; the runtime wraps it in one Ray actor
because DuckDB allows one writing process per file. Each table keeps the few typed
columns it is queried by, derived from the pydantic schema, plus the whole model as
JSON, so every model round-trips exactly and the schema stays the single source of truth.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from letta_ray.errors import ConflictError, InvalidInputError, NotFoundError, StorageError
from letta_ray.messages import Message, Role
from letta_ray.schemas import AgentState, Block, Tool
from letta_ray.storage._duckdb_layout import (
    _AGENT_BLOCKS,
    _AGENTS,
    _BLOCKS,
    _DATA_TABLES,
    _FTS_IGNORE,
    _GROUPS,
    _M,
    _MESSAGES,
    _RUNS,
    _STORE_META,
    _TOOLS,
    _UPDATE_AGENT,
    _UPDATE_BLOCK_IF_NEWER,
    _UPDATE_EDITED_BLOCK,
    _WORD,
    FTS_REBUILD_THRESHOLD,
    Order,
    _check_limit,
    _check_order,
    _like_pattern,
    _limit,
    _message_filters,
    _search_text,
    _sql_str,
    _to_json,
    _utc,
    _utc_model,
    _where,
    fts_extension_path,
)


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
        with self._tx():
            if self.commit_turns([(state, messages, edited_blocks)]):
                raise NotFoundError("agent", state.id)

    def commit_turns(self, turns: Sequence[tuple[AgentState, Sequence[Message], Sequence[Block]]]) -> list[str]:
        """``commit_turn`` for many turns in one transaction, with one statement per table
        instead of several per turn (the store applies journaled turns this way).

        Turns of agents not stored (deleted after their turn was acknowledged) are
        skipped; returns their ids. Of several turns of one agent, the last state wins.
        """
        turns = [(_utc_model(state), messages, edited) for state, messages, edited in turns]
        for state, _, edited in turns:
            attached = {block.id for block in state.blocks}
            stray = next((b.id for b in edited if b.id not in attached), None)
            if stray is not None:
                raise InvalidInputError(f"edited block {stray!r} is not attached to agent {state.id!r}")
        latest = {state.id: state for state, _, _ in turns}
        with self._tx() as conn:
            stored = {r[0] for r in conn.execute(
                "SELECT id FROM agents WHERE id IN (SELECT unnest(?::VARCHAR[]))", [list(latest)]).fetchall()}
            gone = sorted(set(latest) - stored)
            _AGENTS.update_many(conn, [_AGENTS.row(state) for agent_id, state in latest.items() if agent_id in stored])
            self.append_messages([m for state, messages, _ in turns if state.id in stored for m in messages])
            for state, _, edited in turns:
                if state.id not in stored:
                    continue
                for block in map(_utc_model, edited):
                    params = [*_BLOCKS.update_params(_BLOCKS.row(block)), block.updated_at, block.label]
                    if conn.execute(_UPDATE_EDITED_BLOCK, params).fetchone() is None:
                        self._write_blocks(conn, state)  # the careful path, as in commit_turn
                        break
        return gone

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

    def existing_agents(self, agent_ids: Sequence[str]) -> list[str]:
        """Which of ``agent_ids`` are stored agents."""
        if not agent_ids:
            return []
        with self._locked() as conn:
            rows = conn.execute("SELECT id FROM agents WHERE id IN (SELECT unnest(?)) ORDER BY id",
                                [list(agent_ids)]).fetchall()
        return [row[0] for row in rows]

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

    def shared_blocks(self, block_ids: Sequence[str]) -> list[str]:
        """Which of ``block_ids`` are attached to more than one agent (one query for many)."""
        if not block_ids:
            return []
        with self._locked() as conn:
            rows = conn.execute(
                "SELECT block_id FROM agent_blocks WHERE block_id IN (SELECT unnest(?)) "
                "GROUP BY block_id HAVING count(*) > 1 ORDER BY block_id", [list(block_ids)]
            ).fetchall()
        return [row[0] for row in rows]

    def messages_of_runs(self, run_id_prefix: str) -> dict[str, list[Message]]:
        """Every stored message whose ``run_id`` starts with ``run_id_prefix``, by run, in order."""
        with self._locked() as conn:
            rows = conn.execute(
                "SELECT run_id, doc FROM messages WHERE starts_with(run_id, ?) ORDER BY run_id, created_at, seq",
                [run_id_prefix],
            ).fetchall()
        runs: dict[str, list[Message]] = {}
        for run_id, doc in rows:
            runs.setdefault(run_id, []).append(Message.model_validate_json(doc))
        return runs

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
