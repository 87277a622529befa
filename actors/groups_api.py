"""Groups on the runtime: create, read, delete and message them.

The policies live in the core (``letta_ray.group_policies``); this module only wires them to
agents on hosts (``AgentHandle``) and persists groups as JSON docs in the store.
What each participant has not yet seen when a run ends is kept in the group's doc and
handed to it on the next run.
"""

from __future__ import annotations

import asyncio
from typing import Any

from letta_ray.errors import InvalidInputError, NotFoundError
from letta_ray.group_policies import (
    GROUP_TOOL,
    Backlog,
    Group,
    ManagerConfig,
    Utterance,
    as_messages,
    group_tag,
    run_group,
    stored_events,
)
from letta_ray.messages import LettaMessage, LettaResponse, MessageCreate
from letta_ray.schemas import AgentState

from .handles import AgentHandle
from .hosts import Connection

_WIRING = "wiring"    # doc key: what create_group changed on the agents, so delete can undo exactly that
_BACKLOG = "backlog"  # doc key: per participant, what it has not seen yet


class _Members:
    """``GroupMembers`` and ``TurnLog`` over a connection: turns on hosts, history from the store."""

    def __init__(self, connection: Connection, states: dict[str, AgentState], max_steps: int | None) -> None:
        self.connection = connection
        self.states = states
        self.max_steps = max_steps

    async def send(self, agent_id: str, messages: list[MessageCreate]) -> LettaResponse:
        return await AgentHandle(self.connection, agent_id, "").send_async(list(messages), max_steps=self.max_steps)

    async def position(self, agent_id: str) -> str | None:
        newest = await self.connection.runtime.store.list_messages(agent_id, limit=1, order="desc")
        return newest[0].id if newest else None

    async def events_after(self, agent_id: str, position: str | None) -> list[LettaMessage]:
        messages = await self.connection.runtime.store.list_messages(agent_id, after=position, limit=None)
        return stored_events(messages, uses_send_message=self.states[agent_id].uses_send_message)


class GroupsAPI:
    """Groups of agents (round robin, supervisor, dynamic), persisted in the store.

    Every method has an ``*_async`` twin. A group is sent a message like an agent and
    answers with every participant's messages in order (each event's ``sender_id`` and
    ``name`` say whose it is), one stop reason and the summed usage.
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.store = connection.runtime.store
        self._locks: dict[str, asyncio.Lock] = {}

    # ---------------------------------------------------------------- create, read, delete

    async def create_group_async(self, agent_ids: list[str],
                                 manager_config: ManagerConfig | dict[str, Any] | None = None,
                                 description: str = "") -> Group:
        group = Group.create(agent_ids, manager_config, description)
        if group.manager_type == "sleeptime":
            raise InvalidInputError("sleep-time groups are made with their main agent: "
                                    "create_agent(..., enable_sleeptime=True)")
        members = [*group.agent_ids, *([group.manager_agent_id] if group.manager_agent_id else [])]
        states = await self._states(members)  # NotFoundError names a missing agent
        if group.manager_type == "supervisor":
            assert group.manager_agent_id is not None
            await self._check_unmanaged(states[group.manager_agent_id])
        doc = {**group.to_doc(), _WIRING: {"tagged": [], "added_tool": False}}
        await self.store.upsert_group(group.id, doc)
        try:
            doc[_WIRING] = await self._wire(group, states)
            await self.store.upsert_group(group.id, doc)
        except BaseException:
            await self._unwire(group, {"tagged": group.agent_ids, "added_tool": True})
            await self.store.delete_group(group.id)
            raise
        return group

    def create_group(self, agent_ids: list[str], manager_config: ManagerConfig | dict[str, Any] | None = None,
                     description: str = "") -> Group:
        """Create a group; ``manager_config`` like ``{"manager_type": "supervisor", "manager_agent_id": ...}``.

        Round robin when no config is given. The workers get the tag ``group:<id>``; a
        supervisor's manager gets ``metadata["group_id"]`` and the fan-out tool.
        """
        return self.connection.loop.run(self.create_group_async(agent_ids, manager_config, description))

    async def get_group_async(self, group_id: str) -> Group:
        return Group.from_doc(await self.store.get_group(group_id))

    def get_group(self, group_id: str) -> Group:
        """A group by id; raises NotFoundError."""
        return self.connection.loop.run(self.get_group_async(group_id))

    async def list_groups_async(self, *, manager_type: str | None = None, limit: int | None = 50,
                                after: str | None = None) -> list[Group]:
        docs = await self.store.list_groups(limit=None if manager_type else limit, after=after)
        groups = [Group.from_doc(d) for d in docs]
        if manager_type is not None:
            groups = [g for g in groups if g.manager_type == manager_type][:limit]
        return groups

    def list_groups(self, *, manager_type: str | None = None, limit: int | None = 50,
                    after: str | None = None) -> list[Group]:
        """Stored groups ordered by id, optionally of one manager type."""
        return self.connection.loop.run(self.list_groups_async(manager_type=manager_type, limit=limit, after=after))

    async def delete_group_async(self, group_id: str) -> None:
        doc = await self.store.get_group(group_id)
        group = Group.from_doc(doc)
        if group.manager_type != "sleeptime":  # a sleep-time pairing lives in its main agent
            await self._unwire(group, doc.get(_WIRING) or {"tagged": group.agent_ids, "added_tool": False})
        await self.store.delete_group(group_id)
        self._locks.pop(group_id, None)

    def delete_group(self, group_id: str) -> None:
        """Delete a group; its agents stay, without the group's tag and tool."""
        self.connection.loop.run(self.delete_group_async(group_id))

    # ---------------------------------------------------------------- messages

    async def send_group_async(self, group_id: str, message: str | MessageCreate | list[Any], *,
                               max_steps: int | None = None) -> LettaResponse:
        messages = as_messages(message, limits=self.connection.limits)
        lock = self._locks.setdefault(group_id, asyncio.Lock())
        async with lock:  # one run of a group at a time: a run reads and writes its backlog
            doc = await self.store.get_group(group_id)
            group = Group.from_doc(doc)
            ids = [*group.agent_ids, *([group.manager_agent_id] if group.manager_agent_id else [])]
            states = await self._states(ids)
            members = _Members(self.connection, states, max_steps)
            turn = await run_group(group, messages, members, {a: s.name for a, s in states.items()},
                                   backlog=_load_backlog(doc), log=members)
            if turn.backlog or doc.get(_BACKLOG):
                doc[_BACKLOG] = {a: [u.model_dump(mode="json") for u in items] for a, items in turn.backlog.items()}
                await self.store.upsert_group(group_id, doc)
            return turn.response

    def send_group(self, group_id: str, message: str | MessageCreate | list[Any], *,
                   max_steps: int | None = None) -> LettaResponse:
        """Run one message through the group: every participant's messages in order."""
        return self.connection.loop.run(self.send_group_async(group_id, message, max_steps=max_steps))

    # ---------------------------------------------------------------- wiring

    def _agent(self, agent_id: str) -> AgentHandle:
        return AgentHandle(self.connection, agent_id, "")

    async def _states(self, agent_ids: list[str]) -> dict[str, AgentState]:
        states = await asyncio.gather(*(self.store.get_agent(a) for a in agent_ids))
        return {s.id: s for s in states}

    async def _check_unmanaged(self, manager: AgentState) -> None:
        other = manager.metadata.get("group_id")
        if not other:
            return
        try:
            await self.store.get_group(other)
        except NotFoundError:
            return  # a leftover of a deleted group
        raise InvalidInputError(f"agent {manager.name} ({manager.id}) already belongs to group {other} as its "
                                "manager; an agent can supervise one group")

    async def _wire(self, group: Group, states: dict[str, AgentState]) -> dict[str, Any]:
        tag = group_tag(group.id)
        tagged: list[str] = []
        for agent_id in group.agent_ids:
            state = await self._agent(agent_id).state_async()
            if tag not in state.tags:
                await self._agent(agent_id).modify_async(tags=[*state.tags, tag])
            tagged.append(agent_id)
        added_tool = False
        if group.manager_type == "supervisor":
            assert group.manager_agent_id is not None
            manager = await self._agent(group.manager_agent_id).state_async()
            changes: dict[str, Any] = {"metadata": {**manager.metadata, "group_id": group.id}}
            if GROUP_TOOL not in manager.tools:
                changes["tools"] = [*manager.tools, GROUP_TOOL]
                added_tool = True
            await self._agent(group.manager_agent_id).modify_async(**changes)
        return {"tagged": tagged, "added_tool": added_tool}

    async def _unwire(self, group: Group, wiring: dict[str, Any]) -> None:
        """Undo what ``_wire`` did, skipping agents deleted since."""
        tag = group_tag(group.id)
        for agent_id in wiring.get("tagged", []):
            try:
                state = await self._agent(agent_id).state_async()
                if tag in state.tags:
                    await self._agent(agent_id).modify_async(tags=[t for t in state.tags if t != tag])
            except NotFoundError:
                pass
        if group.manager_type != "supervisor" or group.manager_agent_id is None:
            return
        try:
            manager = await self._agent(group.manager_agent_id).state_async()
        except NotFoundError:
            return
        changes: dict[str, Any] = {}
        if manager.metadata.get("group_id") == group.id:
            changes["metadata"] = {k: v for k, v in manager.metadata.items() if k != "group_id"}
        if wiring.get("added_tool") and GROUP_TOOL in manager.tools:
            changes["tools"] = [t for t in manager.tools if t != GROUP_TOOL]
        if changes:
            await self._agent(group.manager_agent_id).modify_async(**changes)


def _load_backlog(doc: dict[str, Any]) -> Backlog:
    raw = doc.get(_BACKLOG) or {}
    return {agent_id: [Utterance.model_validate(u) for u in items] for agent_id, items in raw.items()}
