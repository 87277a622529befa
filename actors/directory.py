"""The directory: which host runs which agent, hosts made on demand, re-placement on death.

Placement is a policy. ``packed`` spreads agents over up to ``max_hosts`` hosts (the
CPU count by default), each holding at most ``agents_per_host`` before another host is
opened beside them; ``dedicated`` gives every agent a host of its own. A host that dies
loses only what it had not yet acknowledged: its agents are placed again on live hosts
and reload from the stores.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Protocol

from letta_ray.errors import NotFoundError
from letta_ray.messages import MessageCreate
from letta_ray.settings import DEFAULT_AGENTS_PER_HOST

from ._facade import ActorFacade, remote_method
from .limits import LLMLimit, LLMLimiter
from .messaging import WaitGraph
from .scheduler import Schedule, Scheduler

log = logging.getLogger(__name__)

class _Host(Protocol):
    """What the directory needs of a host's handle (``HostHandle``)."""

    async def send(self, agent_id: str, messages: list[Any]) -> Any: ...

    async def set_llm_limits(self, version: int, limits: dict[str, LLMLimit]) -> None: ...

    async def forget_tools(self) -> None: ...

    async def ping(self) -> str: ...

    async def info(self) -> dict[str, Any]: ...

    async def hosted(self, epoch: str | None = None) -> list[str]: ...


HostFactory = Callable[[str], Any]
"""Makes a host from its id and returns its handle (a ``HostHandle``, on a Ray actor or local)."""


def _unless_known(where: tuple[str, Any], known: Collection[str]) -> tuple[str, Any]:
    return (where[0], None) if where[0] in known else where


class Directory:
    """Maps agent ids to hosts, each host a ``HostHandle`` made by ``make_host``."""

    def __init__(self, make_host: HostFactory, *, placement: str = "packed",
                 agents_per_host: int = DEFAULT_AGENTS_PER_HOST, max_hosts: int | None = None,
                 exists: Callable[[list[str]], Awaitable[set[str]]] | None = None,
                 timers: Any = None, llm_limits: dict[str, LLMLimit] | None = None,
                 host_timeout_s: float = 30.0, slots: Callable[[], list[str]] | None = None) -> None:
        """``exists`` says which agent ids the store knows; ``timers`` persists schedules
        (``await timers.load()`` / ``await timers.save(docs)``); wake-ups go to the agent's
        host. A host that does not answer a ping within 10 s, or a broadcast within
        ``host_timeout_s``, is taken for gone.

        ``slots`` lists the live nodes of a cluster, each once per CPU. With it (and no
        ``max_hosts``), packed placement follows the cluster: one host per CPU of each live
        node, made on that node (``make_host(host_id, node=...)``); the hosts of a node that
        left are dropped and their agents placed again, and a node that joins gets hosts,
        which new agents go to first."""
        self._make_host = make_host
        self.placement = placement
        self.agents_per_host = agents_per_host
        self._slots = slots
        self._follow_cluster = slots is not None and max_hosts is None
        self._slots_seen: list[str] = []
        self._slots_checked = float("-inf")
        self._suspect: dict[str, float] = {}  # node -> when a host of it was found dead
        self.host_node: dict[str, str | None] = {}  # the node each host was made on
        self.max_hosts = max_hosts or max(1, os.cpu_count() or 1)
        self._exists = exists
        self.hosts: dict[str, _Host] = {}
        self.load: dict[str, int] = {}
        self.where: dict[str, str] = {}
        self._ids = itertools.count()
        self.waits = WaitGraph()
        self._timers = timers
        self.scheduler = Scheduler(self._wake_agent, save=timers.save if timers is not None else None)
        self._lock = asyncio.Lock()
        self.limiter = LLMLimiter(llm_limits)
        # This directory's incarnation (Ray restarts it after a crash): a host takes agents
        # reserved by one incarnation only until a later one has taken the host over.
        self.epoch = uuid.uuid4().hex
        self._host_timeout_s = host_timeout_s
        self._adopted = False

    async def _adopt(self) -> None:
        """Once, before the first placement: take over the hosts alive now (their agents stay
        where they are) and start the timers. A directory restarted after a crash (its
        actor is restarted by Ray) finds its predecessor's hosts this way; a new one, none.
        Without it, an agent still held by a live host could be placed on a second one."""
        if self._adopted:
            return
        self._adopted = True
        existing = getattr(self._make_host, "existing", None)
        found: dict[str, Any] = existing() if existing is not None else {}

        async def agents_of(handle: _Host) -> list[str] | None:
            try:
                return await asyncio.wait_for(handle.hosted(self.epoch), timeout=10.0)
            except Exception:  # dead or stuck: not taken over (a call to it re-places its agents)
                return None

        held = await asyncio.gather(*(agents_of(h) for h in found.values()))
        # host names stay unique: new ones are numbered after every host found, live or not
        numbers = [-1] + [int(h.removeprefix("host-")) for h in found if h.removeprefix("host-").isdigit()]
        adopted = 0
        for (host_id, handle), agent_ids in zip(found.items(), held, strict=True):
            if agent_ids is None or host_id in self.hosts:
                continue
            adopted += 1
            self.hosts[host_id] = handle
            self.load[host_id] = len(agent_ids)
            self.host_node[host_id] = await self._node_of(handle)
            self.where.update(dict.fromkeys(agent_ids, host_id))
        if adopted:
            log.warning("took over %d hosts with %d agents", adopted, sum(self.load.values()))
        self._ids = itertools.count(max(max(numbers) + 1, next(self._ids)))
        await self.start_timers()

    def _new_host(self, node: str | None = None) -> str:
        host_id = f"host-{next(self._ids)}"
        self.hosts[host_id] = self._make_host(host_id) if node is None else self._make_host(host_id, node=node)
        self.load[host_id] = 0
        self.host_node[host_id] = node
        return host_id

    def _drop_host(self, host_id: str) -> None:
        """Forget a host that is gone; its agents are placed again when next used."""
        self.hosts.pop(host_id, None)
        self.load.pop(host_id, None)
        self.host_node.pop(host_id, None)
        for orphan in [a for a, h in self.where.items() if h == host_id]:
            del self.where[orphan]

    NODES_CHECK_S = 2.0

    async def _follow_nodes(self, force: bool = False) -> None:
        """Match the hosts to the cluster's live nodes (at most every ``NODES_CHECK_S``).

        A host whose node is no longer listed is asked where it runs: one that answers (its
        node was only missing from the list for a moment, or the host runs elsewhere than
        recorded) keeps its agents, with its node corrected; only a host that does not
        answer is dropped. A live host is never dropped, so no agent is ever in two hosts
        at once."""
        if self._slots is None:
            return
        now = time.monotonic()
        if not force and now - self._slots_checked < self.NODES_CHECK_S:
            return
        self._slots_checked = now
        try:
            slots = self._slots()
        except Exception:  # the cluster's state is unreadable for a moment: keep what we know
            log.warning("cannot list the cluster's nodes", exc_info=True)
            return
        if not slots:
            return
        self._slots_seen = slots
        alive = set(slots)
        orphans = [(h, n) for h, n in self.host_node.items() if n is not None and n not in alive and h in self.hosts]
        running = await asyncio.gather(*(self._node_of(self.hosts[h]) for h, _ in orphans))
        for (host_id, node), actual in zip(orphans, running, strict=True):
            if actual is not None:
                self.host_node[host_id] = actual
                continue
            log.warning("node %s is gone: re-placing the %d agents of its host %s", node,
                        self.load.get(host_id, 0), host_id)
            self._drop_host(host_id)
        if self._follow_cluster:
            self.max_hosts = len(slots)

    async def _node_of(self, handle: _Host) -> str | None:
        """The node a host runs on, or None if it does not answer (it is gone)."""
        try:
            return (await asyncio.wait_for(handle.info(), timeout=5.0)).get("node_id")
        except Exception:
            return None

    # A node whose host just died gets no new host for this long, even while the cluster
    # still lists it (Ray takes a few health checks to call a node dead): a host made there
    # could never start, and the agents meant for it would fail again.
    SUSPECT_S = 30.0

    def _usable_nodes(self) -> list[str]:
        now = time.monotonic()
        return [n for n in self._slots_seen if now - self._suspect.get(n, float("-inf")) >= self.SUSPECT_S]

    def _node_short_of_hosts(self) -> str | None:
        """A live node with fewer hosts than CPUs (the one most short), if any."""
        if not self._follow_cluster or not self._slots_seen:
            return None
        have = Counter(self.host_node.get(h) for h in self.hosts)
        want = Counter(self._usable_nodes())
        short = [(want[node] - have[node], node) for node in want if want[node] > have[node]]
        return max(short)[1] if short else None

    def _choose(self) -> str:
        if self.placement == "dedicated":
            return self._new_host()
        open_hosts = [h for h in self.hosts if self.load[h] < self.agents_per_host]
        if self._follow_cluster and self._slots_seen:
            node = self._node_short_of_hosts()
            if node is not None:  # a node with a free CPU: a host there (new agents fill it first)
                return self._new_host(node)
            if open_hosts:
                return min(open_hosts, key=lambda h: self.load[h])
            usable = self._usable_nodes() or self._slots_seen
            have = Counter(self.host_node.get(h) for h in self.hosts)
            return self._new_host(min(dict.fromkeys(usable), key=lambda n: have[n]))  # all full: one more
        if len(self.hosts) < self.max_hosts or not open_hosts:
            # Up to max_hosts, a new host beats piling onto an existing one: hosts are
            # where turns run in parallel.
            return self._new_host()
        return min(open_hosts, key=lambda h: self.load[h])

    def _assign(self, agent_id: str) -> tuple[str, _Host]:
        host_id = self.where.get(agent_id)
        if host_id is None or host_id not in self.hosts:
            host_id = self._choose()
            self.where[agent_id] = host_id
            self.load[host_id] += 1
        return host_id, self.hosts[host_id]

    # place, locate, locate_many and host_failed answer (host id, handle) pairs; ``known``
    # are host ids whose handles the caller holds: those come back as (host id, None), as a
    # handle costs both sides ~0.3 ms of CPU to pass (Ray registers it on arrival).

    async def place(self, agent_ids: list[str], known: Collection[str] = ()) -> list[tuple[str, Any]]:
        """Hosts for new agents (one per id, in order)."""
        async with self._lock:
            await self._adopt()
            await self._follow_nodes()
            return [_unless_known(self._assign(a), known) for a in agent_ids]

    async def reserve(self, agent_ids: list[str], known: Collection[str] = ()) -> tuple[str, list[tuple[str, Any]]]:
        """``place`` for agents a caller will create later, one by one, with these ids; with
        this directory's epoch, which the caller passes to the host (``AgentHost.create_agents``).

        Saves a creation its call here. An id never used stays placed (counted in its host's
        load) until ``release``d: a client releases the ones it has left when it closes."""
        return self.epoch, await self.place(agent_ids, known)

    async def release(self, agent_ids: list[str]) -> None:
        """Reserved ids that will not be used: their hosts no longer count them."""
        async with self._lock:
            for agent_id in agent_ids:
                host_id = self.where.pop(agent_id, None)
                if host_id in self.load:
                    self.load[host_id] -= 1

    async def locate(self, agent_id: str, known: Collection[str] = ()) -> tuple[str, Any]:
        """The host of an existing agent, placing it if no live host has it yet."""
        host_id = self.where.get(agent_id)
        if host_id is not None and host_id in self.hosts:
            return _unless_known((host_id, self.hosts[host_id]), known)
        return (await self.locate_many([agent_id], known))[0]

    async def locate_many(self, agent_ids: list[str], known: Collection[str] = ()) -> list[tuple[str, Any]]:
        """``locate`` for many agents in one call (ids not known to the store raise NotFoundError)."""
        unknown = [a for a in agent_ids if self.where.get(a) not in self.hosts]
        if self._exists is not None and unknown:
            missing = sorted(set(unknown) - await self._exists(unknown))
            if missing:
                raise NotFoundError("agent", ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
        async with self._lock:
            await self._adopt()
            await self._follow_nodes()  # agents of a node that left go elsewhere now, not after a failed call
            return [_unless_known(self._assign(a), known) for a in agent_ids]

    async def host_failed(self, host_id: str, agent_id: str, known: Collection[str] = ()) -> tuple[str, Any]:
        """A call to ``host_id`` failed: if it is really gone, re-place its agents."""
        async with self._lock:
            await self._adopt()
            handle = self.hosts.get(host_id)
            if handle is not None and not await self._alive(handle):
                log.warning("host %s is gone; re-placing its %d agents", host_id, self.load.get(host_id, 0))
                node = self.host_node.get(host_id)
                if node is not None:
                    self._suspect[node] = time.monotonic()
                self._drop_host(host_id)
                await self._follow_nodes(force=True)  # its node may have gone with it
            return _unless_known(self._assign(agent_id), known)

    async def _alive(self, handle: _Host) -> bool:
        try:
            await asyncio.wait_for(handle.ping(), timeout=10.0)
            return True
        except Exception:
            return False

    async def wait_begin(self, waiter: str, target: str) -> None:
        """Register that ``waiter`` waits on ``target``; AgentCycleError if that would deadlock."""
        self.waits.begin(waiter, target)

    async def wait_end(self, waiter: str, target: str) -> None:
        self.waits.end(waiter, target)

    # ---------------------------------------------------------------- timers

    async def start_timers(self) -> int:
        """Reload persisted schedules and start firing them; returns how many there are."""
        if self._timers is not None and not self.scheduler.schedules:
            self.scheduler.load(await self._timers.load())
        self.scheduler.start()
        return len(self.scheduler.schedules)

    async def schedule(self, agent_id: str, *, every_s: float | None = None, at: Any = None,
                       message: str | None = None) -> Schedule:
        if self._exists is not None and agent_id not in await self._exists([agent_id]):
            raise NotFoundError("agent", agent_id)
        return await self.scheduler.add(agent_id, every_s=every_s, at=at, message=message)

    async def schedules(self, agent_id: str | None = None) -> list[Schedule]:
        return self.scheduler.list(agent_id)

    async def cancel_schedule(self, schedule_id: str) -> None:
        await self.scheduler.cancel(schedule_id)

    async def _wake_agent(self, agent_id: str, message: MessageCreate) -> Any:
        _, host = await self.locate(agent_id)
        return await host.send(agent_id, [message])

    async def forget(self, agent_id: str) -> None:
        await self.scheduler.cancel_agent(agent_id)
        async with self._lock:
            host_id = self.where.pop(agent_id, None)
            if host_id in self.load:
                self.load[host_id] -= 1

    # ---------------------------------------------------------------- the cluster's LLM limits

    async def set_llm_limits(self, limits: dict[str, LLMLimit]) -> int:
        """Replace the LLM limits; returns once every live host applies them."""
        version = await self.limiter.configure(limits)
        await self._tell_hosts(lambda host: host.set_llm_limits(version, limits))  # a new host fetches them
        return version

    async def tools_changed(self) -> None:
        """A tool was created, changed or deleted: hosts drop the tools they cached."""
        await self._tell_hosts(lambda host: host.forget_tools())

    async def _tell_hosts(self, call: Callable[[_Host], Awaitable[Any]]) -> None:
        """Make ``call`` on every live host and wait for all (a dead or stuck host is skipped)."""
        async with self._lock:
            await self._adopt()
        if self.hosts:
            await asyncio.gather(*(asyncio.wait_for(call(h), self._host_timeout_s) for h in self.hosts.values()),
                                 return_exceptions=True)

    async def llm_limits(self) -> tuple[int, dict[str, LLMLimit]]:
        return self.limiter.limits()

    async def llm_acquire(self, model: str) -> None:
        await self.limiter.acquire(model)

    async def llm_release(self, model: str) -> None:
        await self.limiter.release(model)

    async def llm_stats(self) -> dict[str, dict[str, int]]:
        return self.limiter.stats()

    async def all_hosts(self) -> dict[str, Any]:
        async with self._lock:
            await self._adopt()
        return dict(self.hosts)

    async def hosts_of(self, agent_ids: list[str]) -> dict[str, str]:
        """The host of each of these agents that is placed (an agent not in use has none);
        unlike ``locate``, places nothing."""
        return {agent_id: self.where[agent_id] for agent_id in agent_ids if agent_id in self.where}

    async def describe(self) -> dict[str, Any]:
        return {"placement": self.placement, "agents_per_host": self.agents_per_host, "max_hosts": self.max_hosts,
                "hosts": dict(self.load), "agents": len(self.where), "host_nodes": dict(self.host_node)}


class DirectoryHandle(ActorFacade):
    """The directory's methods, awaited (see ``Directory``)."""

    place = remote_method(Directory.place)
    reserve = remote_method(Directory.reserve)
    release = remote_method(Directory.release)
    locate = remote_method(Directory.locate)
    locate_many = remote_method(Directory.locate_many)
    host_failed = remote_method(Directory.host_failed)
    forget = remote_method(Directory.forget)
    wait_begin = remote_method(Directory.wait_begin)
    wait_end = remote_method(Directory.wait_end)
    start_timers = remote_method(Directory.start_timers)
    schedule = remote_method(Directory.schedule)
    schedules = remote_method(Directory.schedules)
    cancel_schedule = remote_method(Directory.cancel_schedule)
    set_llm_limits = remote_method(Directory.set_llm_limits)
    llm_limits = remote_method(Directory.llm_limits)
    llm_acquire = remote_method(Directory.llm_acquire)
    llm_release = remote_method(Directory.llm_release)
    llm_stats = remote_method(Directory.llm_stats)
    tools_changed = remote_method(Directory.tools_changed)
    all_hosts = remote_method(Directory.all_hosts)
    describe = remote_method(Directory.describe)
    hosts_of = remote_method(Directory.hosts_of)
