"""Agent files on the runtime: import one (all of it or nothing), export agents as one.

The file is read and planned in the core (``letta_ray.agent_file``: new ids, references
remapped, every element checked) before anything is written. Then the custom tools are
stored, the agents created with their messages and context windows, and the groups made;
if any of that fails, what was written is taken back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from letta_ray.agent_file import (
    KEPT,
    ExportedAgent,
    ImportOptions,
    ImportPlan,
    export_agents,
    plan_import,
    read_agent_file,
)
from letta_ray.base_tools import BASE_TOOLS, DEFAULT_SYSTEM_PROMPTS
from letta_ray.errors import InvalidInputError, NotFoundError
from letta_ray.mcp import server_of
from letta_ray.schemas import AgentState, EmbeddingConfig, Tool

from .host import SLEEPTIME_AGENT, SLEEPTIME_FREQUENCY, pair_sleeptime
from .hosts import Connection

log = logging.getLogger(__name__)


async def import_agent_file(client: Any, raw: bytes | str | dict[str, Any], options: ImportOptions
                            ) -> tuple[list[tuple[str, str]], list[str]]:
    """Create everything in an agent file through ``client`` (a ``Client``: this module is
    below it); returns (the new agents' (id, name) in file order, warnings)."""
    if options.model is not None and "/" not in options.model:
        raise InvalidInputError(f"model {options.model!r} is not a handle like 'openai/gpt-4o-mini'")
    settings = client.settings
    embedding = EmbeddingConfig(embedding_model=settings.embedding_model, embedding_dim=settings.embedding_dim)
    plan = plan_import(read_agent_file(raw), options, embedding=embedding,
                       base_tools={name: tf.tool for name, tf in BASE_TOOLS.items()},
                       default_system=DEFAULT_SYSTEM_PROMPTS)
    sleeptime_groups = _pair_sleeptime_agents(plan)
    store = client.runtime.store
    written: list[Tool] = []
    replaced: list[Tool] = []
    created: list[str] = []
    groups: list[str] = []
    servers: list[str] = []
    folders: list[str] = []
    try:
        for folder in plan.folders:
            await store.upsert_folder(folder)
            folders.append(folder.id)
        for meta, text in plan.files:
            await store.upsert_file(meta)
            await store.set_file_content(meta.id, text)
        if plan.mcp_servers:
            servers = await _register_mcp_servers(client, plan)
        for tool in plan.tools:
            try:
                existing = await store.get_tool_by_name(tool.name)
            except NotFoundError:
                existing = None
            if existing is not None and not options.override_existing_tools:
                continue  # the stored tool of that name serves the imported agents
            if existing is not None:
                replaced.append(existing)
            written.append(await store.upsert_tool(tool))
        if written:
            await client.runtime.directory.tools_changed()
        histories = [[m for m in plan.history if m.agent_id == a.id] for a in plan.agents]
        await client.create_agents_async(plan.agents, context=plan.context, history=histories)
        created = [a.id for a in plan.agents]
        for position, group in enumerate(plan.groups):
            doc = sleeptime_groups.get(position)
            if doc is not None:
                await store.upsert_group(doc["id"], doc)
                groups.append(doc["id"])
            else:
                made = await client.groups.create_group_async(group["agent_ids"], group["manager_config"],
                                                              group["description"])
                groups.append(made.id)
    except BaseException:
        await _take_back(client, created, groups, written, replaced, folders, servers)
        raise
    for meta, text in plan.files:  # their chunks are embedded in the background, as an upload's
        client.folders.start_processing(meta, text)
    return [(a.id, a.name) for a in plan.agents], plan.warnings


async def _register_mcp_servers(client: Any, plan: ImportPlan) -> list[str]:
    """Register the file's MCP servers (one of the same name already here is used as it is) and
    give each agent the servers' tools it had; returns the ids of the servers registered."""
    here = {s.server_name: s for s in await client.mcp_servers.list_async()}
    registered = []
    for server in plan.mcp_servers:
        if server.server_name in here:
            continue
        made = await client.mcp_servers.create_async(server.server_name, server.config)
        registered.append(made.id)
    available = {t.name for t in await client.runtime.store.list_tools(limit=None) if server_of(t) is not None}
    for agent in plan.agents:
        wanted = plan.mcp_tools.get(agent.id, [])
        agent.tools = [*agent.tools, *(n for n in wanted if n in available)]
        missing = [n for n in wanted if n not in available]
        if missing:
            kept = agent.metadata[KEPT]
            kept["unavailable_tools"] = [*kept.get("unavailable_tools", []), *missing]
            plan.warnings.append(f"{agent.name}: MCP tools {missing} are not offered by a server here (yet): "
                                 "refresh the server when it is up, then attach them")
    return registered


def _pair_sleeptime_agents(plan: ImportPlan) -> dict[int, dict[str, Any]]:
    """A sleep-time group of the file runs here as a main agent with its sleep-time agent
    (Letta writes ``enable_sleeptime: false`` in its files; the group says it is one).
    Returns the docs of those groups, by their place in ``plan.groups``."""
    by_id = {a.id: a for a in plan.agents}
    docs = {}
    for position, group in enumerate(plan.groups):
        config = group["manager_config"]
        if config.get("manager_type") != "sleeptime":
            continue
        main = by_id.get(config.get("manager_agent_id"))
        if main is None or len(group["agent_ids"]) != 1:
            raise InvalidInputError("agent file: a sleep-time group needs its main agent (manager_agent_id) "
                                    "and one sleep-time agent")
        frequency = int(config.get("sleeptime_agent_frequency") or 5)
        docs[position] = pair_sleeptime(main, by_id[group["agent_ids"][0]], frequency, group["description"])
    return docs


async def _take_back(client: Any, agents: list[str], groups: list[str], written: list[Tool],
                     replaced: list[Tool], folders: list[str], servers: list[str]) -> None:
    """Undo a failed import: what it created goes, the tools it replaced come back. Each undo
    that fails is logged, and the others still run."""
    store = client.runtime.store
    back = {t.name: t for t in replaced}
    # Thunks: each undo starts only when the one before it is done.
    undos: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        *((f"group {g}", lambda g=g: store.delete_group(g)) for g in groups),
        *((f"agent {a}", lambda a=a: client.delete_agent_async(a)) for a in agents),
        *((f"tool {t.name}", lambda t=t: store.upsert_tool(back[t.name]) if t.name in back
           else store.delete_tool(t.id)) for t in written),
        *((f"folder {f}", lambda f=f: store.delete_folder(f)) for f in folders),
        *((f"MCP server {s}", lambda s=s: client.mcp_servers.delete_async(s)) for s in servers),
    ]
    for what, undo in undos:
        try:
            await undo()
        except Exception:
            log.warning("could not take back %s", what, exc_info=True)
    if written:
        await client.runtime.directory.tools_changed()


async def export_agent_file(connection: Connection, agent_id: str, *, scrub_messages: bool = False,
                            max_messages: int | None = None) -> dict[str, Any]:
    """The agent file of an agent, with its sleep-time agent and their group when it has one."""
    store = connection.runtime.store

    async def state_of(an_id: str) -> AgentState:
        return await connection.hosts.call(an_id, lambda host: host.get_state(an_id))

    main = await state_of(agent_id)
    states = [main]
    groups: list[dict[str, Any]] = []
    sleeper_id = main.metadata.get(SLEEPTIME_AGENT)
    if sleeper_id:
        try:
            states.append(await state_of(sleeper_id))
            group_id = main.metadata.get("group_id")
            groups.append(await store.get_group(group_id) if group_id else {
                "agent_ids": [sleeper_id], "description": "", "manager_config": {
                    "manager_type": "sleeptime", "manager_agent_id": main.id,
                    "sleeptime_agent_frequency": main.metadata.get(SLEEPTIME_FREQUENCY, 5)}})
        except NotFoundError:
            log.warning("the sleep-time agent %s of %s is gone; exporting the main agent alone", sleeper_id, agent_id)
    exported = []
    for state in states:
        if scrub_messages:
            messages = []
            state = state.model_copy(update={"message_ids": []})
        else:
            newest = await store.list_messages(state.id, limit=max_messages, order="desc")
            messages = list(reversed(newest))
            kept = {m.id for m in messages}
            state = state.model_copy(update={"message_ids": [m for m in state.message_ids if m in kept]})
        exported.append(ExportedAgent(state, [m for m in messages if m.role != "system"], state.system))
    folders = [await store.get_folder(f) for f in dict.fromkeys(f for s in states for f in s.folder_ids)]
    files = [(meta, await store.get_file_content(meta.id)) for folder in folders
             for meta in await store.list_files(folder.id, limit=None)]
    names = sorted({name for s in states for name in s.tools})
    tools: dict[str, Tool] = {name: BASE_TOOLS[name].tool for name in names if name in BASE_TOOLS}

    async def stored(name: str) -> Tool | None:
        try:
            return await store.get_tool_by_name(name)
        except NotFoundError:
            return None
    custom = [n for n in names if n not in BASE_TOOLS]
    for name, tool in zip(custom, await asyncio.gather(*(stored(n) for n in custom)), strict=True):
        if tool is not None:
            tools[name] = tool
    servers = {}
    for server_id in {server_of(t) for t in tools.values()} - {None}:
        try:
            servers[server_id] = await store.get_mcp_server(server_id)
        except NotFoundError:
            pass
    return export_agents(exported, tools, groups, servers, folders, files)
