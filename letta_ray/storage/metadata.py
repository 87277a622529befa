"""Agents, blocks, tools, groups and runs in one DuckDB file (its messages: ``storage.messages``).

``MetadataStore`` is a plain synchronous class; the runtime wraps it in one Ray actor
because DuckDB allows one writing process per file. Each table keeps the few typed
columns it is queried by, derived from the pydantic schema, plus the whole model as
JSON, so every model round-trips exactly and the schema stays the single source of truth.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from letta_ray.errors import ConflictError, InvalidInputError, NotFoundError
from letta_ray.mcp import MCP_TOOL_TYPE, MCPServer
from letta_ray.messages import Message, StepRecord
from letta_ray.schemas import (
    AgentState,
    Archive,
    Block,
    Conversation,
    Cursor,
    FileMetadata,
    Folder,
    Identity,
    Order,
    Tool,
)
from letta_ray.storage._duckdb_file import DuckDBFile, from_epoch_us
from letta_ray.storage._duckdb_layout import (
    _AGENT_BLOCKS,
    _AGENTS,
    _ARCHIVES,
    _BLOCKS,
    _CONVERSATIONS,
    _DATA_TABLES,
    _FILES,
    _FOLDERS,
    _GROUPS,
    _IDENTITIES,
    _M,
    _MCP_SERVERS,
    _MESSAGES,
    _STORE_META,
    _TOOLS,
    _UPDATE_AGENT,
    _UPDATE_BLOCK_IF_NEWER,
    _UPDATE_EDITED_BLOCK,
    FTS_REBUILD_THRESHOLD,
    _check_limit,
    _check_order,
    _like_pattern,
    _limit,
    _sql_str,
    _to_json,
    _utc_model,
    _where,
)
from letta_ray.storage.messages import MessageStore
from letta_ray.storage.runs import RunStore

# A file's metadata, written without touching its text.
_UPSERT_FILE = (f"INSERT INTO files ({', '.join(_FILES.columns)}) VALUES ({', '.join('?' * len(_FILES.columns))}) "
                "ON CONFLICT (id) DO UPDATE SET folder_id = excluded.folder_id, file_name = excluded.file_name, "
                "doc = excluded.doc")

# Store settings that describe this disk, not the data: left out of snapshots. The journals'
# offsets (``host_journal:<file>``) are left out too.
LOCAL_META_KEYS = ("journal_applied_seq", "fts_watermark")

# The tools registered from one MCP server (parameters: the MCP tool type, the server's id).
_OF_MCP_SERVER = "tool_type = ? AND json_extract_string(doc, '$.metadata.mcp.server_id') = ?"


_CURSOR_ORDERS: dict[str, tuple[str, tuple[str, str]]] = {
    "agent": ("agents", ("created_at", "id")),
    "message": ("messages", ("created_at", "seq")),
    "run": ("runs", ("created_at", "id")),
    "step": ("steps", ("step_start_ns", "id")),
    "conversation": ("conversations", ("created_at", "id")),
}
"""For each kind of paged list: its table and the columns it is ordered by (see ``add_cursor``)."""


class MetadataStore:
    """Agents, blocks, tools, groups and runs in one DuckDB file; its messages in ``messages``.

    Every method runs under the file's one lock. Each write commits before it returns;
    wrap several in ``transaction()`` to commit them together (the messages too: a
    turn's agent row, blocks and messages commit as one).
    """

    def __init__(self, path: str | Path, *, fts_rebuild_threshold: int = FTS_REBUILD_THRESHOLD) -> None:
        self._db = DuckDBFile(path)
        self.path = self._db.path
        try:
            self.messages = MessageStore(self._db, fts_rebuild_threshold=fts_rebuild_threshold)
            self.runs = RunStore(self._db)
        except BaseException:
            self._db.close()
            raise

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> MetadataStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Commit every write inside the block together (group commit), or none of them."""
        with self._db.tx():
            yield

    def get_meta(self, key: str) -> str | None:
        """A value of the store's own bookkeeping (e.g. how far a journal was applied)."""
        return self._db.get_meta(key)

    def set_meta(self, key: str, value: str) -> None:
        self._db.set_meta(key, value)

    # ------------------------------------------------------------------ agents

    def upsert_agent(self, state: AgentState) -> None:
        """Store an agent, its blocks and their order.

        A block is written only if it is at least as new (``updated_at``) as the stored
        one, so an agent holding a stale copy of a shared block cannot undo an edit.
        """
        state = _utc_model(state)
        with self._db.tx() as conn:
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
        with self._db.tx() as conn:
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

    def create_journaled_agents(self, agents: Sequence[tuple[AgentState, Sequence[Message]]]) -> None:
        """Store agents a host journaled at their creation, with their first messages.

        Their blocks were all new when they were created, so nothing here can clash; an agent
        already stored is left as it is (a journal is applied once, but a record must never
        stop the journal behind it)."""
        with self._db.tx() as conn:
            ids = [state.id for state, _ in agents]
            stored = {r[0] for r in conn.execute(
                "SELECT id FROM agents WHERE id IN (SELECT unnest(?::VARCHAR[]))", [ids]).fetchall()}
            new = [(state, messages) for state, messages in agents if state.id not in stored]
            self.messages.append_messages([m for _, messages in new for m in messages])
            self.create_agents([state for state, _ in new])

    def commit_turn(self, state: AgentState, messages: Sequence[Message], edited_blocks: Sequence[Block] = ()) -> None:
        """Persist one turn of a stored agent whose set of attached blocks did not change.

        Appends ``messages``, updates the agent's row and writes only ``edited_blocks``
        (each only if at least as new as the stored copy); the attachments are not
        rewritten. NotFoundError if the agent is not stored.
        """
        with self._db.tx():
            if self.commit_turns([(state, messages, edited_blocks)]):
                raise NotFoundError("agent", state.id)

    def commit_turns(self, turns: Sequence[tuple[AgentState, Sequence[Message], Sequence[Block]]],
                     runs: Sequence[dict[str, Any]] = (), steps: Sequence[StepRecord] = (),
                     conversations: Sequence[Conversation] = ()) -> list[str]:
        """``commit_turn`` for many turns in one transaction, with one statement per table
        instead of several per turn (the store applies journaled turns this way), with the
        turns' ``runs`` (docs) and ``steps``.

        Turns of agents not stored (deleted after their turn was acknowledged) are
        skipped, with their runs and steps; returns their ids. Of several turns of one
        agent, the last state wins.
        """
        turns = [(_utc_model(state), messages, edited) for state, messages, edited in turns]
        for state, _, edited in turns:
            attached = {block.id for block in state.blocks}
            stray = next((b.id for b in edited if b.id not in attached), None)
            if stray is not None:
                raise InvalidInputError(f"edited block {stray!r} is not attached to agent {state.id!r}")
        latest = {state.id: state for state, _, _ in turns}
        with self._db.tx() as conn:
            stored = {r[0] for r in conn.execute(
                "SELECT id FROM agents WHERE id IN (SELECT unnest(?::VARCHAR[]))", [list(latest)]).fetchall()}
            gone = sorted(set(latest) - stored)
            _AGENTS.replace_many(conn, [_AGENTS.row(state) for agent_id, state in latest.items() if agent_id in stored])
            self.messages.append_messages([m for state, messages, _ in turns if state.id in stored for m in messages])
            self.runs.record_turns(conn, [r for r in runs if r.get("agent_id") in stored],
                                   [s for s in steps if s.agent_id in stored])
            for conversation in conversations:  # each turn's thread, where it now is (few a batch)
                if conversation.agent_id in stored:
                    conn.execute(_CONVERSATIONS.upsert_sql(), _CONVERSATIONS.row(_utc_model(conversation)))
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
        with self._db.locked() as conn:
            row = conn.execute("SELECT id, doc FROM agents WHERE id = ?", [agent_id]).fetchone()
            if row is None:
                raise NotFoundError("agent", agent_id)
            return self._assemble(conn, [row])[0]

    def existing_agents(self, agent_ids: Sequence[str]) -> list[str]:
        """Which of ``agent_ids`` are stored agents."""
        if not agent_ids:
            return []
        with self._db.locked() as conn:
            rows = conn.execute("SELECT id FROM agents WHERE id IN (SELECT unnest(?)) ORDER BY id",
                                [list(agent_ids)]).fetchall()
        return [row[0] for row in rows]

    def get_agent_by_name(self, name: str) -> AgentState:
        """The agent called ``name``; the oldest one if several share it."""
        with self._db.locked() as conn:
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
        after: Cursor | None = None,
        before: Cursor | None = None,
        order: Order = "asc",
    ) -> list[AgentState]:
        """Agents ordered by (created_at, id); ``after``/``before`` are agent ids.

        The range between the cursors is sorted by ``order`` and cut at ``limit``.
        """
        _check_limit(limit)
        direction = _check_order(order)
        with self._db.locked() as conn:
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
                    self._db.add_cursor(
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
        with self._db.tx() as conn:
            self._db.require(conn, "agents", "agent", agent_id)
            block_ids = [
                r[0]
                for r in conn.execute(
                    "SELECT block_id FROM agent_blocks WHERE agent_id = ?", [agent_id]
                ).fetchall()
            ]
            self.messages.delete_agent_messages(agent_id)
            self.runs.delete_agent_runs(agent_id)
            conn.execute("DELETE FROM conversations WHERE agent_id = ?", [agent_id])
            conn.execute("DELETE FROM agent_blocks WHERE agent_id = ?", [agent_id])
            conn.execute(
                "DELETE FROM blocks WHERE list_contains(?::VARCHAR[], id) "
                "AND id NOT IN (SELECT block_id FROM agent_blocks)",
                [block_ids],
            )
            conn.execute("DELETE FROM agents WHERE id = ?", [agent_id])

    def list_tags(self, *, name: str | None = None, after: str | None = None, before: str | None = None,
                  limit: int | None = 50, order: Order = "asc") -> list[str]:
        """The distinct tags of all agents, alphabetical (``order``); ``name``: those containing
        it (any case); ``after``/``before``: tags alphabetically after/before these."""
        _check_limit(limit)
        direction = _check_order(order)
        clauses: list[str] = []
        params: list[Any] = []
        for value, clause in ((name, "tag ILIKE ? ESCAPE '\\'"), (after, "tag > ?"), (before, "tag < ?")):
            if value is not None:
                clauses.append(clause)
                params.append(_like_pattern(value) if clause.startswith("tag ILIKE") else value)
        with self._db.locked() as conn:
            rows = conn.execute(f"SELECT tag FROM (SELECT DISTINCT unnest(tags) AS tag FROM agents) {_where(clauses)} "
                                f"ORDER BY tag {direction} {_limit(limit)}", params).fetchall()
        return [row[0] for row in rows]

    def agent_rows(self, *, query: str | None = None, limit: int = 50, offset: int = 0
                   ) -> tuple[int, list[dict[str, Any]]]:
        """One page of agents for a list to look at, newest first: how many match ``query``
        (any case, in the name, id or a tag) and, for the page's agents only, their name, tags,
        model, message count and the time of their last message (so a page costs the same
        with ten agents or a hundred thousand)."""
        _check_limit(limit)
        if offset < 0:
            raise InvalidInputError(f"offset must be >= 0, got {offset}")
        clauses: list[str] = []
        params: list[Any] = []
        if query:
            pattern = _like_pattern(query)
            clauses.append("(name ILIKE ? ESCAPE '\\' OR id ILIKE ? ESCAPE '\\' "
                           "OR array_to_string(tags, ' ') ILIKE ? ESCAPE '\\')")
            params += [pattern, pattern, pattern]
        with self._db.locked() as conn:
            total = conn.execute(f"SELECT count(*) FROM agents {_where(clauses)}", params).fetchone()[0]  # type: ignore[index]
            rows = conn.execute(
                f"WITH page AS (SELECT id, name, tags, created_at, "
                f"json_extract_string(doc, '$.llm_config.model') AS model FROM agents {_where(clauses)} "
                f"ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?) "
                "SELECT page.id, page.name, page.tags, page.model, epoch_us(page.created_at), count(m.id), "
                "epoch_us(max(m.created_at)) "
                "FROM page LEFT JOIN messages m ON m.agent_id = page.id "
                "GROUP BY page.id, page.name, page.tags, page.model, page.created_at "
                "ORDER BY page.created_at DESC, page.id DESC",
                [*params, limit, offset],
            ).fetchall()
        return total, [{"id": id_, "name": name, "tags": tags, "model": model, "created_at": from_epoch_us(created),
                        "message_count": count, "last_active": None if last is None else from_epoch_us(last)}
                       for id_, name, tags, model, created, count, last in rows]

    def count_agents(self) -> int:
        with self._db.locked() as conn:
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
        with self._db.tx() as conn:
            conn.execute(_BLOCKS.upsert_sql(), _BLOCKS.row(block))
            self._check_labels(conn, [block.id])

    def get_block(self, block_id: str) -> Block:
        with self._db.locked() as conn:
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
        with self._db.locked() as conn:
            rows = conn.execute(
                f"SELECT doc FROM blocks {_where(clauses)} ORDER BY id {_limit(limit)}", params
            ).fetchall()
        return [Block.model_validate_json(row[0]) for row in rows]

    def delete_block(self, block_id: str) -> None:
        """Delete a block and detach it from every agent."""
        with self._db.tx() as conn:
            self._db.require(conn, "blocks", "block", block_id)
            conn.execute("DELETE FROM agent_blocks WHERE block_id = ?", [block_id])
            conn.execute("DELETE FROM blocks WHERE id = ?", [block_id])

    def attach_block(self, agent_id: str, block_id: str) -> None:
        """Attach a stored block after the agent's other blocks; a no-op if attached."""
        with self._db.tx() as conn:
            self._db.require(conn, "agents", "agent", agent_id)
            self._db.require(conn, "blocks", "block", block_id)
            conn.execute(
                "INSERT INTO agent_blocks (agent_id, block_id, position) "
                "SELECT ?, ?, coalesce(max(position) + 1, 0) FROM agent_blocks WHERE agent_id = ? "
                "ON CONFLICT DO NOTHING",
                [agent_id, block_id, agent_id],
            )
            self._check_labels(conn, [block_id])

    def detach_block(self, agent_id: str, block_id: str) -> None:
        """Detach a block from an agent; the block itself stays. A no-op if not attached."""
        with self._db.tx() as conn:
            self._db.require(conn, "agents", "agent", agent_id)
            conn.execute(
                "DELETE FROM agent_blocks WHERE agent_id = ? AND block_id = ?", [agent_id, block_id]
            )

    def agents_of_block(self, block_id: str) -> list[str]:
        """Ids of the agents a block is attached to."""
        with self._db.locked() as conn:
            self._db.require(conn, "blocks", "block", block_id)
            rows = conn.execute(
                "SELECT agent_id FROM agent_blocks WHERE block_id = ? ORDER BY agent_id", [block_id]
            ).fetchall()
        return [row[0] for row in rows]

    def shared_blocks(self, block_ids: Sequence[str]) -> list[str]:
        """Which of ``block_ids`` are attached to more than one agent (one query for many)."""
        if not block_ids:
            return []
        with self._db.locked() as conn:
            rows = conn.execute(
                "SELECT block_id FROM agent_blocks WHERE block_id IN (SELECT unnest(?)) "
                "GROUP BY block_id HAVING count(*) > 1 ORDER BY block_id", [list(block_ids)]
            ).fetchall()
        return [row[0] for row in rows]

    def attachment_counts(self, block_ids: Sequence[str]) -> dict[str, int]:
        """For each of ``block_ids`` stored here: to how many agents it is attached (0 for a
        block stored on its own). Absent blocks are left out."""
        if not block_ids:
            return {}
        with self._db.locked() as conn:
            rows = conn.execute(
                "SELECT b.id, count(ab.agent_id) FROM blocks b LEFT JOIN agent_blocks ab ON ab.block_id = b.id "
                "WHERE b.id IN (SELECT unnest(?::VARCHAR[])) GROUP BY b.id", [list(block_ids)]
            ).fetchall()
        return {row[0]: int(row[1]) for row in rows}

    def sync_blocks(self, blocks: Sequence[Block]) -> None:
        """Write each of ``blocks`` that is stored here and at least as new as the stored copy
        (copies of one block kept alike, see ``actors.store_shards``); the others are left."""
        with self._db.tx() as conn:
            stored = {r[0] for r in conn.execute(
                "SELECT id FROM blocks WHERE id IN (SELECT unnest(?::VARCHAR[]))", [[b.id for b in blocks]]).fetchall()}
            written = []
            for block in (_utc_model(b) for b in blocks if b.id in stored):
                if conn.execute(_UPDATE_BLOCK_IF_NEWER,
                                [*_BLOCKS.update_params(_BLOCKS.row(block)), block.updated_at]).fetchone():
                    written.append(block.id)
            self._check_labels(conn, written)

    def cursor_key(self, kind: str, key: str) -> tuple[Any, Any] | None:
        """The values a list of ``kind`` ("agent", "message", "run", "step", "conversation") is
        ordered by, for the row ``key``; None if it is not stored here."""
        table, order = _CURSOR_ORDERS[kind]
        return self._db.cursor_key(table, order, key, timestamp=order[0] == "created_at")

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

    # ------------------------------------------------------------------ tools

    def upsert_tool(self, tool: Tool) -> Tool:
        """Store a tool; a tool of the same name is replaced, keeping its id. Returns it stored."""
        with self._db.tx() as conn:
            by_name = conn.execute("SELECT id FROM tools WHERE name = ?", [tool.name]).fetchone()
            if by_name is not None and by_name[0] != tool.id:
                if conn.execute("SELECT 1 FROM tools WHERE id = ?", [tool.id]).fetchone():
                    raise ConflictError(f"tool name {tool.name!r} is already used by {by_name[0]!r}")
                tool = tool.model_copy(update={"id": by_name[0]})
            conn.execute(_TOOLS.upsert_sql(), _TOOLS.row(tool))
        return tool

    def get_tool(self, tool_id: str) -> Tool:
        return self._db.get_doc(Tool, "tools", "tool", "id", tool_id)

    def get_tool_by_name(self, name: str) -> Tool:
        return self._db.get_doc(Tool, "tools", "tool", "name", name)

    def list_tools(self, limit: int | None = 50, after: str | None = None) -> list[Tool]:
        """Tools ordered by name; ``after`` is a tool id."""
        _check_limit(limit)
        clauses: list[str] = []
        params: list[Any] = []
        with self._db.locked() as conn:
            if after is not None:
                self._db.add_cursor(conn, clauses, params, "tools", "tool", ("name", "id"), after, ">")
            rows = conn.execute(
                f"SELECT doc FROM tools {_where(clauses)} ORDER BY name, id {_limit(limit)}", params
            ).fetchall()
        return [Tool.model_validate_json(row[0]) for row in rows]

    def delete_tool(self, tool_id: str) -> None:
        with self._db.tx() as conn:
            self._db.require(conn, "tools", "tool", tool_id)
            conn.execute("DELETE FROM tools WHERE id = ?", [tool_id])

    # ------------------------------------------------------------------ MCP servers

    def upsert_mcp_server(self, server: MCPServer) -> MCPServer:
        """Store an MCP server; its name is unique (ConflictError if another has it)."""
        server = _utc_model(server)
        with self._db.tx() as conn:
            row = conn.execute("SELECT id FROM mcp_servers WHERE server_name = ? AND id <> ?",
                               [server.server_name, server.id]).fetchone()
            if row is not None:
                raise ConflictError(f"an MCP server named {server.server_name!r} exists already ({row[0]})")
            conn.execute(_MCP_SERVERS.upsert_sql(), _MCP_SERVERS.row(server))
        return server

    def get_mcp_server(self, server_id: str) -> MCPServer:
        return self._db.get_doc(MCPServer, "mcp_servers", "MCP server", "id", server_id)

    def list_mcp_servers(self) -> list[MCPServer]:
        with self._db.locked() as conn:
            rows = conn.execute("SELECT doc FROM mcp_servers ORDER BY created_at, id").fetchall()
        return [MCPServer.model_validate_json(row[0]) for row in rows]

    def mcp_server_tools(self, server_id: str) -> list[Tool]:
        """The tools registered from one MCP server, by name."""
        with self._db.locked() as conn:
            rows = conn.execute(f"SELECT doc FROM tools WHERE {_OF_MCP_SERVER} ORDER BY name",
                                [MCP_TOOL_TYPE, server_id]).fetchall()
        return [Tool.model_validate_json(row[0]) for row in rows]

    def sync_mcp_tools(self, server_id: str, tools: list[Tool]) -> dict[str, list[str]]:
        """Make the server's registered tools ``tools``, in one transaction: new ones added,
        changed ones updated (keeping their ids), gone ones deleted. A name another tool
        already has (a custom tool, another server's) is skipped. Says which were which."""
        result: dict[str, list[str]] = {"added": [], "updated": [], "deleted": [], "skipped": []}
        with self._db.tx() as conn:
            self._db.require(conn, "mcp_servers", "MCP server", server_id)
            mine = {t.name: t for t in self.mcp_server_tools(server_id)}
            wanted = {t.name: t for t in tools}
            for name, old in mine.items():
                if name not in wanted:
                    conn.execute("DELETE FROM tools WHERE id = ?", [old.id])
                    result["deleted"].append(name)
            for name, tool in wanted.items():
                old = mine.get(name)
                if old is None:
                    if conn.execute("SELECT 1 FROM tools WHERE name = ?", [name]).fetchone():
                        result["skipped"].append(name)
                        continue
                    conn.execute(_TOOLS.upsert_sql(), _TOOLS.row(tool))
                    result["added"].append(name)
                elif (old.json_schema, old.description, old.tags, old.metadata) != (
                        tool.json_schema, tool.description, tool.tags, tool.metadata):
                    kept = tool.model_copy(update={"id": old.id, "default_requires_approval":
                                                   old.default_requires_approval})
                    conn.execute(_TOOLS.upsert_sql(), _TOOLS.row(kept))
                    result["updated"].append(name)
        return result

    def delete_mcp_server(self, server_id: str) -> list[str]:
        """Delete an MCP server and the tools registered from it; returns their names."""
        with self._db.tx() as conn:
            self._db.require(conn, "mcp_servers", "MCP server", server_id)
            names = [t.name for t in self.mcp_server_tools(server_id)]
            conn.execute(f"DELETE FROM tools WHERE {_OF_MCP_SERVER}", [MCP_TOOL_TYPE, server_id])
            conn.execute("DELETE FROM mcp_servers WHERE id = ?", [server_id])
        return names

    # ------------------------------------------------------------------ archives

    def upsert_archive(self, archive: Archive) -> Archive:
        archive = _utc_model(archive)
        with self._db.tx() as conn:
            conn.execute(_ARCHIVES.upsert_sql(), _ARCHIVES.row(archive))
        return archive

    def get_archive(self, archive_id: str) -> Archive:
        return self._db.get_doc(Archive, "archives", "archive", "id", archive_id)

    def list_archives(self, *, name: str | None = None, ids: Sequence[str] | None = None, limit: int | None = 50,
                      after: str | None = None, before: str | None = None, order: Order = "asc") -> list[Archive]:
        """Archives by (created_at, id), later than ``after`` and earlier than ``before``
        (archive ids); only those named ``name`` or with these ``ids``, when given."""
        clauses: list[str] = []
        params: list[Any] = []
        if name is not None:
            clauses.append("name = ?")
            params.append(name)
        if ids is not None:
            clauses.append("list_contains(?::VARCHAR[], id)")
            params.append(list(ids))
        return self._list_docs(Archive, "archives", "archive", clauses, params, after, before, limit, order)

    def _list_docs(self, model: type[_M], table: str, kind: str, clauses: list[str], params: list[Any],
                   after: Cursor | None, before: Cursor | None, limit: int | None, order: Order) -> list[_M]:
        """The docs of ``table`` matching ``clauses``, by (created_at, id), between the cursors."""
        docs = self._db.page_docs(table, kind, clauses, params, after=after, before=before, limit=limit, order=order)
        return [model.model_validate_json(doc) for doc in docs]

    def agents_with_archive(self, archive_id: str) -> list[str]:
        """The ids of the agents an archive is attached to."""
        with self._db.locked() as conn:
            rows = conn.execute("SELECT id FROM agents WHERE list_contains("
                                "json_extract_string(doc, '$.archive_ids[*]'), ?) ORDER BY id", [archive_id]).fetchall()
        return [row[0] for row in rows]

    def delete_archive(self, archive_id: str) -> None:
        with self._db.tx() as conn:
            self._db.require(conn, "archives", "archive", archive_id)
            conn.execute("DELETE FROM archives WHERE id = ?", [archive_id])

    # ------------------------------------------------------------------ conversations

    def upsert_conversation(self, conversation: Conversation) -> Conversation:
        conversation = _utc_model(conversation)
        with self._db.tx() as conn:
            self._db.require(conn, "agents", "agent", conversation.agent_id)
            conn.execute(_CONVERSATIONS.upsert_sql(), _CONVERSATIONS.row(conversation))
        return conversation

    def get_conversation(self, conversation_id: str) -> Conversation:
        return self._db.get_doc(Conversation, "conversations", "conversation", "id", conversation_id)

    def list_conversations(self, *, agent_id: str | None = None, archived: bool | None = None,
                           limit: int | None = 50, after: Cursor | None = None, before: Cursor | None = None,
                           order: Order = "desc") -> list[Conversation]:
        clauses: list[str] = []
        params: list[Any] = []
        if agent_id is not None:
            clauses.append("agent_id = ?")
            params.append(agent_id)
        if archived is not None:
            clauses.append("coalesce(TRY_CAST(doc->>'archived' AS BOOLEAN), false) = ?")
            params.append(archived)
        return self._list_docs(Conversation, "conversations", "conversation", clauses, params, after, before, limit,
                               order)

    def delete_conversation(self, conversation_id: str) -> None:
        with self._db.tx() as conn:
            self._db.require(conn, "conversations", "conversation", conversation_id)
            conn.execute("DELETE FROM conversations WHERE id = ?", [conversation_id])

    # ------------------------------------------------------------------ identities

    def upsert_identity(self, identity: Identity) -> Identity:
        identity = _utc_model(identity)
        with self._db.tx() as conn:
            clash = conn.execute("SELECT id FROM identities WHERE identifier_key = ? AND id != ?",
                                 [identity.identifier_key, identity.id]).fetchone()
            if clash is not None:
                raise ConflictError(f"identity {clash[0]} has the identifier_key {identity.identifier_key!r}")
            conn.execute(_IDENTITIES.upsert_sql(), _IDENTITIES.row(identity))
        return identity

    def get_identity(self, identity_id: str) -> Identity:
        return self._db.get_doc(Identity, "identities", "identity", "id", identity_id)

    def list_identities(self, *, name: str | None = None, identifier_key: str | None = None,
                        identity_type: str | None = None, project_id: str | None = None, limit: int | None = 50,
                        after: str | None = None, before: str | None = None, order: Order = "asc") -> list[Identity]:
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("name", name), ("identifier_key", identifier_key), ("identity_type", identity_type),
                              ("(doc->>'project_id')", project_id)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        return self._list_docs(Identity, "identities", "identity", clauses, params, after, before, limit, order)

    def agents_with_identity(self, identity_id: str) -> list[str]:
        """The ids of the agents an identity is attached to."""
        with self._db.locked() as conn:
            rows = conn.execute("SELECT id FROM agents WHERE list_contains("
                                "json_extract_string(doc, '$.identity_ids[*]'), ?) ORDER BY id", [identity_id]
                                ).fetchall()
        return [row[0] for row in rows]

    def delete_identity(self, identity_id: str) -> None:
        with self._db.tx() as conn:
            self._db.require(conn, "identities", "identity", identity_id)
            conn.execute("DELETE FROM identities WHERE id = ?", [identity_id])

    # ------------------------------------------------------------------ folders and files

    def upsert_folder(self, folder: Folder) -> Folder:
        folder = _utc_model(folder)
        with self._db.tx() as conn:
            conn.execute(_FOLDERS.upsert_sql(), _FOLDERS.row(folder))
        return folder

    def get_folder(self, folder_id: str) -> Folder:
        return self._db.get_doc(Folder, "folders", "folder", "id", folder_id)

    def list_folders(self, *, name: str | None = None, limit: int | None = 50, after: str | None = None,
                     before: str | None = None, order: Order = "asc") -> list[Folder]:
        clauses, params = (["name = ?"], [name]) if name is not None else ([], [])
        return self._list_docs(Folder, "folders", "folder", clauses, params, after, before, limit, order)

    def agents_with_folder(self, folder_id: str) -> list[str]:
        """The ids of the agents a folder is attached to."""
        with self._db.locked() as conn:
            rows = conn.execute("SELECT id FROM agents WHERE list_contains("
                                "json_extract_string(doc, '$.folder_ids[*]'), ?) ORDER BY id", [folder_id]).fetchall()
        return [row[0] for row in rows]

    def delete_folder(self, folder_id: str) -> None:
        """Delete a folder and its files (their text; their chunks live in the archive)."""
        with self._db.tx() as conn:
            self._db.require(conn, "folders", "folder", folder_id)
            conn.execute("DELETE FROM files WHERE folder_id = ?", [folder_id])
            conn.execute("DELETE FROM folders WHERE id = ?", [folder_id])

    def upsert_file(self, file: FileMetadata) -> FileMetadata:
        """Store a file's metadata (its text, set by ``set_file_content``, stays)."""
        file = _utc_model(file)
        with self._db.tx() as conn:
            self._db.require(conn, "folders", "folder", file.folder_id)
            conn.execute(_UPSERT_FILE, _FILES.row(file, content=None))
        return file

    def set_file_content(self, file_id: str, text: str) -> None:
        with self._db.tx() as conn:
            updated = conn.execute("UPDATE files SET content = ? WHERE id = ? RETURNING 1", [text, file_id]).fetchone()
            if updated is None:
                raise NotFoundError("file", file_id)

    def get_file(self, file_id: str) -> FileMetadata:
        return self._db.get_doc(FileMetadata, "files", "file", "id", file_id)

    def get_file_content(self, file_id: str) -> str:
        """A file's text ("" until it has been read)."""
        with self._db.locked() as conn:
            row = conn.execute("SELECT content FROM files WHERE id = ?", [file_id]).fetchone()
        if row is None:
            raise NotFoundError("file", file_id)
        return row[0] or ""

    def list_files(self, folder_id: str, *, limit: int | None = 1000, after: str | None = None,
                   before: str | None = None, order: Order = "asc") -> list[FileMetadata]:
        return self._list_docs(FileMetadata, "files", "file", ["folder_id = ?"], [folder_id], after, before, limit,
                               order)

    def delete_file(self, file_id: str) -> None:
        with self._db.tx() as conn:
            self._db.require(conn, "files", "file", file_id)
            conn.execute("DELETE FROM files WHERE id = ?", [file_id])

    # ------------------------------------------------------------------ groups

    def upsert_group(self, group_id: str, doc: dict[str, Any]) -> None:
        with self._db.tx() as conn:
            conn.execute(
                _GROUPS.upsert_sql(),
                [group_id, datetime.now(UTC), _to_json({**doc, "id": group_id})],
            )

    def get_group(self, group_id: str) -> dict[str, Any]:
        with self._db.locked() as conn:
            row = conn.execute("SELECT doc FROM groups WHERE id = ?", [group_id]).fetchone()
        if row is None:
            raise NotFoundError("group", group_id)
        return json.loads(row[0])

    def list_groups(self, limit: int | None = 50, after: str | None = None) -> list[dict[str, Any]]:
        """Group docs ordered by id; ``after`` is a group id."""
        _check_limit(limit)
        clauses, params = (["id > ?"], [after]) if after is not None else ([], [])
        with self._db.locked() as conn:
            rows = conn.execute(
                f"SELECT doc FROM groups {_where(clauses)} ORDER BY id {_limit(limit)}", params
            ).fetchall()
        return [json.loads(row[0]) for row in rows]

    def delete_group(self, group_id: str) -> None:
        with self._db.tx() as conn:
            self._db.require(conn, "groups", "group", group_id)
            conn.execute("DELETE FROM groups WHERE id = ?", [group_id])

    # ------------------------------------------------------------------ export

    def export_parquet(self, out_dir: str | Path, *, with_meta: bool = False) -> dict[str, Path]:
        """Write one Parquet file per table into ``out_dir``; returns table name -> path.

        All tables are read under one lock: the files are one consistent point in time.
        ``with_meta`` adds the store's own settings (a snapshot to restore from), less what
        belongs to this disk: how far its journals were applied, and the text index's mark.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {}
        with self._db.locked() as conn:
            for table in _DATA_TABLES:
                path = out / f"{table.name}.parquet"
                order = "seq" if table is _MESSAGES else ", ".join(table.key)
                conn.execute(
                    f"COPY (SELECT * FROM {table.name} ORDER BY {order}) "
                    f"TO '{_sql_str(path)}' (FORMAT parquet)"
                )
                paths[table.name] = path
            if with_meta:
                path = out / f"{_STORE_META.name}.parquet"
                conn.execute(
                    f"COPY (SELECT * FROM {_STORE_META.name} WHERE key NOT LIKE 'host_journal:%' "
                    f"AND key NOT IN ({', '.join(repr(_sql_str(k)) for k in LOCAL_META_KEYS)}) ORDER BY key) "
                    f"TO '{_sql_str(path)}' (FORMAT parquet)"
                )
                paths[_STORE_META.name] = path
        return paths

    def import_parquet(self, in_dir: str | Path) -> int:
        """Load an ``export_parquet(with_meta=True)`` snapshot into this store, which must be
        empty; all tables in one transaction. Returns the number of agents loaded."""
        folder = Path(in_dir)
        with self._db.tx() as conn:
            if conn.execute("SELECT count(*) FROM agents").fetchone()[0]:
                raise ConflictError(f"the metadata store {self.path} is not empty: not restoring over it")
            for table in (*_DATA_TABLES, _STORE_META):
                path = folder / f"{table.name}.parquet"
                if path.exists():  # a table added since the snapshot stays empty
                    conn.execute(f"INSERT INTO {table.name} SELECT * FROM read_parquet('{_sql_str(path)}')")
            agents = int(conn.execute("SELECT count(*) FROM agents").fetchone()[0])
        self.messages.reload()
        self.messages.rebuild_search_index()
        return agents


def merge_exports(parts: Sequence[dict[str, Path]], out_dir: Path) -> dict[str, Path]:
    """One Parquet file per table in ``out_dir`` from several stores' exports (a sharded
    store's shards); a block held by several (a copy on each) once, its newest copy. The
    parts' files are deleted."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    with duckdb.connect() as conn:
        for table in _DATA_TABLES:
            sources = [str(part[table.name]) for part in parts if table.name in part]
            path = out_dir / f"{table.name}.parquet"
            files = ", ".join(f"'{_sql_str(source)}'" for source in sources)
            rows = f"SELECT * FROM read_parquet([{files}], union_by_name = true)"
            if table is _BLOCKS:
                rows += " QUALIFY row_number() OVER (PARTITION BY id ORDER BY updated_at DESC) = 1 ORDER BY id"
            conn.execute(f"COPY ({rows}) TO '{_sql_str(path)}' (FORMAT parquet)")
            paths[table.name] = path
    for part in parts:
        for source in part.values():
            source.unlink(missing_ok=True)
            with suppress(OSError):
                source.parent.rmdir()
    return paths
