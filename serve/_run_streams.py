"""The events of background runs, kept so a client can re-attach (``POST /v1/runs/{id}/stream``).

A turn started in the background (``messages/async``, or ``messages/stream`` with
``background: true``) runs in a task of this replica, independent of the request that
started it; its events go into a ``RunStream`` as SSE frames numbered from 1 (their
``seq_id``). Any number of readers follow one from a sequence number on. Finished streams
are kept for ``keep_s`` seconds, at most ``max_runs`` of them; older runs are replayed from
the store instead.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from ._common import error_frame


class RunStream:
    """One run's SSE frames, appended by the run's task, followed by readers."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.done = False
        self.finished_at: float | None = None
        self._changed = asyncio.Event()

    def add(self, item: Any) -> None:
        """An event (a model with ``model_dump``) as the next frame, numbered in ``seq_id``."""
        seq = len(self.frames) + 1
        doc = item.model_dump(mode="json")
        doc["seq_id"] = seq
        self.frames.append(f"data: {json.dumps(doc)}\n\n")
        self._wake()

    def fail(self, exc: BaseException) -> None:
        self.frames.append(error_frame(exc, "a background run"))
        self._wake()

    def close(self) -> None:
        self.done = True
        self.finished_at = time.monotonic()
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self, starting_after: int = 0) -> AsyncIterator[str]:
        """The frames after sequence number ``starting_after``, live until the run ends, then [DONE]."""
        sent = max(0, starting_after)
        while True:
            changed = self._changed
            while sent < len(self.frames):
                sent += 1
                yield self.frames[sent - 1]
            if self.done:
                yield "data: [DONE]\n\n"
                return
            await changed.wait()


class RunStreams:
    """The replica's run streams, by run id."""

    def __init__(self, keep_s: float = 600.0, max_runs: int = 1000) -> None:
        self.keep_s = keep_s
        self.max_runs = max_runs
        self._streams: OrderedDict[str, RunStream] = OrderedDict()

    def open(self, run_id: str) -> RunStream:
        self._prune()
        stream = self._streams[run_id] = RunStream()
        return stream

    def get(self, run_id: str) -> RunStream | None:
        return self._streams.get(run_id)

    def _prune(self) -> None:
        now = time.monotonic()
        for run_id, stream in list(self._streams.items()):
            old = stream.finished_at is not None and now - stream.finished_at > self.keep_s
            if old or (len(self._streams) >= self.max_runs and stream.done):
                del self._streams[run_id]
