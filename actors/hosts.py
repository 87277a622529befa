"""Where a driver's agents run, and calls to them that outlive a host.

``Hosts`` remembers which host runs each agent (asking the directory once), and makes
calls on an agent's host through its ``HostHandle``: ``await hosts.call(agent_id, lambda
host: host.get_state(agent_id))``. When the host died under a call, the directory
re-places the agent (it reloads from the stores) and the call is made again, up to
twice more. ``Connection`` bundles what handles on agents need: the runtime's actors,
these hosts and the loop sync calls run on.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from letta_ray.errors import NotFoundError
from letta_ray.input_limits import InputLimits
from letta_ray.schemas import new_id

from ._facade import ACTOR_GONE
from ._loop import EventLoopThread
from .directory import DirectoryHandle
from .host import HostHandle
from .metadata_store import MetadataStoreHandle
from .runtime import Runtime

T = TypeVar("T")
Item = TypeVar("Item")
_ATTEMPTS = 3
RESERVE_MAX = 256


class Hosts:
    """The hosts of agents, as one driver process knows them."""

    def __init__(self, directory: DirectoryHandle, store: MetadataStoreHandle, call_timeout_s: float | None) -> None:
        self.directory = directory
        self.store = store
        self.call_timeout_s = call_timeout_s
        self._where: dict[str, tuple[str, HostHandle]] = {}
        self._handles: dict[str, HostHandle] = {}  # by host id: the directory sends each once
        self._reserved: list[tuple[str, tuple[str, HostHandle]]] = []  # agent ids placed ahead
        self._epoch = ""  # the directory incarnation that placed them
        self._reserve_next = 2
        self._reserving = asyncio.Lock()
        self._stock = threading.Lock()  # reserved ids are taken from sync callers' threads too

    def reserved_now(self) -> tuple[str, str, tuple[str, HostHandle]] | None:
        """An agent id placed ahead, with its directory epoch and host, if one is left; no call.
        Safe from any thread (``Client.create_agent`` takes one in its caller's thread)."""
        with self._stock:
            if not self._reserved:
                return None
            agent_id, where = self._reserved.pop()
            epoch = self._epoch
        self._where[agent_id] = where
        return agent_id, epoch, where

    async def reserved(self) -> tuple[str, str, tuple[str, HostHandle]]:
        """An agent id placed ahead, the directory epoch that placed it and its host: agents
        created one at a time need no call to the directory each (``Directory.reserve``).
        Reserves twice as many each time it runs out, up to RESERVE_MAX."""
        async with self._reserving:
            while (taken := self.reserved_now()) is None:  # other threads may take the new ones first
                ids = [new_id("agent") for _ in range(self._reserve_next)]
                epoch, where = await self.directory.reserve(ids, list(self._handles))
                stock = [(a, self._known(w)) for a, w in zip(ids, where, strict=True)]
                with self._stock:
                    self._epoch, self._reserved = epoch, stock
                self._reserve_next = min(RESERVE_MAX, self._reserve_next * 2)
        return taken

    def drop_reserved(self, *, epoch: str) -> None:
        """Forget the ids reserved by the directory incarnation ``epoch`` (it was replaced;
        its successor never knew them). Ids a newer one reserved since stay."""
        with self._stock:
            if self._epoch == epoch:
                self._reserved.clear()
                self._reserve_next = 2

    async def release_reserved(self, host_id: str | None = None) -> None:
        """Give the ids reserved and not used back to the directory: all of them (the client
        is closing), or those on ``host_id`` (a call to it failed as if it died; if it did, the
        directory has dropped its load already). A directory restarted since never knew them:
        releasing them then does nothing."""
        with self._stock:
            ids = [a for a, (h, _) in self._reserved if host_id in (None, h)]
            self._reserved = [r for r in self._reserved if host_id not in (None, r[1][0])]
        if ids:
            await self.directory.release(ids)

    def _known(self, where: tuple[str, HostHandle | None]) -> tuple[str, HostHandle]:
        """A directory's answer with the handle filled in (it leaves out the ones we hold)."""
        host_id, handle = where
        if handle is None:
            return host_id, self._handles[host_id]
        self._handles[host_id] = handle
        return host_id, handle

    async def locate(self, agent_id: str) -> tuple[str, HostHandle]:
        """The id and handle of the agent's host (NotFoundError for an unknown agent)."""
        where = self._where.get(agent_id)
        if where is None:
            where = self._known(await self.directory.locate(agent_id, list(self._handles)))
            self._where[agent_id] = where
        return where

    async def locate_many(self, agent_ids: list[str]) -> list[tuple[str, HostHandle]]:
        where = [self._known(w) for w in await self.directory.locate_many(agent_ids, list(self._handles))]
        self._where.update(zip(agent_ids, where, strict=True))
        return where

    async def place(self, agent_ids: list[str]) -> list[tuple[str, HostHandle]]:
        """Hosts for new agents, in order."""
        where = [self._known(w) for w in await self.directory.place(agent_ids, list(self._handles))]
        self._where.update(zip(agent_ids, where, strict=True))
        return where

    def forget(self, agent_id: str) -> None:
        self._where.pop(agent_id, None)

    async def replace(self, agent_id: str, host_id: str) -> tuple[str, HostHandle]:
        """A call to the agent on ``host_id`` found it gone: where the directory places it now."""
        self._where.pop(agent_id, None)
        where = self._known(await self.directory.host_failed(host_id, agent_id, list(self._handles)))
        self._where[agent_id] = where
        return where

    async def call(self, agent_id: str, call: Callable[[HostHandle], Awaitable[T]]) -> T:
        """``call(host)`` on the agent's host, re-placing the agent if that host died."""
        for attempt in range(_ATTEMPTS):
            host_id, host = await self.locate(agent_id)
            try:
                return await asyncio.wait_for(call(host), self.call_timeout_s)
            except ACTOR_GONE:
                if attempt == _ATTEMPTS - 1:
                    self.forget(agent_id)
                    raise
                await self.replace(agent_id, host_id)
        raise AssertionError("unreachable")

    async def stream(self, agent_id: str, call: Callable[[HostHandle], AsyncIterator[T]]) -> AsyncIterator[T]:
        """The items of ``call(host)``; re-placed and retried only if its host died before the first."""
        for attempt in range(_ATTEMPTS):
            host_id, host = await self.locate(agent_id)
            started = False
            try:
                async for item in call(host):
                    started = True
                    yield item
                return
            except ACTOR_GONE:
                if started or attempt == _ATTEMPTS - 1:  # items already went out: a retry would repeat them
                    self.forget(agent_id)
                    raise
                await self.replace(agent_id, host_id)

    def by_host(self, items: list[Item], agent_ids: list[str], where: list[tuple[str, HostHandle]]
                ) -> list[tuple[HostHandle, list[Item]]]:
        """``items`` grouped by the host of their agent (``where``, in order), keeping the order."""
        groups: dict[str, tuple[HostHandle, list[Item]]] = {}
        for item, agent_id, (host_id, host) in zip(items, agent_ids, where, strict=True):
            self._where[agent_id] = (host_id, host)
            groups.setdefault(host_id, (host, []))[1].append(item)
        return list(groups.values())

    async def reload(self, agent_ids: list[str]) -> None:
        """Make the hosts of these agents re-read them (their blocks changed in the store)."""

        async def one(agent_id: str) -> None:
            try:
                await self.call(agent_id, lambda host: host.reload(agent_id))
            except NotFoundError:  # deleted meanwhile
                pass

        await asyncio.gather(*(one(a) for a in agent_ids))

    async def blocks_now_shared(self, block_ids: list[str]) -> None:
        """Blocks new agents share (with each other, on other hosts, or with older agents):
        every agent attached to them re-checks which of its blocks are shared."""
        shared = await self.store.shared_blocks(block_ids) if block_ids else []
        if not shared:
            return
        attached = await asyncio.gather(*(self.store.agents_of_block(block_id) for block_id in shared))
        agents = sorted({a for ids in attached for a in ids})
        where = await self.locate_many(agents)
        await asyncio.gather(*(host.forget_shared(ids) for host, ids in self.by_host(agents, agents, where)))


@dataclass(frozen=True)
class Connection:
    """What a driver holds on one runtime: its actors, where its agents run, the sync loop."""

    runtime: Runtime
    hosts: Hosts
    loop: EventLoopThread
    limits: InputLimits  # what callers may send (the settings')
