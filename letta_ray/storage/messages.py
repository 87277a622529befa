"""Every message of every agent, forever: the history behind recall memory.

``MessageStore`` keeps the ``messages`` table of the metadata file: appends in bulk,
pages by id, and searches by text (DuckDB's full-text index, BM25, plus a scan of the
tail the index does not cover yet), role and date. ``EmbeddedRecall`` is the agent
step's ``Recall`` protocol over it, in-process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime

from letta_ray.errors import NotFoundError, StorageError
from letta_ray.messages import Message, Role
from letta_ray.schemas import Cursor, Order
from letta_ray.storage._duckdb_file import DuckDBFile
from letta_ray.storage._duckdb_layout import (
    _FTS_IGNORE,
    _MESSAGES,
    _STORE_META,
    _WORD,
    FTS_REBUILD_THRESHOLD,
    _check_limit,
    _check_order,
    _like_pattern,
    _limit,
    _message_filters,
    _search_text,
    _utc_model,
    _where,
)


class MessageStore:
    """Agents' messages in the ``messages`` table of a ``DuckDBFile``.

    Each message gets a sequence number at insertion; the full-text index covers the
    messages up to a watermark and is rebuilt by a search once more than
    ``fts_rebuild_threshold`` messages lie beyond it.
    """

    def __init__(self, db: DuckDBFile, *, fts_rebuild_threshold: int = FTS_REBUILD_THRESHOLD) -> None:
        self._db = db
        self._fts_rebuild_threshold = fts_rebuild_threshold
        self.reload()

    def reload(self) -> None:
        """Read the sequence counter and the text index's mark from the file (after a bulk load)."""
        db = self._db
        with db.locked() as conn:
            self._max_seq: int = conn.execute(
                "SELECT coalesce(max(seq), 0) FROM messages"
            ).fetchone()[0]  # type: ignore[index]
            has_index = conn.execute(
                "SELECT count(*) FROM duckdb_schemas() WHERE schema_name = 'fts_main_messages'"
            ).fetchone()[0]  # type: ignore[index]
        watermark = db.get_meta("fts_watermark")
        self._fts_watermark = int(watermark) if has_index and watermark else 0

    def append_messages(self, messages: Sequence[Message]) -> None:
        """Store new messages in one bulk insert; an id already stored is a ConflictError."""
        if not messages:
            return
        with self._db.tx() as conn:
            first = self._max_seq + 1
            _MESSAGES.insert(conn, [
                _MESSAGES.row(_utc_model(m), seq=first + i, text=_search_text(m))
                for i, m in enumerate(messages)
            ])
            self._max_seq = first + len(messages) - 1

    def get_messages(self, ids: Sequence[str], *, missing_ok: bool = False) -> list[Message]:
        """The messages with these ids, in the order of ``ids`` (with ``missing_ok``, those
        stored here, in that order)."""
        with self._db.locked() as conn:
            rows = conn.execute(
                "SELECT id, doc FROM messages WHERE id IN (SELECT unnest(?::VARCHAR[]))", [list(ids)]
            ).fetchall()
        docs = dict(rows)
        if missing_ok:
            return [Message.model_validate_json(docs[i]) for i in ids if i in docs]
        missing = next((i for i in ids if i not in docs), None)
        if missing is not None:
            raise NotFoundError("message", missing)
        return [Message.model_validate_json(docs[i]) for i in ids]

    def list_messages(
        self,
        agent_id: str | None,
        *,
        limit: int | None = 50,
        before: Cursor | None = None,
        after: Cursor | None = None,
        order: Order = "asc",
        roles: Sequence[Role] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        run_id: str | None = None,
        step_id: str | None = None,
        conversation_id: str | None = None,
    ) -> list[Message]:
        """An agent's messages (every agent's with ``agent_id=None``) ordered by (created_at,
        insertion); only those of one run or step if asked.

        ``before``/``after`` are message ids; the range between them is sorted by
        ``order`` and cut at ``limit``. Page back with ``order="desc", before=<oldest>``,
        forward with ``order="asc", after=<newest>``. ``start``/``end`` are inclusive.
        """
        _check_limit(limit)
        direction = _check_order(order)
        clauses, params = _message_filters(agent_id, roles, start, end)
        for column, value in (("run_id", run_id), ("step_id", step_id),
                              ("json_extract_string(doc, '$.conversation_id')", conversation_id)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        with self._db.locked() as conn:
            for cursor, op in ((after, ">"), (before, "<")):
                if cursor is not None:
                    self._db.add_cursor(conn, clauses, params, "messages", "message", ("created_at", "seq"),
                                        cursor, op)
            rows = conn.execute(
                f"SELECT doc FROM messages {_where(clauses)} "
                f"ORDER BY created_at {direction}, seq {direction} {_limit(limit)}",
                params,
            ).fetchall()
        return [Message.model_validate_json(row[0]) for row in rows]

    def count_messages(self, agent_id: str) -> int:
        with self._db.locked() as conn:
            return conn.execute(
                "SELECT count(*) FROM messages WHERE agent_id = ?", [agent_id]
            ).fetchone()[0]  # type: ignore[index]

    def messages_of_runs(self, run_id_prefix: str) -> dict[str, list[Message]]:
        """Every stored message whose ``run_id`` starts with ``run_id_prefix``, by run, in order."""
        with self._db.locked() as conn:
            rows = conn.execute(
                "SELECT run_id, doc FROM messages WHERE starts_with(run_id, ?) ORDER BY run_id, created_at, seq",
                [run_id_prefix],
            ).fetchall()
        runs: dict[str, list[Message]] = {}
        for run_id, doc in rows:
            runs.setdefault(run_id, []).append(Message.model_validate_json(doc))
        return runs

    def delete_agent_messages(self, agent_id: str) -> None:
        """Delete an agent's whole history (part of deleting the agent)."""
        with self._db.tx() as conn:
            conn.execute("DELETE FROM messages WHERE agent_id = ?", [agent_id])

    # ------------------------------------------------------------------ search

    def search_messages(
        self,
        agent_id: str | None,
        query: str | None,
        *,
        roles: Sequence[Role] | None = None,
        limit: int = 10,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[Message]:
        """Full-text search of an agent's history (every agent's with ``agent_id=None``).

        Messages covered by the index are ranked by BM25; the newer, not yet indexed tail
        is scanned (case-insensitive, per query word) and follows, most words matched
        then newest first. No query: the most recent messages matching the filters.
        """
        _check_limit(limit)
        clauses, params = _message_filters(agent_id, roles, start, end)
        with self._db.locked() as conn:
            if not query or not query.strip():
                rows = conn.execute(
                    f"SELECT doc FROM messages {_where(clauses)} "
                    "ORDER BY created_at DESC, seq DESC LIMIT ?",
                    [*params, limit],
                ).fetchall()
                return [Message.model_validate_json(row[0]) for row in rows]
            if self._db.depth == 0 and self._max_seq - self._fts_watermark > self._fts_rebuild_threshold:
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
        with self._db.locked():
            if self._db.depth:
                raise StorageError("rebuild_search_index cannot run inside transaction()")
            with self._db.tx() as conn:
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


class EmbeddedRecall:
    """The ``Recall`` protocol over a ``MessageStore``, in-process (blocking calls in threads).

    Unit tests of the agent loop use this; the runtime uses the metadata store actor."""

    def __init__(self, messages: MessageStore) -> None:
        self.messages = messages

    async def search_messages(self, agent_id: str, query: str | None, *, roles: list[Role] | None = None,
                              limit: int = 10, start: datetime | None = None,
                              end: datetime | None = None) -> list[Message]:
        return await asyncio.to_thread(self.messages.search_messages, agent_id, query, roles=roles, limit=limit,
                                       start=start, end=end)

    async def count_messages(self, agent_id: str) -> int:
        return await asyncio.to_thread(self.messages.count_messages, agent_id)
