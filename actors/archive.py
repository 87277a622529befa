"""The archive actor: the one owner of the LanceDB archive, batching appends; and its handle.

Appends arriving together land as one LanceDB version; the table is optimised now and
then, in the background. A plain class, unit-tested directly; ``ray.remote`` wraps it
where it is created.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from letta_ray.deps import TagMatchMode
from letta_ray.schemas import Passage

from ._facade import ActorFacade, remote_method
from ._group_commit import GroupCommitter

if TYPE_CHECKING:
    from letta_ray.storage.archive import ArchivalStore

# LanceDB is imported inside the actor, not here: a driver that imports this module to
# create the actors must not load lancedb before Ray forks its processes.

log = logging.getLogger(__name__)


class ArchiveActor:
    """Owner of the LanceDB archive: batched appends, searches, periodic optimize()."""

    def __init__(self, path: str | Path, embedder: Any, dim: int, batch_ms: float = 5.0,
                 optimize_every: int = 2_000, storage_options: dict[str, str] | None = None) -> None:
        """``embedder`` is anything with ``await embedder.embed(texts)`` (the embedder actor's handle);
        ``path`` is a folder or an object-store URI, with its ``storage_options``."""
        from letta_ray.storage.archive import ArchivalStore

        self.store: ArchivalStore = ArchivalStore(path, dim, storage_options=storage_options)
        self.embedder = embedder
        self._optimize_every = optimize_every
        self._since_optimize = 0
        self._optimizing: asyncio.Task[None] | None = None
        self._writes = GroupCommitter(self._append, batch_ms / 1000.0)

    def _append(self, fns: list[Callable[[], Any]]) -> list[tuple[bool, Any]]:
        passages: list[Passage] = []
        for fn in fns:
            passages.extend(fn())
        self.store.insert(passages)  # one LanceDB version for the whole batch
        return [(True, None)] * len(fns)

    async def insert(self, agent_id: str, text: str, tags: list[str] | None = None) -> Passage:
        [passage] = await self.insert_many(agent_id, [text], tags)
        return passage

    async def insert_many(self, agent_id: str, texts: list[str], tags: list[str] | None = None) -> list[Passage]:
        return await self.insert_passages([Passage(agent_id=agent_id, text=t, tags=list(tags or [])) for t in texts])

    async def insert_passages(self, passages: list[Passage]) -> list[Passage]:
        """Store passages (any owners, their own tags and times), embedded here in one batch."""
        vectors = await self.embedder.embed([p.text for p in passages])
        passages = [p.model_copy(update={"embedding": v}) for p, v in zip(passages, vectors, strict=True)]
        await self._writes.submit(lambda: passages)
        self._since_optimize += len(passages)
        if self._since_optimize >= self._optimize_every and (self._optimizing is None or self._optimizing.done()):
            self._since_optimize = 0
            self._optimizing = asyncio.create_task(self._optimize())
        return [p.model_copy(update={"embedding": None}) for p in passages]

    # LanceDB keeps every table version for 7 days unless told: under steady writes the
    # versions (and the memory that tracks them) grow without end (found by bench/soak.py).
    # This actor is the archive's only writer, and nothing reads a version an hour old.
    KEEP_VERSIONS = timedelta(hours=1)

    async def _optimize(self) -> None:
        started = time.perf_counter()
        try:
            await asyncio.to_thread(self.store.optimize, cleanup_older_than=self.KEEP_VERSIONS)
        except Exception:  # optimisation is housekeeping; a failure must not fail writes
            log.exception("archive optimize failed")
        else:
            log.info("archive optimized in %.2fs", time.perf_counter() - started)

    async def optimize(self) -> None:
        await self._optimize()

    async def search(self, agent_id: str | list[str] | None, query: str | None, *, tags: list[str] | None = None,
                     tag_match_mode: TagMatchMode = "any", top_k: int = 5, start: datetime | None = None,
                     end: datetime | None = None) -> list[Passage]:
        vector = None
        if query is not None and query.strip():
            [vector] = await self.embedder.embed([query])
        else:
            query = None
        return await asyncio.to_thread(self.store.search, agent_id, query_text=query, query_vector=vector,
                                       tags=tags, tag_match_mode=tag_match_mode, top_k=top_k, start=start, end=end)

    async def count(self, agent_id: str | list[str]) -> int:
        return await asyncio.to_thread(self.store.count, agent_id)

    async def list(self, agent_id: str, *, limit: int = 100, after: str | None = None,
                   ascending: bool = True) -> list[Passage]:
        return await asyncio.to_thread(self.store.list, agent_id, limit=limit, after=after, ascending=ascending)

    async def get(self, passage_id: str, agent_id: str | None = None) -> Passage:
        return await asyncio.to_thread(self.store.get, passage_id, agent_id=agent_id)

    async def delete(self, passage_id: str, agent_id: str | None = None) -> None:
        await asyncio.to_thread(self.store.delete, passage_id, agent_id=agent_id)

    async def delete_agent(self, agent_id: str) -> int:
        return await asyncio.to_thread(self.store.delete_agent, agent_id)

    async def ping(self) -> str:
        return "ok"


class ArchiveHandle(ActorFacade):
    """The archive actor's methods, awaited; the step's ``Archive`` protocol."""

    insert = remote_method(ArchiveActor.insert)
    insert_many = remote_method(ArchiveActor.insert_many)
    insert_passages = remote_method(ArchiveActor.insert_passages)
    search = remote_method(ArchiveActor.search)
    count = remote_method(ArchiveActor.count)
    list = remote_method(ArchiveActor.list)
    get = remote_method(ArchiveActor.get)
    delete = remote_method(ArchiveActor.delete)
    delete_agent = remote_method(ArchiveActor.delete_agent)
    optimize = remote_method(ArchiveActor.optimize)
    ping = remote_method(ArchiveActor.ping)
