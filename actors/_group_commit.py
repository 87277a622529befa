"""Group commit: writes that arrive together commit in one transaction, off the event loop.

Plain class, no Ray: the metadata store and the archive actors batch their writes with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class GroupCommitter:
    """Runs write callables in batches on one thread, one transaction per batch."""

    def __init__(self, run_batch: Callable[[list[Callable[[], Any]]], list[tuple[bool, Any]]],
                 window_s: float, max_batch: int = 512) -> None:
        self._run_batch = run_batch
        self._window_s = window_s
        self._max_batch = max_batch
        self._pending: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="group-commit")
        self._flusher: asyncio.Task[None] | None = None
        self.batches = 0
        self.writes = 0

    async def submit(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((fn, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            # No fixed wait by default: writes that arrive while a batch is committing
            # form the next batch, so batching grows with load and adds no latency idle.
            if len(self._pending) < self._max_batch:
                await asyncio.sleep(self._window_s)
            batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch:]
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch, [fn for fn, _ in batch])
            except BaseException as exc:  # the batch runner itself failed: fail everyone in it
                results = [(False, exc)] * len(batch)
            self.batches += 1
            self.writes += len(batch)
            for (_, future), (ok, value) in zip(batch, results, strict=True):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
