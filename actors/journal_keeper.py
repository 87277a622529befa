"""Journal keepers: the head node's disk, for hosts whose own disk is not where the store is.

A host acknowledges a turn once its record is durable. On the node the metadata store
runs on, "durable" is the host's own journal file in the store's ``journal/`` folder. A
host on any other node has no such folder: on a cluster, nodes share no filesystem, and a
worker node's disk goes with the node. So a host elsewhere ships each batch of records to
a ``JournalKeeper`` actor pinned to the store's node, which appends them to that host's
journal file there and fsyncs before answering: the same files, in the same format, that
the store tails and applies, so nothing downstream changes, and an acknowledged turn
survives the loss of the node whose host acknowledged it.

``ShippedJournal`` is the host's side: a journal whose ``append_async`` is a call to a
keeper. The keeper is a plain class, unit-tested directly; ``ray.remote`` wraps it where
it is created.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

from letta_ray.errors import StorageError

from ._facade import ACTOR_GONE, ActorFacade, remote_method
from ._journal import TurnRecord, append_whole

log = logging.getLogger(__name__)


# A host's journal file: a name of its own, in the folder of a store shard for shards past 0
# (``store_shards.journal_folder``); nothing that climbs out of the journal folder.
_FILE_NAME = re.compile(r"(shard-[0-9]+/)?[A-Za-z0-9][A-Za-z0-9._-]*\.log")

class JournalKeeper:
    """Appends hosts' journal records to their files in ``journal_dir``, durably."""

    def __init__(self, journal_dir: str | Path) -> None:
        self.dir = Path(journal_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        self.appends = 0
        self.bytes = 0

    async def ping(self) -> bool:
        return True

    async def append(self, file_name: str, payload: bytes) -> int:
        """Append ``payload`` (whole records, each ending in a newline) to ``file_name`` and
        fsync it; returns the file's size after. Records from one host arrive in order:
        the host waits for each call before sending the next."""
        if not _FILE_NAME.fullmatch(file_name):
            raise StorageError(f"not a journal file name: {file_name!r}")
        if not payload.endswith(b"\n"):
            raise StorageError("a journal payload must end with a whole record")
        return await asyncio.to_thread(self._append, file_name, payload)

    def _append(self, file_name: str, payload: bytes) -> int:
        lock = self._locks.setdefault(file_name, threading.Lock())
        with lock:
            file = self._files.get(file_name)
            if file is None:
                (self.dir / file_name).parent.mkdir(parents=True, exist_ok=True)
                file = self._files[file_name] = self._open(self.dir / file_name)
            append_whole(file, payload)
            self.appends += 1
            self.bytes += len(payload)
            return int(file.tell())

    @staticmethod
    def _open(path: Path) -> Any:
        """Open a journal file for appending. A keeper that died mid-write may have left a
        torn last record (never acknowledged); it is cut off here, or the next record
        would be glued to it and lost with it."""
        file = open(path, "ab+", buffering=0)  # unbuffered: see append_whole
        size = file.seek(0, os.SEEK_END)
        if size:
            file.seek(max(0, size - 1))
            if file.read(1) != b"\n":
                file.seek(0)
                data = file.read()
                keep = data.rfind(b"\n") + 1
                log.warning("journal %s: cutting off a torn last record (%d bytes)", path, size - keep)
                file.truncate(keep)
                os.fsync(file.fileno())
            file.seek(0, os.SEEK_END)
        return file

    async def close(self, file_name: str) -> None:
        """Close a file its host has moved on from (it started the next part)."""
        file = self._files.pop(file_name, None)
        if file is not None:
            lock = self._locks.setdefault(file_name, threading.Lock())
            with lock:
                file.close()

    async def stats(self) -> dict[str, int]:
        return {"appends": self.appends, "bytes": self.bytes, "open_files": len(self._files)}


class KeeperHandle(ActorFacade):
    """A handle on a journal keeper."""

    ping = remote_method(JournalKeeper.ping)
    append = remote_method(JournalKeeper.append)
    close = remote_method(JournalKeeper.close)
    stats = remote_method(JournalKeeper.stats)


class ShippedJournal:
    """A host's journal kept by a keeper on the store's node: same interface as ``Journal``
    for the host's writer, with the append done as an actor call."""

    def __init__(self, keeper: Any, file_name: str, timeout_s: float = 30.0) -> None:
        self.keeper = keeper  # a KeeperHandle, or anything with ``await append(name, payload)``
        self.file_name = file_name  # in the keeper's folder (``shard-K/...`` for a store shard's)
        self.path = Path(file_name)  # for messages; it lives on the keeper's node
        self.timeout_s = timeout_s
        self.remote = True
        self.last_written = 0
        self._size = 0

    def size(self) -> int:
        return self._size

    async def append_async(self, records: list[TurnRecord]) -> None:
        """Ship records; returns once the keeper has fsync'ed them. A keeper that cannot be
        reached in ``timeout_s`` fails the turns (they are not acknowledged)."""
        payload = b"".join(r.encode() for r in records)
        try:
            self._size = await asyncio.wait_for(self.keeper.append(self.file_name, payload), self.timeout_s)
        except TimeoutError as exc:
            raise StorageError(f"the journal keeper did not confirm {self.file_name} within {self.timeout_s:g}s") \
                from exc
        except ACTOR_GONE as exc:
            raise StorageError(f"the journal keeper of {self.file_name} is gone: {exc}") from exc
        if records:
            self.last_written = max(self.last_written, records[-1].seq)

    def close(self) -> None:
        """The host moved on to its next file: let the keeper close this one (best effort)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self._close())
        _CLOSING.add(task)
        task.add_done_callback(_CLOSING.discard)

    async def _close(self) -> None:
        try:
            await self.keeper.close(self.file_name)
        except Exception:  # the keeper restarted: it has no such file open anyway
            log.debug("closing %s on its keeper failed", self.file_name, exc_info=True)


_CLOSING: set[asyncio.Task[None]] = set()
