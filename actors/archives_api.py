"""Shared archival memory in the driver API: ``client.archives`` (the shape of the Letta SDK's).

An archive is a set of passages several agents share. Attached to an agent, it joins the
agent's archival memory: ``archival_memory_search`` covers the agent's own passages and
those of its archives, and ``archival_memory_insert`` writes into its first archive. In the
archive store an archive's passages are owned by the archive's id, as an agent's by its own.
Each method has an ``*_async`` twin.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from letta_ray.deps import TagMatchMode
from letta_ray.errors import InvalidInputError
from letta_ray.schemas import Archive, EmbeddingConfig, Order, Passage, changed

from .handles import AgentHandle
from .hosts import Connection


class ArchivesAPI:
    """``client.archives``: create archives, fill them, attach them to agents, search them."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.store = connection.runtime.store
        self.archive = connection.runtime.archive

    def _run(self, coro: Any) -> Any:
        return self.connection.loop.run(coro)

    # ---------------------------------------------------------------- archives

    async def create_async(self, name: str, *, description: str | None = None,
                           metadata: dict[str, Any] | None = None) -> Archive:
        settings = self.connection.runtime.settings
        archive = Archive(name=name, description=description, metadata=metadata or {},
                          embedding_config=EmbeddingConfig(embedding_model=settings.embedding_model,
                                                           embedding_dim=settings.embedding_dim))
        return await self.store.upsert_archive(archive)

    def create(self, name: str, *, description: str | None = None, metadata: dict[str, Any] | None = None) -> Archive:
        """A new, empty archive (its passages are embedded by the deployment's embedder)."""
        return self._run(self.create_async(name, description=description, metadata=metadata))

    async def list_async(self, *, agent_id: str | None = None, name: str | None = None, after: str | None = None,
                         before: str | None = None, limit: int | None = 50, order: Order = "asc") -> list[Archive]:
        ids = (await self.store.get_agent(agent_id)).archive_ids if agent_id is not None else None
        return await self.store.list_archives(name=name, ids=ids, after=after, before=before, limit=limit,
                                              order=order)

    def list(self, **filters: Any) -> list[Archive]:
        """Archives, oldest first: ``agent_id`` (those attached to it), ``name``; paged by id."""
        return self._run(self.list_async(**filters))

    async def retrieve_async(self, archive_id: str) -> Archive:
        return await self.store.get_archive(archive_id)

    def retrieve(self, archive_id: str) -> Archive:
        return self._run(self.retrieve_async(archive_id))

    async def update_async(self, archive_id: str, *, name: str | None = None, description: str | None = None,
                           metadata: dict[str, Any] | None = None) -> Archive:
        archive = await self.store.get_archive(archive_id)
        changes = {k: v for k, v in (("name", name), ("description", description), ("metadata", metadata))
                   if v is not None}
        if "name" in changes and not str(changes["name"]).strip():
            raise InvalidInputError("an archive's name must not be empty")
        return await self.store.upsert_archive(changed(archive, changes))

    def update(self, archive_id: str, **changes: Any) -> Archive:
        """Rename an archive or change its description or metadata."""
        return self._run(self.update_async(archive_id, **changes))

    async def delete_async(self, archive_id: str) -> None:
        await self.store.get_archive(archive_id)  # NotFoundError first
        for agent_id in await self.store.agents_with_archive(archive_id):
            await self.detach_async(agent_id, archive_id)
        await self.archive.delete_agent(archive_id)
        await self.store.delete_archive(archive_id)

    def delete(self, archive_id: str) -> None:
        """Delete an archive with its passages, detaching it from every agent."""
        self._run(self.delete_async(archive_id))

    # ---------------------------------------------------------------- attachments

    async def attach_async(self, agent_id: str, archive_id: str) -> list[str]:
        await self.store.get_archive(archive_id)
        return await AgentHandle(self.connection, agent_id, "").set_membership_async("archive_ids", archive_id, True)

    def attach(self, agent_id: str, archive_id: str) -> list[str]:
        """Share an archive with an agent; returns the agent's archive ids."""
        return self._run(self.attach_async(agent_id, archive_id))

    async def detach_async(self, agent_id: str, archive_id: str) -> list[str]:
        return await AgentHandle(self.connection, agent_id, "").set_membership_async("archive_ids", archive_id, False)

    def detach(self, agent_id: str, archive_id: str) -> list[str]:
        return self._run(self.detach_async(agent_id, archive_id))

    # ---------------------------------------------------------------- passages

    async def insert_async(self, archive_id: str, passages: list[dict[str, Any]]) -> list[Passage]:
        await self.store.get_archive(archive_id)
        if not passages:
            return []
        made = []
        for item in passages:
            text = item.get("text")
            if not isinstance(text, str) or not text.strip():
                raise InvalidInputError("every passage needs a non-empty text")
            made.append(Passage(agent_id=archive_id, text=text, tags=list(item.get("tags") or []),
                                **({"created_at": item["created_at"]} if item.get("created_at") else {})))
        return await self.archive.insert_passages(made)

    def insert(self, archive_id: str, text: str, *, tags: list[str] | None = None,
               created_at: datetime | None = None) -> Passage:
        """Add a passage to an archive (embedded now); returns it."""
        [passage] = self._run(self.insert_async(archive_id, [{"text": text, "tags": tags, "created_at": created_at}]))
        return passage

    async def passages_async(self, archive_id: str, *, limit: int = 100, after: str | None = None,
                             ascending: bool = True) -> list[Passage]:
        await self.store.get_archive(archive_id)
        return await self.archive.list(archive_id, limit=limit, after=after, ascending=ascending)

    def passages(self, archive_id: str, **paging: Any) -> list[Passage]:
        """An archive's passages, oldest first (``after`` a passage id, ``limit``, ``ascending``)."""
        return self._run(self.passages_async(archive_id, **paging))

    async def delete_passage_async(self, archive_id: str, passage_id: str) -> None:
        await self.archive.delete(passage_id, agent_id=archive_id)

    def delete_passage(self, archive_id: str, passage_id: str) -> None:
        self._run(self.delete_passage_async(archive_id, passage_id))

    async def search_async(self, query: str | None, *, agent_id: str | None = None, archive_id: str | None = None,
                           tags: list[str] | None = None, tag_match_mode: TagMatchMode = "any",
                           start: datetime | None = None, end: datetime | None = None,
                           limit: int = 50) -> list[Passage]:
        owners: list[str] | None = None
        if agent_id is not None:
            owners = (await self.store.get_agent(agent_id)).archive_owners
        if archive_id is not None:
            await self.store.get_archive(archive_id)
            owners = [archive_id] if owners is None else [o for o in owners if o == archive_id]
        if not 1 <= limit <= 1000:
            raise InvalidInputError(f"limit must be between 1 and 1000, got {limit}")
        return await self.archive.search(owners, query, tags=tags, tag_match_mode=tag_match_mode, top_k=limit,
                                         start=start, end=end)

    def search(self, query: str | None, **filters: Any) -> list[Passage]:
        """Passages best matching ``query`` (vector and full text), best first, with ``score``:
        an agent's archival memory (``agent_id``: its own and its archives'), one archive's
        (``archive_id``), or everyone's; by ``tags`` and dates too."""
        return self._run(self.search_async(query, **filters))
