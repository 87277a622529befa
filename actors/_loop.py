"""One background event loop that runs a client's coroutines for its sync callers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from queue import Queue
from typing import Any, TypeVar

T = TypeVar("T")


class EventLoopThread:
    """An event loop on a daemon thread: sync code runs coroutines on it and waits.

    So the sync API works from scripts, notebooks (whose own loop is busy running the
    cell) and threads alike. Once ``stop``ped it refuses new work.
    """

    def __init__(self, name: str = "letta-ray-client") -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()
        self.stopped = False

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and return its result (or raise its exception)."""
        if self.stopped:
            coro.close()
            raise RuntimeError("this letta_ray client is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except KeyboardInterrupt:  # Ctrl-C: stop the coroutine too, not only the wait for it
            future.cancel()
            raise

    def iterate(self, items: AsyncIterator[T]) -> Iterator[T]:
        """The items of an async iterator, each as soon as the loop produces it."""
        if self.stopped:
            raise RuntimeError("this letta_ray client is closed")
        queue: Queue[Any] = Queue()
        end = object()

        async def pump() -> None:
            try:
                async for item in items:
                    queue.put(item)
            except BaseException as exc:
                queue.put(exc)
            finally:
                queue.put(end)

        future = asyncio.run_coroutine_threadsafe(pump(), self.loop)
        while (item := queue.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
        future.result()

    def stop(self) -> None:
        self.stopped = True
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
