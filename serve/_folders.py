"""Routes of /v1/folders (documents agents read), their files and uploads, and an agent's folders and files."""

from __future__ import annotations

import os
import tempfile
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, Field

from letta_ray.actors.client import Client
from letta_ray.errors import InvalidInputError
from letta_ray.schemas import FileMetadata, Folder, Order, time_cursors

from ._common import ClientDep, page, page_limit
from .schemas import EmbeddingConfigView, PositiveInteger

folders = APIRouter(prefix="/v1/folders", tags=["folders"])
agent_folders = APIRouter(prefix="/v1/agents", tags=["folders"])

# An upload goes to disk in pieces of this size: a large file never sits in memory whole.
UPLOAD_PIECE = 1 << 20


class FolderView(BaseModel):
    id: str
    name: str
    description: str | None = None
    instructions: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    embedding_config: EmbeddingConfigView
    created_at: datetime
    updated_at: datetime | None = None

    @classmethod
    def of(cls, folder: Folder) -> FolderView:
        return cls(**folder.model_dump(exclude={"embedding_config"}),
                   embedding_config=EmbeddingConfigView.of(folder.embedding_config))


class FileView(BaseModel):
    """Letta's FileMetadata (``source_id`` is the folder's id)."""

    id: str
    source_id: str
    folder_id: str
    file_name: str
    original_file_name: str
    file_type: str
    file_size: int
    processing_status: str
    error_message: str | None = None
    total_chunks: int | None = None
    chunks_embedded: int | None = None
    content: str | None = None
    created_at: datetime
    updated_at: datetime | None = None

    @classmethod
    def of(cls, file: FileMetadata, content: str | None = None) -> FileView:
        return cls(**file.model_dump(), source_id=file.folder_id, content=content)


class CreateFolderRequest(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    description: str | None = None
    instructions: str | None = None
    metadata: dict[str, Any] | None = None
    embedding: str | None = Field(default=None, description="accepted: files are embedded by the deployment's embedder")
    embedding_config: dict[str, Any] | None = None
    embedding_chunk_size: PositiveInteger | None = None


class ModifyFolderRequest(BaseModel):
    """The fields to change (those sent); a name and metadata are not null."""

    name: str = Field(default=None, min_length=1, max_length=200)  # type: ignore[assignment]
    description: str | None = None
    instructions: str | None = None
    metadata: dict[str, Any] = Field(default=None)  # type: ignore[assignment]


@folders.post("/", response_model=FolderView, summary="Create a folder of documents")
async def create_folder(body: CreateFolderRequest, client: ClientDep) -> FolderView:
    return FolderView.of(await client.folders.create_async(body.name, description=body.description,
                                                           instructions=body.instructions, metadata=body.metadata))


@folders.get("/", response_model=list[FolderView], summary="List folders")
async def list_folders(client: ClientDep, name: str | None = None, after: str | None = None,
                       before: str | None = None, limit: Annotated[int | None, page_limit()] = 50,
                       order: Order = "asc", order_by: Literal["created_at"] = "created_at") -> list[FolderView]:
    after, before = time_cursors(order, after, before)
    return [FolderView.of(f) for f in await client.folders.list_async(name=name, after=after, before=before,
                                                                      limit=limit, order=order)]


@folders.get("/count", response_model=int, summary="How many folders there are")
async def count_folders(client: ClientDep) -> int:
    return len(await client.folders.list_async(limit=None))


@folders.get("/{folder_id}", response_model=FolderView, summary="Retrieve a folder")
async def retrieve_folder(folder_id: str, client: ClientDep) -> FolderView:
    return FolderView.of(await client.folders.retrieve_async(folder_id))


@folders.patch("/{folder_id}", response_model=FolderView, summary="Rename or describe a folder")
async def modify_folder(folder_id: str, body: ModifyFolderRequest, client: ClientDep) -> FolderView:
    return FolderView.of(await client.folders.update_async(folder_id, **body.model_dump(exclude_unset=True)))


@folders.delete("/{folder_id}", summary="Delete a folder with its files")
async def delete_folder(folder_id: str, client: ClientDep) -> dict[str, str]:
    await client.folders.delete_async(folder_id)
    return {"message": f"Folder id={folder_id} successfully deleted"}


@folders.post("/{folder_id}/upload", response_model=FileView,
              summary="Upload a file (.txt, .md, .json, .csv, .pdf, code, ...); it is processed in the background")
async def upload_file(folder_id: str, client: ClientDep, file: Annotated[UploadFile, File()],
                      name: str | None = None,
                      duplicate_handling: Literal["skip", "error", "suffix", "replace"] = "suffix") -> FileView:
    await client.folders.retrieve_async(folder_id)  # 404 before reading the body
    limit = client.settings.max_upload_mb * 2**20
    path = await _save(file, limit)
    meta = await client.folders.upload_async(folder_id, path, name=name or file.filename or "upload.txt",
                                             duplicate_handling=duplicate_handling, delete_after=True)
    return FileView.of(meta)


async def _save(upload: UploadFile, limit: int) -> str:
    """The upload in a temporary file, written a piece at a time (at most ``limit`` bytes)."""
    fd, path = tempfile.mkstemp(prefix="letta-ray-upload-")
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            while piece := await upload.read(UPLOAD_PIECE):
                size += len(piece)
                if size > limit:
                    raise InvalidInputError(f"the file is larger than the limit of {limit // 2**20} MB "
                                            "(LETTA_RAY_MAX_UPLOAD_MB)")
                out.write(piece)
    except BaseException:
        os.unlink(path)
        raise
    return path


@folders.get("/{folder_id}/files", response_model=list[FileView], summary="A folder's files, with their status")
async def list_folder_files(folder_id: str, client: ClientDep, after: str | None = None, before: str | None = None,
                            limit: Annotated[int | None, page_limit()] = 1000, order: Order = "asc",
                            include_content: bool = False) -> list[FileView]:
    after, before = time_cursors(order, after, before)
    files = await client.folders.list_files_async(folder_id, after=after, before=before, limit=limit, order=order)
    return [await _file_view(client, f, include_content) for f in files]


async def _file_view(client: Client, file: FileMetadata, include_content: bool) -> FileView:
    content = await client.folders.file_content_async(file.id) if include_content else None
    return FileView.of(file, content)


@folders.get("/{folder_id}/files/{file_id}", response_model=FileView, summary="A file, with its status")
async def retrieve_folder_file(folder_id: str, file_id: str, client: ClientDep,
                               include_content: bool = False) -> FileView:
    return await _file_view(client, await client.folders.retrieve_file_async(folder_id, file_id), include_content)


@folders.delete("/{folder_id}/files/{file_id}", status_code=204, summary="Delete a file")
@folders.delete("/{folder_id}/{file_id}", status_code=204, summary="Delete a file (Letta's older path)")
async def delete_folder_file(folder_id: str, file_id: str, client: ClientDep) -> Response:
    await client.folders.delete_file_async(folder_id, file_id)
    return Response(status_code=204)


@folders.get("/{folder_id}/agents", response_model=list[str], summary="The ids of agents a folder is attached to")
async def list_folder_agents(folder_id: str, client: ClientDep) -> list[str]:
    await client.folders.retrieve_async(folder_id)
    return await client.runtime.store.agents_with_folder(folder_id)


# --------------------------------------------------------------------------- an agent's folders and files


@agent_folders.get("/{agent_id}/folders", response_model=list[FolderView], summary="An agent's folders")
async def list_agent_folders(agent_id: str, client: ClientDep, after: str | None = None, before: str | None = None,
                             limit: Annotated[int | None, page_limit()] = 100,
                             order: Order = "asc") -> list[FolderView]:
    state = await client.get_agent_state_async(agent_id)
    found = [await client.folders.retrieve_async(f) for f in state.folder_ids]
    return page([FolderView.of(f) for f in found], after, before, limit, order)


@agent_folders.patch("/{agent_id}/folders/attach/{folder_id}", summary="Give an agent a folder's files")
async def attach_folder(agent_id: str, folder_id: str, client: ClientDep) -> Response:
    await client.folders.attach_async(agent_id, folder_id)
    return await _agent(client, agent_id)


@agent_folders.patch("/{agent_id}/folders/detach/{folder_id}", summary="Take a folder away from an agent")
async def detach_folder(agent_id: str, folder_id: str, client: ClientDep) -> Response:
    await client.folders.detach_async(agent_id, folder_id)
    return await _agent(client, agent_id)


async def _agent(client: Client, agent_id: str) -> Response:
    from ._common import agent_view, json_response

    return json_response(await agent_view(client, await client.get_agent_state_async(agent_id)))


class AgentFileView(BaseModel):
    id: str
    file_id: str
    file_name: str
    folder_id: str
    folder_name: str
    is_open: bool
    start_line: int | None = None
    end_line: int | None = None
    visible_content: str | None = None
    last_accessed_at: datetime | None = None


class AgentFilesPage(BaseModel):
    files: list[AgentFileView]
    next_cursor: str | None = None
    has_more: bool = False


@agent_folders.get("/{agent_id}/files", response_model=AgentFilesPage, summary="An agent's files, open or not")
async def list_agent_files(agent_id: str, client: ClientDep, is_open: bool | None = None, after: str | None = None,
                           before: str | None = None, cursor: str | None = None,
                           limit: Annotated[int | None, page_limit(1)] = 100, order: Order = "asc") -> AgentFilesPage:
    names = {f.id: f.name for f in [await client.folders.retrieve_async(i)
                                    for i in (await client.get_agent_state_async(agent_id)).folder_ids]}
    views = [AgentFileView(id=f.id, file_id=f.id, file_name=f.file_name, folder_id=f.folder_id,
                           folder_name=names.get(f.folder_id, ""), is_open=o is not None,
                           start_line=o.first_line if o else None, end_line=o.last_line if o else None,
                           visible_content=o.view if o else None, last_accessed_at=o.opened_at if o else None)
             for f, o in await client.folders.agent_files_async(agent_id)
             if is_open is None or (o is not None) == is_open]
    chosen = page(views, after or cursor, before, (limit or 100) + 1, order)
    more = limit is not None and len(chosen) > limit
    chosen = chosen[:limit]
    return AgentFilesPage(files=chosen, has_more=more, next_cursor=chosen[-1].id if more and chosen else None)


@agent_folders.patch("/{agent_id}/files/close-all", response_model=list[str], summary="Close every open file")
async def close_all_files(agent_id: str, client: ClientDep) -> list[str]:
    return await client.folders.close_file_async(agent_id, None)


@agent_folders.patch("/{agent_id}/files/{file_id}/open", response_model=list[str],
                     summary="Show a file in the agent's context; returns the files closed to make room")
async def open_agent_file(agent_id: str, file_id: str, client: ClientDep, offset: int = 0,
                          length: int | None = None) -> list[str]:
    return await client.folders.open_file_async(agent_id, file_id, offset=offset, length=length)


@agent_folders.patch("/{agent_id}/files/{file_id}/close", summary="Take a file out of the agent's context")
async def close_agent_file(agent_id: str, file_id: str, client: ClientDep) -> dict[str, str]:
    closed = await client.folders.close_file_async(agent_id, file_id)
    return {"message": f"closed {', '.join(closed)}" if closed else "the file was not open"}
