"""The embedder actor: the embedding model loaded once, concurrent requests batched; and its handle."""

from __future__ import annotations

import asyncio

from letta_ray.deps import Embedder
from letta_ray.schemas import EmbeddingConfig

from ._facade import ActorFacade, remote_method


class EmbedderActor:
    """Loads an embedding model once; concurrent requests are encoded in one batch."""

    def __init__(self, config: EmbeddingConfig, batch_ms: float = 2.0, max_batch: int = 256) -> None:
        from letta_ray.embeddings import make_embedder

        self.embedder: Embedder = make_embedder(config)
        self._window_s = batch_ms / 1000.0
        self._max_batch = max_batch
        self._pending: list[tuple[list[str], asyncio.Future[list[list[float]]]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def dim(self) -> int:
        return self.embedder.dim

    async def embed(self, texts: list[str]) -> list[list[float]]:
        future: asyncio.Future[list[list[float]]] = asyncio.get_running_loop().create_future()
        self._pending.append((texts, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._pending:
            if self._window_s > 0:
                await asyncio.sleep(self._window_s)
            batch: list[tuple[list[str], asyncio.Future[list[list[float]]]]] = []
            size = 0
            while self._pending and (not batch or size + len(self._pending[0][0]) <= self._max_batch):
                item = self._pending.pop(0)
                batch.append(item)
                size += len(item[0])
            texts = [t for chunk, _ in batch for t in chunk]
            try:
                vectors = await self.embedder.embed(texts)
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            offset = 0
            for chunk, future in batch:
                if not future.done():
                    future.set_result(vectors[offset: offset + len(chunk)])
                offset += len(chunk)


class EmbedderHandle(ActorFacade):
    """The embedder actor's methods, awaited; an ``Embedder`` for the archive actor."""

    dim = remote_method(EmbedderActor.dim)
    embed = remote_method(EmbedderActor.embed)
