"""Folders of documents in the driver API: ``client.folders`` (the shape of the Letta SDK's).

A file uploaded to a folder is read, cut into chunks and embedded in the background, its
``processing_status`` going pending -> parsing -> embedding -> completed (or error, with
the reason); poll ``retrieve_file``, or ``wait_for_file``. Its text is stored with it, its
chunks are passages owned by the file in the archive. Attached to an agent, a folder's
files are the agent's to read with ``open_files``, ``grep_files`` and
``semantic_search_files`` (attached with the folder), and the files it opens are shown in
its context. Each method has an ``*_async`` twin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Literal

from letta_ray.base_tools import FILE_TOOLS, open_file_view
from letta_ray.documents import chunk_text, extract_text, file_type
from letta_ray.errors import ConflictError, InvalidInputError, LettaRayError, NotFoundError
from letta_ray.schemas import EmbeddingConfig, FileMetadata, Folder, OpenFile, Order, Passage, changed, utcnow

from .handles import AgentHandle
from .hosts import Connection

log = logging.getLogger(__name__)

DuplicateHandling = Literal["skip", "error", "suffix", "replace"]
# Chunks embedded per call to the embedder (and per archive write).
EMBED_BATCH = 64


class FoldersAPI:
    """``client.folders``: folders, their files, and which agents read them."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.store = connection.runtime.store
        self.archive = connection.runtime.archive
        self._processing: set[asyncio.Future[None]] = set()

    def _run(self, coro: Any) -> Any:
        return self.connection.loop.run(coro)

    # ---------------------------------------------------------------- folders

    async def create_async(self, name: str, *, description: str | None = None, instructions: str | None = None,
                           metadata: dict[str, Any] | None = None) -> Folder:
        settings = self.connection.runtime.settings
        if await self.store.list_folders(name=name, limit=1):
            raise ConflictError(f"a folder named {name!r} exists already")
        return await self.store.upsert_folder(Folder(
            name=name, description=description, instructions=instructions, metadata=metadata or {},
            embedding_config=EmbeddingConfig(embedding_model=settings.embedding_model,
                                             embedding_dim=settings.embedding_dim)))

    def create(self, name: str, **fields: Any) -> Folder:
        """A new, empty folder (``description``, ``instructions`` for the agents, ``metadata``)."""
        return self._run(self.create_async(name, **fields))

    async def list_async(self, *, name: str | None = None, after: str | None = None, before: str | None = None,
                         limit: int | None = 50, order: Order = "asc") -> list[Folder]:
        return await self.store.list_folders(name=name, after=after, before=before, limit=limit, order=order)

    def list(self, **filters: Any) -> list[Folder]:
        return self._run(self.list_async(**filters))

    async def retrieve_async(self, folder_id: str) -> Folder:
        return await self.store.get_folder(folder_id)

    def retrieve(self, folder_id: str) -> Folder:
        return self._run(self.retrieve_async(folder_id))

    async def update_async(self, folder_id: str, **changes: Any) -> Folder:
        folder = await self.store.get_folder(folder_id)
        allowed = {"name", "description", "instructions", "metadata"}
        if unknown := sorted(set(changes) - allowed):
            raise InvalidInputError(f"cannot change {unknown} of a folder; one of {sorted(allowed)}")
        return await self.store.upsert_folder(changed(folder, changes))

    def update(self, folder_id: str, **changes: Any) -> Folder:
        return self._run(self.update_async(folder_id, **changes))

    async def delete_async(self, folder_id: str) -> None:
        await self.store.get_folder(folder_id)
        for agent_id in await self.store.agents_with_folder(folder_id):
            await self.detach_async(agent_id, folder_id)
        for file in await self.store.list_files(folder_id, limit=None):
            await self.archive.delete_agent(file.id)
        await self.store.delete_folder(folder_id)

    def delete(self, folder_id: str) -> None:
        """Delete a folder with its files, detaching it from every agent."""
        self._run(self.delete_async(folder_id))

    # ---------------------------------------------------------------- files

    async def upload_async(self, folder_id: str, path: str | Path, *, name: str | None = None,
                           duplicate_handling: DuplicateHandling = "suffix",
                           delete_after: bool = False) -> FileMetadata:
        """Add the file at ``path`` to a folder; it is processed in the background (with
        ``delete_after`` the file at ``path`` is removed once read)."""
        try:
            folder = await self.store.get_folder(folder_id)
            file_name = Path(name or Path(path).name).name
            kind = file_type(file_name)  # an unsupported type fails now, not in the background
            taken = {f.file_name: f for f in await self.store.list_files(folder.id, limit=None)}
            if file_name in taken:
                if duplicate_handling == "skip":
                    return taken[file_name]
                if duplicate_handling == "error":
                    raise ConflictError(f"folder {folder.name!r} has a file named {file_name!r} already")
                if duplicate_handling == "replace":
                    await self.delete_file_async(folder.id, taken[file_name].id)
                else:
                    file_name = _free_name(file_name, set(taken))
            meta = await self.store.upsert_file(FileMetadata(
                folder_id=folder.id, file_name=file_name, original_file_name=Path(name or Path(path).name).name,
                file_type=kind, file_size=os.path.getsize(path)))
        except BaseException:
            if delete_after:
                Path(path).unlink(missing_ok=True)
            raise
        self._background(self._process(meta, Path(path), delete_after))
        return meta

    def upload(self, folder_id: str, path: str | Path, **options: Any) -> FileMetadata:
        """Add a file to a folder (.txt, .md, .json, .csv, .pdf, source code, ...); it is read and
        embedded in the background: see ``wait_for_file``. ``duplicate_handling``: what a name
        already in the folder does ("suffix" by default, "skip", "error", "replace")."""
        return self._run(self.upload_async(folder_id, path, **options))

    def start_processing(self, meta: FileMetadata, text: str) -> None:
        """Chunk and embed a stored file's text in the background (a file that came in an agent file)."""
        self._background(self._process(meta, None, False, text))

    def _background(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._processing.add(task)
        task.add_done_callback(self._processing.discard)

    async def _process(self, meta: FileMetadata, path: Path | None, delete_after: bool,
                       text: str | None = None) -> None:
        """Read the file at ``path`` (or take ``text``), store its text, embed its chunks."""
        try:
            if text is None:
                assert path is not None
                meta = await self._status(meta, "parsing")
                text = await asyncio.to_thread(extract_text, path, meta.file_name)
                await self.store.set_file_content(meta.id, text)
            body = text
            chunks = await asyncio.to_thread(lambda: list(chunk_text(body)))
            meta = await self._status(meta, "embedding", total_chunks=len(chunks), chunks_embedded=0)
            for start in range(0, len(chunks), EMBED_BATCH):
                batch = chunks[start:start + EMBED_BATCH]
                await self.archive.insert_passages([
                    Passage(agent_id=meta.id, text=c.text, tags=[f"lines:{c.first}-{c.last}"]) for c in batch])
                meta = await self._status(meta, "embedding", chunks_embedded=start + len(batch))
            await self._status(meta, "completed")
        except Exception as exc:
            why = str(exc) if isinstance(exc, LettaRayError) else f"{type(exc).__name__}: {exc}"
            log.warning("processing file %s (%s) failed: %s", meta.id, meta.file_name, why)
            with contextlib.suppress(Exception):
                await self._status(meta, "error", error_message=why)
        finally:
            if delete_after and path is not None:
                path.unlink(missing_ok=True)

    async def _status(self, meta: FileMetadata, status: str, **fields: Any) -> FileMetadata:
        try:  # a file deleted while it was being processed stops here
            await self.store.get_file(meta.id)
        except NotFoundError:
            raise asyncio.CancelledError from None
        return await self.store.upsert_file(meta.model_copy(
            update={"processing_status": status, "updated_at": utcnow(), **fields}))

    async def list_files_async(self, folder_id: str, *, after: str | None = None, before: str | None = None,
                               limit: int | None = 1000, order: Order = "asc") -> list[FileMetadata]:
        await self.store.get_folder(folder_id)
        return await self.store.list_files(folder_id, after=after, before=before, limit=limit, order=order)

    def list_files(self, folder_id: str, **paging: Any) -> list[FileMetadata]:
        return self._run(self.list_files_async(folder_id, **paging))

    async def retrieve_file_async(self, folder_id: str, file_id: str) -> FileMetadata:
        file = await self.store.get_file(file_id)
        if file.folder_id != folder_id:
            raise NotFoundError("file in this folder", file_id)
        return file

    def retrieve_file(self, folder_id: str, file_id: str) -> FileMetadata:
        """A file's metadata, with its processing status."""
        return self._run(self.retrieve_file_async(folder_id, file_id))

    async def file_content_async(self, file_id: str) -> str:
        return await self.store.get_file_content(file_id)

    async def wait_for_file_async(self, folder_id: str, file_id: str, *, timeout_s: float = 300.0) -> FileMetadata:
        deadline = time.monotonic() + timeout_s
        while (file := await self.retrieve_file_async(folder_id, file_id)).processing_status not in (
                "completed", "error"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"file {file_id} still {file.processing_status} after {timeout_s:g} s")
            await asyncio.sleep(0.1)
        return file

    def wait_for_file(self, folder_id: str, file_id: str, *, timeout_s: float = 300.0) -> FileMetadata:
        """The file once processed ("completed" or "error")."""
        return self._run(self.wait_for_file_async(folder_id, file_id, timeout_s=timeout_s))

    async def delete_file_async(self, folder_id: str, file_id: str) -> None:
        file = await self.retrieve_file_async(folder_id, file_id)
        for agent_id in await self.store.agents_with_folder(folder_id):
            await self.close_file_async(agent_id, file.id)
        await self.store.delete_file(file.id)
        await self.archive.delete_agent(file.id)

    def delete_file(self, folder_id: str, file_id: str) -> None:
        self._run(self.delete_file_async(folder_id, file_id))

    # ---------------------------------------------------------------- agents

    async def attach_async(self, agent_id: str, folder_id: str) -> list[str]:
        await self.store.get_folder(folder_id)
        agent = AgentHandle(self.connection, agent_id, "")
        state = await agent.state_async()
        if folder_id in state.folder_ids:
            return state.folder_ids
        tools = [*state.tools, *(t for t in FILE_TOOLS if t not in state.tools)]
        return (await agent.modify_async(folder_ids=[*state.folder_ids, folder_id], tools=tools)).folder_ids

    def attach(self, agent_id: str, folder_id: str) -> list[str]:
        """Give an agent a folder's files (and the file tools); returns its folder ids."""
        return self._run(self.attach_async(agent_id, folder_id))

    async def detach_async(self, agent_id: str, folder_id: str) -> list[str]:
        agent = AgentHandle(self.connection, agent_id, "")
        state = await agent.state_async()
        if folder_id not in state.folder_ids:
            return state.folder_ids
        remaining = [f for f in state.folder_ids if f != folder_id]
        gone = {f.id for f in await self.store.list_files(folder_id, limit=None)}
        tools = state.tools if remaining else [t for t in state.tools if t not in FILE_TOOLS]
        state = await agent.modify_async(folder_ids=remaining, tools=tools,
                                         open_files=[o.model_dump() for o in state.open_files if o.file_id not in gone])
        return state.folder_ids

    def detach(self, agent_id: str, folder_id: str) -> list[str]:
        return self._run(self.detach_async(agent_id, folder_id))

    async def agent_files_async(self, agent_id: str) -> list[tuple[FileMetadata, OpenFile | None]]:
        state = await AgentHandle(self.connection, agent_id, "").state_async()
        opened = {o.file_id: o for o in state.open_files}
        files = [f for folder_id in state.folder_ids for f in await self.store.list_files(folder_id, limit=None)]
        return [(f, opened.get(f.id)) for f in files]

    def agent_files(self, agent_id: str) -> list[tuple[FileMetadata, OpenFile | None]]:
        """The files of an agent's folders, each with its open window (or None)."""
        return self._run(self.agent_files_async(agent_id))

    async def open_file_async(self, agent_id: str, file_id: str, *, offset: int = 0,
                              length: int | None = None) -> list[str]:
        agent = AgentHandle(self.connection, agent_id, "")
        state = await agent.state_async()
        file = await self.store.get_file(file_id)
        if file.folder_id not in state.folder_ids:
            raise NotFoundError("file of this agent's folders", file_id)
        folder = await self.store.get_folder(file.folder_id)
        view = open_file_view(file, folder.name, await self.store.get_file_content(file_id), offset, length)
        kept, closed = _with_opened(state.open_files, view, state.max_files_open)
        await agent.modify_async(open_files=[o.model_dump() for o in kept])
        return closed

    def open_file(self, agent_id: str, file_id: str, *, offset: int = 0, length: int | None = None) -> list[str]:
        """Show a file (lines ``offset``.. ``offset + length``) in the agent's context; returns
        the names of files closed to make room."""
        return self._run(self.open_file_async(agent_id, file_id, offset=offset, length=length))

    async def close_file_async(self, agent_id: str, file_id: str | None = None) -> list[str]:
        agent = AgentHandle(self.connection, agent_id, "")
        state = await agent.state_async()
        closed = [o.file_name for o in state.open_files if file_id is None or o.file_id == file_id]
        if closed:
            kept = [o.model_dump() for o in state.open_files if file_id is not None and o.file_id != file_id]
            await agent.modify_async(open_files=kept)
        return closed

    def close_file(self, agent_id: str, file_id: str | None = None) -> list[str]:
        """Take a file (every file, with None) out of the agent's context; returns their names."""
        return self._run(self.close_file_async(agent_id, file_id))


def _with_opened(open_files: list[OpenFile], view: OpenFile, most: int) -> tuple[list[OpenFile], list[str]]:
    """Open files with ``view`` (replacing that file's window), the least recently opened
    closed to keep ``most``; and the names of those closed."""
    kept = [o for o in open_files if o.file_id != view.file_id] + [view]
    closed = [o.file_name for o in kept[:-most]] if len(kept) > most else []
    return kept[-most:], closed


def _free_name(file_name: str, taken: set[str]) -> str:
    """``report.pdf`` -> ``report (1).pdf``, the first such name not taken."""
    path = Path(file_name)
    n = 1
    while (candidate := f"{path.stem} ({n}){path.suffix}") in taken:
        n += 1
    return candidate
