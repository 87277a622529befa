"""Routes of /v1/archives (archival memory agents share), its attachments, and /v1/passages/search."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field

from letta_ray.schemas import Archive, Order, time_cursors

from ._common import ClientDep, page_limit
from .schemas import DateTime, EmbeddingConfigView, PassageView

archives = APIRouter(prefix="/v1/archives", tags=["archives"])
agent_archives = APIRouter(prefix="/v1/agents", tags=["archives"])
passages = APIRouter(prefix="/v1/passages", tags=["passages"])


class ArchiveView(BaseModel):
    id: str
    name: str
    description: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    embedding_config: EmbeddingConfigView | None = None
    vector_db_provider: str = "lancedb"
    created_at: datetime
    updated_at: datetime | None = None

    @classmethod
    def of(cls, archive: Archive) -> ArchiveView:
        return cls(**archive.model_dump(exclude={"embedding_config"}),
                   embedding_config=EmbeddingConfigView.of(archive.embedding_config))


class CreateArchiveRequest(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    description: str | None = None
    metadata: dict[str, Any] | None = None
    embedding: str | None = Field(default=None, description="accepted; passages use the deployment's embedder")
    embedding_config: dict[str, Any] | None = None


class ModifyArchiveRequest(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = None
    metadata: dict[str, Any] | None = None


class CreateArchivePassageRequest(BaseModel):
    text: str = Field(min_length=1)
    tags: list[str] | None = None
    created_at: DateTime | None = None
    metadata: dict[str, Any] | None = None


class CreateArchivePassagesRequest(BaseModel):
    passages: list[CreateArchivePassageRequest] = Field(min_length=1, max_length=10_000)


@archives.post("/", response_model=ArchiveView, summary="Create an archive (archival memory to share)")
async def create_archive(body: CreateArchiveRequest, client: ClientDep) -> ArchiveView:
    return ArchiveView.of(await client.archives.create_async(body.name, description=body.description,
                                                             metadata=body.metadata))


@archives.get("/", response_model=list[ArchiveView], summary="List archives")
async def list_archives(client: ClientDep, agent_id: str | None = None, name: str | None = None,
                        after: str | None = None, before: str | None = None,
                        limit: Annotated[int | None, page_limit()] = 50, order: Order = "desc",
                        order_by: Literal["created_at"] = "created_at") -> list[ArchiveView]:
    after, before = time_cursors(order, after, before)
    found = await client.archives.list_async(agent_id=agent_id, name=name, after=after, before=before, limit=limit,
                                             order=order)
    return [ArchiveView.of(a) for a in found]


@archives.get("/{archive_id}", response_model=ArchiveView, summary="Retrieve an archive")
async def retrieve_archive(archive_id: str, client: ClientDep) -> ArchiveView:
    return ArchiveView.of(await client.archives.retrieve_async(archive_id))


@archives.patch("/{archive_id}", response_model=ArchiveView, summary="Rename or describe an archive")
async def modify_archive(archive_id: str, body: ModifyArchiveRequest, client: ClientDep) -> ArchiveView:
    return ArchiveView.of(await client.archives.update_async(archive_id, **body.model_dump(exclude_unset=True)))


@archives.delete("/{archive_id}", status_code=204, summary="Delete an archive and its passages")
async def delete_archive(archive_id: str, client: ClientDep) -> Response:
    await client.archives.delete_async(archive_id)
    return Response(status_code=204)


@archives.get("/{archive_id}/agents", response_model=list[dict[str, Any]], summary="Agents an archive is attached to")
async def list_archive_agents(archive_id: str, client: ClientDep) -> list[dict[str, Any]]:
    await client.archives.retrieve_async(archive_id)
    ids = await client.runtime.store.agents_with_archive(archive_id)
    return [{"id": agent_id} for agent_id in ids]


@archives.post("/{archive_id}/passages", response_model=PassageView, summary="Add a passage to an archive")
async def create_archive_passage(archive_id: str, body: CreateArchivePassageRequest, client: ClientDep) -> PassageView:
    [made] = await client.archives.insert_async(archive_id, [body.model_dump()])
    return PassageView.of(made)


@archives.post("/{archive_id}/passages/batch", response_model=list[PassageView],
               summary="Add many passages to an archive, embedded in one batch")
async def create_archive_passages(archive_id: str, body: CreateArchivePassagesRequest,
                                  client: ClientDep) -> list[PassageView]:
    made = await client.archives.insert_async(archive_id, [p.model_dump() for p in body.passages])
    return [PassageView.of(p) for p in made]


@archives.get("/{archive_id}/passages", response_model=list[PassageView], summary="An archive's passages")
async def list_archive_passages(archive_id: str, client: ClientDep, after: str | None = None,
                                limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                                order: Order = "asc") -> list[PassageView]:
    found = await client.archives.passages_async(archive_id, limit=limit, after=after, ascending=order == "asc")
    return [PassageView.of(p) for p in found]


@archives.delete("/{archive_id}/passages/{passage_id}", status_code=204, summary="Delete a passage of an archive")
async def delete_archive_passage(archive_id: str, passage_id: str, client: ClientDep) -> Response:
    await client.archives.delete_passage_async(archive_id, passage_id)
    return Response(status_code=204)


@agent_archives.patch("/{agent_id}/archives/attach/{archive_id}", summary="Share an archive with an agent")
async def attach_archive(agent_id: str, archive_id: str, client: ClientDep) -> None:
    await client.archives.attach_async(agent_id, archive_id)


@agent_archives.patch("/{agent_id}/archives/detach/{archive_id}", summary="Stop sharing an archive with an agent")
async def detach_archive(agent_id: str, archive_id: str, client: ClientDep) -> None:
    await client.archives.detach_async(agent_id, archive_id)


class PassageSearchRequest(BaseModel):
    query: str | None = None
    agent_id: str | None = None
    archive_id: str | None = None
    tags: list[str] | None = None
    tag_match_mode: Literal["any", "all"] = "any"
    start_date: DateTime | None = None
    end_date: DateTime | None = None
    limit: int = Field(default=50, ge=1, le=1000)


class PassageSearchResult(BaseModel):
    passage: PassageView
    score: float
    metadata: dict[str, Any] = Field(default_factory=dict)


@passages.post("/search", response_model=list[PassageSearchResult],
               summary="Search passages (an agent's, an archive's, or all) by meaning and words, tags and dates")
async def search_all_passages(body: PassageSearchRequest, client: ClientDep) -> list[PassageSearchResult]:
    found = await client.archives.search_async(body.query, agent_id=body.agent_id, archive_id=body.archive_id,
                                               tags=body.tags, tag_match_mode=body.tag_match_mode,
                                               start=body.start_date, end=body.end_date, limit=body.limit)
    return [PassageSearchResult(passage=PassageView.of(p), score=p.score if p.score is not None else 0.0)
            for p in found]
