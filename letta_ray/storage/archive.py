"""Archival memory in LanceDB: one ``passages`` table for every agent.

``ArchivalStore`` is a synchronous adapter over a LanceDB directory. It does not embed:
callers bring vectors (the runtime has an embedder actor). ``EmbeddedArchive`` pairs a
store with an ``Embedder`` into the async ``Archive`` protocol the agent step uses.

Search is always prefiltered by agent (a BTREE index on ``agent_id``), optionally by
tags (a LABEL_LIST index) and a ``created_at`` range, then ranks by cosine distance,
by BM25 (LanceDB's native full-text index on ``text``) or by both, fused with
reciprocal rank fusion. Rows written since the last ``optimize()`` are not in the
indices yet; LanceDB scans them flat, so a passage is searchable as soon as ``insert``
returns.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import types
import typing
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import lance
import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import FTS, BTree, LabelList
from lancedb.query import ColumnOrdering, MatchQuery

from letta_ray.deps import Embedder, TagMatchMode
from letta_ray.errors import InvalidInputError, NotFoundError, StorageError
from letta_ray.schemas import Passage

SearchMode = Literal["hybrid", "vector", "fts"]

TABLE_NAME = "passages"
VECTOR_COLUMN = "vector"
RRF_K = 60
"""The k of reciprocal rank fusion, score = sum of 1 / (k + rank); 60 as in the paper."""

FRAGMENT_ROWS = 1024 * 1024
"""Compaction merges fragments smaller than this into ones of up to this many rows (Lance's
default); a fragment this big is not rewritten again. Fewer, bigger fragments search
faster: a million rows in 10 fragments of 100,000 took 24 ms per hybrid search, in one
fragment 15 ms. (LanceDB's ``optimize()`` compacts on every call, so it rewrote a table
of a million rows whole each time, 9 s; here compaction follows the deltas' merges.)"""
COMPACT_AT = 32
"""Small fragments (one per insert) that make a merging ``optimize`` compact them too."""
MERGE_DELTAS_AT = 8
"""Delta segments of the indices that make ``optimize`` merge the newest of them."""


def deltas_to_merge(rows_per_delta: Sequence[int]) -> int:
    """How many of the newest index deltas to merge (0: none), from each delta's rows,
    oldest first. Size-tiered, as an LSM tree: once ``MERGE_DELTAS_AT`` deltas pile up,
    the newest are merged together with each older one no bigger than them all, so a
    delta is rewritten about log2(table / delta) times in all, and the big first one
    (a million rows: 2 s to merge) only when the newer ones add up to its size."""
    if len(rows_per_delta) < MERGE_DELTAS_AT:
        return 0
    newest = list(reversed(rows_per_delta))
    count, total = 1, newest[0]
    for rows in newest[1:]:
        if rows > total:
            break
        count, total = count + 1, total + rows
    return count if count > 1 else 0

_NOT_STORED = {"embedding", "score"}  # embedding is stored as `vector`; score is per query


# --------------------------------------------------------------------------- schema


def _arrow_type(annotation: Any, field: str) -> pa.DataType:
    if annotation is str:
        return pa.string()
    if annotation is datetime:
        return pa.timestamp("us", tz="UTC")
    if annotation is int:
        return pa.int64()
    if annotation is float:
        return pa.float64()
    if annotation is bool:
        return pa.bool_()
    origin = typing.get_origin(annotation)
    if origin is list:
        (item,) = typing.get_args(annotation)
        return pa.list_(_arrow_type(item, field))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _arrow_type(args[0], field)
    raise TypeError(f"Passage.{field}: no Arrow type for {annotation!r}")


def _optional(annotation: Any) -> bool:
    return type(None) in typing.get_args(annotation)


def passage_schema(dim: int) -> pa.Schema:
    """The Arrow layout of the passages table, derived from the ``Passage`` model.

    Every stored field of ``Passage`` becomes a column of the matching type; the
    embedding becomes ``vector``, a fixed-size list of float32 that LanceDB searches.
    """
    fields = [
        pa.field(name, _arrow_type(info.annotation, name), nullable=_optional(info.annotation))
        for name, info in Passage.model_fields.items()
        if name not in _NOT_STORED
    ]
    fields.append(pa.field(VECTOR_COLUMN, pa.list_(pa.float32(), dim), nullable=False))
    return pa.schema(fields)


_COLUMNS = [name for name in Passage.model_fields if name not in _NOT_STORED]


# --------------------------------------------------------------------------- SQL


def sql_string(value: str) -> str:
    """``value`` as a SQL string literal: quotes doubled, nothing else is special."""
    if "\x00" in value:
        raise InvalidInputError("identifiers and tags may not contain NUL characters")
    return "'" + value.replace("'", "''") + "'"


def _sql_timestamp(moment: datetime) -> str:
    # isoformat, not strftime: %Y writes year 209 as '209', which Lance's parser refuses
    return f"TIMESTAMP '{_as_utc(moment).replace(tzinfo=None).isoformat(timespec='microseconds')}Z'"


def _as_utc(moment: datetime) -> datetime:
    """Naive datetimes are taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _owners(agent_id: str | Sequence[str] | None) -> list[str]:
    """Owner clauses: one owner (an agent or an archive), several, or everyone (None)."""
    if agent_id is None:
        return []
    if isinstance(agent_id, str):
        return [f"agent_id = {sql_string(agent_id)}"]
    if not agent_id:
        return ["false"]
    return [f"agent_id IN ({', '.join(sql_string(a) for a in agent_id)})"]


def _filter(
    agent_id: str | Sequence[str] | None,
    *,
    tags: Sequence[str] | None = None,
    tag_match_mode: TagMatchMode = "any",
    start: datetime | None = None,
    end: datetime | None = None,
) -> str:
    clauses = _owners(agent_id)
    if tags:
        if tag_match_mode not in ("any", "all"):
            raise InvalidInputError(f"tag_match_mode must be 'any' or 'all', not {tag_match_mode!r}")
        listed = ", ".join(sql_string(tag) for tag in tags)
        clauses.append(f"array_has_{tag_match_mode}(tags, [{listed}])")
    if start is not None:
        clauses.append(f"created_at >= {_sql_timestamp(start)}")
    if end is not None:
        clauses.append(f"created_at <= {_sql_timestamp(end)}")
    return " AND ".join(clauses) or "true"


# --------------------------------------------------------------------------- store


class ArchivalStore:
    """Passages of every agent in one LanceDB table, searchable by vector and text.

    Thread-safe: writes (insert, delete, table creation) are serialised by a lock, and
    optimize by one of its own that deletes also take (appends go on beside an optimize);
    reads run concurrently. One process should own writes to a directory (the
    runtime's archive actor); other readers see new rows after
    ``read_consistency_interval``.

    Every write adds a fragment whose rows the indices do not cover yet, and searches
    slow down with them (at 100k rows, 300 one-row inserts took hybrid search from 7 ms
    to 47 ms). So after ``optimize_every`` writes the store optimizes itself (its cost
    follows the rows written since: see ``optimize``); ``None`` leaves it to the caller.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        dim: int,
        *,
        read_consistency_interval: timedelta | None = None,
        optimize_every: int | None = 200,
        storage_options: dict[str, str] | None = None,
    ) -> None:
        if dim < 1:
            raise InvalidInputError(f"dim must be positive, got {dim}")
        if optimize_every is not None and optimize_every < 1:
            raise InvalidInputError(f"optimize_every must be at least 1 or None, got {optimize_every}")
        self.path = str(path)
        self.dim = dim
        self._schema = passage_schema(dim)
        # ``path`` may be an object-store URI (s3://...): LanceDB does that I/O itself, with
        # ``storage_options`` (see ``object_store.StorageLocation.lance_options``).
        self._storage_options = storage_options or None
        self._db = lancedb.connect(self.path, read_consistency_interval=read_consistency_interval,
                                   storage_options=self._storage_options)
        self._write_lock = threading.RLock()
        # optimize() (seconds at a million rows) holds only this one, so appends go on beside
        # it: Lance commits an append concurrently with a compaction or an index update (the
        # new fragments are simply not in the index yet). Deletes take both: a delete and a
        # compaction of the same fragments conflict.
        self._optimize_lock = threading.RLock()
        self._table_obj: Any = None
        self.optimize_every = optimize_every
        self._writes_since_optimize = 0

    # ------------------------------------------------------------------ table

    def _table(self) -> Any:
        table = self._table_obj
        if table is not None:
            return table
        with self._write_lock:
            if self._table_obj is None:
                self._table_obj = self._open_or_create()
            return self._table_obj

    def _open_or_create(self) -> Any:
        try:
            try:
                table = self._db.open_table(TABLE_NAME)
            except ValueError:  # lancedb's "Table 'passages' was not found"
                table = self._db.create_table(TABLE_NAME, schema=self._schema, exist_ok=True)
        except Exception as exc:  # lancedb raises plain ValueError/OSError/RuntimeError
            raise StorageError(f"cannot open the archive at {self.path}: {exc}") from exc
        missing = [name for name in self._schema.names if name not in table.schema.names]
        if missing:
            raise StorageError(
                f"the archive at {self.path} has no column(s) {', '.join(missing)}: it was written "
                "by an older Passage layout and needs migrating"
            )
        stored = table.schema.field(VECTOR_COLUMN).type
        if getattr(stored, "list_size", None) != self.dim:
            raise InvalidInputError(
                f"the archive at {self.path} holds {stored} vectors, not {self.dim}-dimensional ones"
            )
        indexed = {tuple(ix.columns) for ix in table.list_indices()}
        # Filters on agent_id without an index scan the whole table (185 ms vs 12.9 ms
        # at 100k rows), and so do lookups by id (10 ms vs 2.8 ms); LABEL_LIST serves
        # array_has_any/all; FTS is BM25 over text.
        indices = (("agent_id", BTree()), ("id", BTree()), ("tags", LabelList()), ("text", FTS()))
        for column, config in indices:
            if (column,) not in indexed:
                table.create_index(column, config=config, replace=False)
        return table

    # ------------------------------------------------------------------ writes

    def insert(self, passages: Sequence[Passage]) -> None:
        """Append passages, each with an embedding of ``dim`` floats, in one write."""
        if not passages:
            return
        for passage in passages:
            if passage.embedding is None:
                raise InvalidInputError(f"passage {passage.id} has no embedding")
            if len(passage.embedding) != self.dim:
                raise InvalidInputError(
                    f"passage {passage.id} has a {len(passage.embedding)}-dimensional "
                    f"embedding; the archive stores {self.dim}"
                )
        vectors = np.asarray([p.embedding for p in passages], dtype=np.float32)
        if not np.isfinite(vectors).all():
            raise InvalidInputError("embeddings must be finite numbers")
        data = pa.Table.from_pydict(
            {
                "id": [p.id for p in passages],
                "agent_id": [p.agent_id for p in passages],
                "text": [p.text for p in passages],
                "tags": [list(p.tags) for p in passages],
                "created_at": [_as_utc(p.created_at) for p in passages],
                VECTOR_COLUMN: pa.FixedSizeListArray.from_arrays(
                    pa.array(vectors.reshape(-1), type=pa.float32()), self.dim
                ),
            },
            schema=self._schema,
        )
        table = self._table()
        with self._write_lock:
            try:
                table.add(data)
            except Exception as exc:  # lancedb raises OSError/RuntimeError with the object store's reason
                raise StorageError(f"cannot write to the archive at {self.path}: {exc}") from exc
            due = self._wrote()
        if due:  # after the write lock: optimize takes its own lock first (deletes take both, in that order)
            self.optimize()

    def delete(self, passage_id: str, *, agent_id: str | None = None) -> None:
        """Delete one passage (of ``agent_id``, when given); NotFoundError if there is none."""
        where = f"id = {sql_string(passage_id)}"
        if agent_id is not None:
            where += f" AND agent_id = {sql_string(agent_id)}"
        table = self._table()
        with self._optimize_lock, self._write_lock:
            if table.count_rows(where) == 0:
                raise NotFoundError("passage", passage_id)
            table.delete(where)
            due = self._wrote()
        if due:
            self.optimize()

    def delete_agent(self, agent_id: str) -> int:
        """Delete every passage of an agent; returns how many there were."""
        where = f"agent_id = {sql_string(agent_id)}"
        table = self._table()
        with self._optimize_lock, self._write_lock:
            count = table.count_rows(where)
            due = False
            if count:
                table.delete(where)
                due = self._wrote()
        if due:
            self.optimize()
        return count

    def optimize(self, *, cleanup_older_than: timedelta | None = None) -> None:
        """Bring new rows into the indices and keep the fragments few, at a cost that follows
        the rows written since the last call, not the table's size.

        Each ``insert`` is one fragment and unindexed rows are scanned flat, so a busy
        archive should be optimized every few thousand rows. New rows go into a delta of
        each index (0.1 s for 15,000 new rows in a table of a million, where LanceDB's
        ``optimize()`` took 9 s: it rewrote the whole table and merged every index).
        Once ``MERGE_DELTAS_AT`` deltas pile up the newest are merged (``deltas_to_merge``),
        and then, if ``COMPACT_AT`` small fragments have piled up too, they are compacted
        into fragments of up to ``FRAGMENT_ROWS`` (Lance compacts together only
        fragments that the same index deltas cover, which the merge has just made). A
        load of ``COMPACT_AT`` fragments or more is compacted before it is indexed.
        ``cleanup_older_than`` drops table versions older than that (Lance keeps them
        all otherwise); only make it short when no other process reads the directory.
        """
        table = self._table()
        with self._optimize_lock:
            try:
                dataset = lance.dataset(table.uri, storage_options=self._storage_options)
                merge, unindexed = 0, 0
                indices = dataset.list_indices()
                if indices:  # each index has the same deltas: all are optimized at once
                    stats = dataset.stats.index_stats(indices[0]["name"])
                    merge = deltas_to_merge(stats["num_indexed_rows_per_delta"])
                    unindexed = stats["num_unindexed_fragments"]
                if unindexed >= COMPACT_AT:  # a load: its fragments together first (no index to remap)
                    dataset.optimize.compact_files(target_rows_per_fragment=FRAGMENT_ROWS)
                dataset.optimize.optimize_indices(num_indices_to_merge=merge)  # no new rows: nothing
                if merge and sum(1 for f in dataset.get_fragments() if f.physical_rows < FRAGMENT_ROWS) >= COMPACT_AT:
                    dataset.optimize.compact_files(target_rows_per_fragment=FRAGMENT_ROWS)
                if cleanup_older_than is not None:
                    dataset.cleanup_old_versions(older_than=cleanup_older_than)
            except Exception as exc:  # lance raises OSError/RuntimeError with the object store's reason
                raise StorageError(f"cannot optimize the archive at {self.path}: {exc}") from exc
            table.checkout_latest()  # this handle reads the optimized version from now on
        with self._write_lock:
            self._writes_since_optimize = 0

    def _wrote(self) -> bool:
        """Count a write (under the write lock); whether enough have piled up to optimize."""
        self._writes_since_optimize += 1
        return self.optimize_every is not None and self._writes_since_optimize >= self.optimize_every

    def unindexed_rows(self) -> int:
        """Rows written since the last ``optimize()``, which searches scan flat."""
        table = self._table()
        for index in table.list_indices():
            if tuple(index.columns) == ("text",):
                return index.num_unindexed_rows
        return table.count_rows()

    # ------------------------------------------------------------------ reads

    def get(
        self, passage_id: str, *, agent_id: str | None = None, with_embedding: bool = False
    ) -> Passage:
        """One passage by id (of ``agent_id``, when given); NotFoundError if there is none."""
        where = f"id = {sql_string(passage_id)}"
        if agent_id is not None:
            where += f" AND agent_id = {sql_string(agent_id)}"
        rows = self._query(where, limit=1, with_embedding=with_embedding)
        if not rows:
            raise NotFoundError("passage", passage_id)
        return rows[0]

    def count(self, agent_id: str | Sequence[str]) -> int:
        return self._table().count_rows(" AND ".join(_owners(agent_id)) or None)

    def search(
        self,
        agent_id: str | Sequence[str] | None,
        *,
        query_text: str | None = None,
        query_vector: Sequence[float] | None = None,
        tags: Sequence[str] | None = None,
        tag_match_mode: TagMatchMode = "any",
        top_k: int = 5,
        start: datetime | None = None,
        end: datetime | None = None,
        mode: SearchMode = "hybrid",
    ) -> list[Passage]:
        """The agent's passages best matching the query, best first, with ``score`` set.

        ``vector`` ranks by cosine similarity (score in [-1, 1]), ``fts`` by BM25,
        ``hybrid`` fuses whichever of the two queries are given by reciprocal rank
        (score = sum of 1/(60 + rank)). With no query at all: the newest passages, with
        no score. Filters (tags, ``start <= created_at <= end``) apply before ranking.
        """
        if top_k < 1:
            raise InvalidInputError(f"top_k must be at least 1, got {top_k}")
        if mode not in ("hybrid", "vector", "fts"):
            raise InvalidInputError(f"mode must be 'hybrid', 'vector' or 'fts', not {mode!r}")
        if query_text is not None and not query_text.strip():
            query_text = None
        vector = None
        if query_vector is not None:
            vector = np.asarray(query_vector, dtype=np.float32)
            if vector.shape != (self.dim,) or not np.isfinite(vector).all():
                raise InvalidInputError(
                    f"query_vector must be {self.dim} finite floats, got shape {vector.shape}"
                )
        where = _filter(agent_id, tags=tags, tag_match_mode=tag_match_mode, start=start, end=end)

        if mode == "vector":
            if vector is None:
                raise InvalidInputError("vector search needs query_vector")
            return self._vector_search(vector, where, top_k)
        if mode == "fts":
            if query_text is None:
                raise InvalidInputError("full-text search needs query_text")
            return self._fts_search(query_text, where, top_k)
        if vector is None and query_text is None:
            return self._query(where, limit=top_k, newest_first=True)
        if vector is None:
            assert query_text is not None
            return self._fts_search(query_text, where, top_k)
        if query_text is None:
            return self._vector_search(vector, where, top_k)
        # Fuse from a deeper pool than top_k, so a passage ranked modestly by both
        # lists can overtake one ranked first by only one of them.
        pool = max(top_k * 3, 20)
        return reciprocal_rank_fusion(
            [self._vector_search(vector, where, pool), self._fts_search(query_text, where, pool)],
            top_k,
        )

    # ------------------------------------------------------------------ internals

    def _query(
        self,
        where: str,
        *,
        limit: int,
        offset: int = 0,
        newest_first: bool = False,
        with_embedding: bool = False,
    ) -> list[Passage]:
        columns = _COLUMNS + ([VECTOR_COLUMN] if with_embedding else [])
        ordering = [
            ColumnOrdering(column_name="created_at", ascending=not newest_first),
            ColumnOrdering(column_name="id", ascending=not newest_first),
        ]
        query = self._table().search().where(where).select(columns).order_by(ordering).limit(limit)
        if offset:
            query = query.offset(offset)
        return [_to_passage(row) for row in query.to_arrow().to_pylist()]

    def _vector_search(self, vector: np.ndarray, where: str, limit: int) -> list[Passage]:
        # No ANN index: the agent prefilter leaves few enough rows that an exact scan
        # is fast, and exact results need no tuning of probes or recall.
        rows = (
            self._table()
            .search(vector, query_type="vector", vector_column_name=VECTOR_COLUMN)
            .distance_type("cosine")
            .where(where, prefilter=True)
            .select([*_COLUMNS, "_distance"])
            .limit(limit)
            .to_arrow()
            .to_pylist()
        )
        return [_to_passage(row, score=1.0 - row["_distance"]) for row in rows]

    def _fts_search(self, text: str, where: str, limit: int) -> list[Passage]:
        # A MatchQuery takes the text as words to match (any of them, BM25-ranked), so
        # quotes or operators the model writes are never parsed as query syntax.
        rows = (
            self._table()
            .search(MatchQuery(text, "text"), query_type="fts")
            .where(where, prefilter=True)
            .select([*_COLUMNS, "_score"])
            .limit(limit)
            .to_arrow()
            .to_pylist()
        )
        return [_to_passage(row, score=row["_score"]) for row in rows]

    def list(
        self,
        agent_id: str,
        *,
        limit: int = 100,
        offset: int = 0,
        after: str | None = None,
        ascending: bool = True,
        with_embedding: bool = False,
    ) -> list[Passage]:
        """The agent's passages in ``created_at`` order, paged by ``offset`` or by ``after``.

        ``after`` is the id of a passage: the page starts right after it, in the order
        asked for (NotFoundError if the agent has no such passage).
        """
        if limit < 1:
            raise InvalidInputError(f"limit must be at least 1, got {limit}")
        if offset < 0:
            raise InvalidInputError(f"offset must not be negative, got {offset}")
        where = f"agent_id = {sql_string(agent_id)}"
        if after is not None:
            cursor = self.get(after, agent_id=agent_id)
            ts, pid = _sql_timestamp(cursor.created_at), sql_string(cursor.id)
            op = ">" if ascending else "<"
            where += f" AND (created_at {op} {ts} OR (created_at = {ts} AND id {op} {pid}))"
        return self._query(
            where,
            limit=limit,
            offset=offset,
            newest_first=not ascending,
            with_embedding=with_embedding,
        )


def _to_passage(row: dict[str, Any], score: float | None = None) -> Passage:
    vector = row.get(VECTOR_COLUMN)
    if score is not None and math.isnan(score):
        score = None
    return Passage(
        id=row["id"],
        agent_id=row["agent_id"],
        text=row["text"],
        tags=row["tags"] or [],
        created_at=row["created_at"],
        embedding=list(vector) if vector is not None else None,
        score=score,
    )


def reciprocal_rank_fusion(rankings: Sequence[Sequence[Passage]], top_k: int) -> list[Passage]:
    """Fuse ranked lists: each passage scores sum of 1/(RRF_K + rank) over the lists."""
    scores: dict[str, float] = {}
    first_seen: dict[str, Passage] = {}
    for ranking in rankings:
        for rank, passage in enumerate(ranking, start=1):
            scores[passage.id] = scores.get(passage.id, 0.0) + 1.0 / (RRF_K + rank)
            first_seen.setdefault(passage.id, passage)
    # sorted() is stable: ties keep the order of first appearance (the first ranking's)
    best = sorted(scores, key=lambda pid: scores[pid], reverse=True)[:top_k]
    return [first_seen[pid].model_copy(update={"score": scores[pid]}) for pid in best]


# --------------------------------------------------------------------------- protocol


class EmbeddedArchive:
    """The ``Archive`` protocol over an ``ArchivalStore`` and an ``Embedder``, in-process.

    Embeds on insert and search, and runs the store's blocking calls in worker threads.
    Unit tests of the agent loop use this; the runtime uses the archive actor instead.
    """

    def __init__(self, store: ArchivalStore, embedder: Embedder) -> None:
        if embedder.dim != store.dim:
            raise InvalidInputError(
                f"the embedder makes {embedder.dim}-dimensional vectors; "
                f"the archive stores {store.dim}"
            )
        self.store = store
        self.embedder = embedder

    async def insert(self, agent_id: str, text: str, tags: list[str] | None = None) -> Passage:
        [vector] = await self.embedder.embed([text])
        passage = Passage(agent_id=agent_id, text=text, tags=list(tags or []), embedding=vector)
        await asyncio.to_thread(self.store.insert, [passage])
        return passage.model_copy(update={"embedding": None})

    async def search(
        self,
        agent_id: str | list[str],
        query: str | None,
        *,
        tags: list[str] | None = None,
        tag_match_mode: TagMatchMode = "any",
        top_k: int = 5,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[Passage]:
        vector = None
        if query is not None and query.strip():
            [vector] = await self.embedder.embed([query])
        else:
            query = None
        return await asyncio.to_thread(
            self.store.search,
            agent_id,
            query_text=query,
            query_vector=vector,
            tags=tags,
            tag_match_mode=tag_match_mode,
            top_k=top_k,
            start=start,
            end=end,
        )

    async def count(self, agent_id: str | list[str]) -> int:
        return await asyncio.to_thread(self.store.count, agent_id)
