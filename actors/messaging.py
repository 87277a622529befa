"""Agent-to-agent messages: delivery between hosts, and waits that can never deadlock.

Every wait of one agent on another is registered in a ``WaitGraph`` (held by the
directory, so it spans the cluster) before it starts. A wait that would close a cycle
(A waits on B while B, directly or through others, waits on A) is refused at once with
AgentCycleError, which the tool turns into a failed result for the model; every other
wait has a timeout. ``AgentMessenger`` implements the core's ``Messenger`` protocol over
a ``Router`` — the Ray one below, or a local one in unit tests.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any, Protocol

from letta_ray.errors import AgentBusyTimeout, AgentCycleError
from letta_ray.messages import LettaResponse, MessageCreate

log = logging.getLogger(__name__)


class WaitGraph:
    """Who is waiting on whom; refuses a wait that would close a cycle."""

    def __init__(self) -> None:
        self.edges: dict[str, Counter[str]] = {}

    def begin(self, waiter: str, target: str) -> None:
        path = self._path(target, waiter)
        if path is not None:
            raise AgentCycleError([waiter, *path])
        self.edges.setdefault(waiter, Counter())[target] += 1

    def end(self, waiter: str, target: str) -> None:
        targets = self.edges.get(waiter)
        if not targets:
            return
        targets[target] -= 1
        if targets[target] <= 0:
            del targets[target]
        if not targets:
            del self.edges[waiter]

    def _path(self, start: str, goal: str) -> list[str] | None:
        """A chain of waits from ``start`` to ``goal`` (inclusive), if there is one."""
        if start == goal:
            return [start]
        seen, frontier = {start}, [[start]]
        while frontier:
            path = frontier.pop()
            for nxt in self.edges.get(path[-1], ()):
                if nxt == goal:
                    return [*path, nxt]
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append([*path, nxt])
        return None


class Router(Protocol):
    """How a messenger reaches other agents."""

    async def deliver(self, target_id: str, message: MessageCreate, *, wait: bool,
                      run_id: str | None = None) -> LettaResponse | None: ...

    async def wait_begin(self, waiter: str, target: str) -> None: ...

    async def wait_end(self, waiter: str, target: str) -> None: ...

    async def find_by_tags(self, match_all: list[str], match_some: list[str]) -> list[str]: ...


def incoming_text(sender_id: str, text: str) -> str:
    return (f"[Message from agent {sender_id}; your reply goes back to that agent, not to a user] "
            f"{text}")


class AgentMessenger:
    """The ``Messenger`` protocol for agents of one host."""

    def __init__(self, router: Router, timeout_s: float = 120.0) -> None:
        self.router = router
        self.timeout_s = timeout_s

    async def send_and_wait(self, sender_id: str, target_id: str, text: str) -> str:
        await self.router.wait_begin(sender_id, target_id)
        try:
            message = MessageCreate(content=incoming_text(sender_id, text), sender_id=sender_id)
            try:
                response = await asyncio.wait_for(self.router.deliver(target_id, message, wait=True), self.timeout_s)
            except TimeoutError as exc:
                raise AgentBusyTimeout(f"no reply from {target_id} within {self.timeout_s:g} s") from exc
        finally:
            await self.router.wait_end(sender_id, target_id)
        assert response is not None
        return response.assistant_text()

    async def send_async(self, sender_id: str, target_id: str, text: str) -> None:
        message = MessageCreate(content=incoming_text(sender_id, text), sender_id=sender_id)
        await self.router.deliver(target_id, message, wait=False)

    async def broadcast(self, sender_id: str, text: str, match_all: list[str],
                        match_some: list[str]) -> list[tuple[str, str]]:
        targets = [t for t in await self.router.find_by_tags(match_all, match_some) if t != sender_id]

        async def ask(target: str) -> tuple[str, str]:
            try:
                return target, await self.send_and_wait(sender_id, target, text)
            except (AgentCycleError, AgentBusyTimeout) as exc:
                return target, f"(no reply: {exc})"

        return list(await asyncio.gather(*(ask(t) for t in targets)))


class _AgentHost(Protocol):
    async def send(self, agent_id: str, messages: list[Any]) -> LettaResponse: ...


class _Directory(Protocol):
    """What the router needs of the directory's handle."""

    async def locate(self, agent_id: str) -> tuple[str, _AgentHost]: ...

    async def wait_begin(self, waiter: str, target: str) -> None: ...

    async def wait_end(self, waiter: str, target: str) -> None: ...


class _AgentsByTag(Protocol):
    async def list_agents(self, *, tags: list[str] | None = None, match_all_tags: bool = False,
                          limit: int | None = 50) -> list[Any]: ...


class DirectoryRouter:
    """The ``Router`` of agent hosts: reaches agents wherever the directory placed them.

    ``directory`` is the directory's handle (picklable; a host gets one before the
    directory actor exists, looked up by name on first use), ``store`` the metadata
    store's handle (for finding agents by tag).
    """

    def __init__(self, directory: _Directory, store: _AgentsByTag) -> None:
        self.directory = directory
        self.store = store
        self._background: set[asyncio.Future[Any]] = set()

    async def deliver(self, target_id: str, message: MessageCreate, *, wait: bool,
                      run_id: str | None = None) -> LettaResponse | None:
        _, host = await self.directory.locate(target_id)
        turn = host.send(target_id, [message], run_id=run_id)
        if wait:
            return await turn
        task = asyncio.ensure_future(turn)  # queued now; its reply goes nowhere
        self._background.add(task)
        task.add_done_callback(self._delivered)
        return None

    def _delivered(self, task: asyncio.Future[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("a message sent without waiting failed: %s", task.exception())

    async def wait_begin(self, waiter: str, target: str) -> None:
        await self.directory.wait_begin(waiter, target)

    async def wait_end(self, waiter: str, target: str) -> None:
        await self.directory.wait_end(waiter, target)

    async def find_by_tags(self, match_all: list[str], match_some: list[str]) -> list[str]:
        tags = match_all or match_some
        states = await self.store.list_agents(tags=tags, match_all_tags=bool(match_all), limit=None)
        some = set(match_some)
        return [s.id for s in states if not some or some & set(s.tags)]
