"""Routes of /v1/agents: agents, their tools, core memory blocks and archival memory."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, File, Form, Query, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from letta_ray.actors.client import Client
from letta_ray.actors.local_model import stored_endpoint
from letta_ray.errors import InvalidInputError, NotFoundError
from letta_ray.schemas import LLMConfig, Order, resolve_agent_type, time_cursors

from ._common import (
    ClientDep,
    agent_view,
    custom_tools,
    json_response,
    message_response,
    page,
    page_limit,
    tool_name,
)
from .schemas import (
    LETTA_AGENT_TYPE,
    AgentStateView,
    ArchivalSearchResponse,
    ArchivalSearchResult,
    BlockView,
    CreateAgentRequest,
    CreatePassageRequest,
    DateTime,
    ImportedAgentsView,
    MemoryView,
    ModifyApprovalRequest,
    PassageView,
    RunAgentToolRequest,
    ToolExecutionResultView,
    ToolView,
    UpdateAgentRequest,
    UpdateBlockRequest,
)

# --------------------------------------------------------------------------- agents

agents = APIRouter(prefix="/v1/agents", tags=["agents"])


MAX_AGENT_FILE_BYTES = 64 * 2**20


@agents.post("/import", response_model=ImportedAgentsView,
             summary="Import a Letta agent file (.af): all its agents, or none of them")
async def import_agent_file(
    client: ClientDep,
    file: Annotated[UploadFile, File(description="the agent file")],
    name: Annotated[str | None, Form()] = None,
    override_name: Annotated[str | None, Form()] = None,
    append_copy_suffix: Annotated[bool, Form()] = True,
    model: Annotated[str | None, Form()] = None,
    override_model_handle: Annotated[str | None, Form()] = None,
    embedding: Annotated[str | None, Form()] = None,
    override_embedding_handle: Annotated[str | None, Form()] = None,
    override_existing_tools: Annotated[bool, Form()] = True,
    strip_messages: Annotated[bool, Form()] = False,
    secrets: Annotated[str | None, Form()] = None,
    env_vars_json: Annotated[str | None, Form()] = None,
    project_id: Annotated[str | None, Form()] = None,
) -> ImportedAgentsView:
    raw_secrets = secrets or env_vars_json
    parsed: dict[str, str] | None = None
    if raw_secrets:
        try:
            parsed = json.loads(raw_secrets)
        except json.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise InvalidInputError("secrets must be a JSON object of names to values")
        parsed = {str(k): str(v) for k, v in parsed.items()}
    data = await file.read(MAX_AGENT_FILE_BYTES + 1)
    if len(data) > MAX_AGENT_FILE_BYTES:
        raise InvalidInputError(f"the agent file is larger than {MAX_AGENT_FILE_BYTES // 2**20} MiB")
    handles = await client.import_agent_file_async(
        data, name=name or override_name, append_copy_suffix=append_copy_suffix,
        model=model or override_model_handle, embedding=embedding or override_embedding_handle,
        override_existing_tools=override_existing_tools, strip_messages=strip_messages, secrets=parsed)
    return ImportedAgentsView(agent_ids=[h.id for h in handles])


@agents.get("/{agent_id}/export", summary="Export an agent (with its sleep-time agent) as a Letta agent file")
async def export_agent_file(agent_id: str, client: ClientDep, scrub_messages: bool = False,
                            max_steps: int | None = None,
                            use_legacy_format: Annotated[bool, Query(
                                description="only false: the legacy format is not written",
                                json_schema_extra={"enum": [False]})] = False,
                            max_messages: Annotated[int | None, Query(ge=0)] = None) -> JSONResponse:
    if use_legacy_format:
        raise InvalidInputError("the legacy agent file format is not written; use the current one")
    return JSONResponse(await client.export_agent_file_async(agent_id, scrub_messages=scrub_messages,
                                                             max_messages=max_messages))


@agents.post("/", response_model=AgentStateView, summary="Create an agent")
async def create_agent(body: CreateAgentRequest, client: ClientDep) -> Response:
    blocks: list[Any] = [spec.to_core() for spec in body.memory_blocks or []]
    blocks += await asyncio.gather(*(client.get_block_async(b) for b in body.block_ids or []))
    tools = list(body.tools or [])
    tools += [t for t in await asyncio.gather(*(tool_name(client, i) for i in body.tool_ids or []))
              if t not in tools]
    name = body.name or f"agent_{uuid.uuid4().hex[:8]}"
    _refuse_unsupported(body.response_format)
    folder_ids = list(dict.fromkeys([*(body.folder_ids or []), *(body.source_ids or [])]))
    for folder_id in folder_ids:  # 404 now, before the agent exists
        await client.folders.retrieve_async(folder_id)
    agent_type, base_tools, autoclear = resolve_agent_type(body.agent_type)
    metadata = dict(body.metadata or {})
    if agent_type != body.agent_type:
        metadata[LETTA_AGENT_TYPE] = body.agent_type
    asked = body.embedding or (body.embedding_config or {}).get("handle") or \
        (body.embedding_config or {}).get("embedding_model")
    if asked and asked != client.settings.embedding_model:
        metadata["requested_embedding"] = asked  # kept; the deployment's embedder does the work
    spec: dict[str, Any] = {
        "agent_type": agent_type, "system": body.system, "memory_blocks": blocks,
        "tools": tools, "include_base_tools": body.include_base_tools and base_tools, "tool_rules": body.tool_rules,
        "tags": body.tags, "description": body.description, "metadata": metadata,
        "max_steps": body.max_steps or 50, "timezone": body.timezone or "UTC",
        "message_buffer_autoclear": body.message_buffer_autoclear or autoclear, "identity_ids": body.identity_ids,
        "secrets": {**(body.tool_exec_environment_variables or {}), **(body.secrets or {})}}
    overrides = _model_settings(body.model_settings)
    overrides.update({k: v for k, v in (("context_window", body.context_window_limit), ("max_tokens", body.max_tokens))
                      if v is not None})
    if body.llm_config is not None:
        spec["llm_config"] = _llm_with(body.llm_config.to_core(), overrides)
    else:  # the client resolves the model (or the default one); then our overrides apply
        model = client.build_agent_state(name, model=body.model, model_endpoint=body.model_endpoint,
                                         include_base_tools=False)
        spec["llm_config"] = _llm_with(model.llm_config, overrides)
    initial = [m.to_core() for m in body.initial_message_sequence or []]
    agent = await client.create_agent_async(name, enable_sleeptime=body.enable_sleeptime,
                                            sleeptime_agent_frequency=body.sleeptime_agent_frequency,
                                            initial_messages=initial or None,
                                            new_blocks=not body.block_ids, **spec)
    for folder_id in folder_ids:
        await client.folders.attach_async(agent.id, folder_id)
    # as its host holds it: the store's copy may still be in the host's journal, and reading
    # it would make the store apply the journal now (a DuckDB transaction per create)
    return json_response(await agent_view(client, await agent.state_async()))


def _refuse_unsupported(response_format: dict[str, Any] | None) -> None:
    """Fields whose meaning cannot be honoured here yet get a 400 that says so, not silence."""
    if response_format and response_format.get("type", "text") != "text":
        raise InvalidInputError(f"response_format {response_format.get('type')!r} is not supported yet; "
                                "only 'text'")


def _model_settings(settings: dict[str, Any] | None) -> dict[str, Any]:
    """The LLM config fields of Letta's ``model_settings`` (the others stay the provider's defaults)."""
    settings = settings or {}
    changes = {k: settings[k] for k in ("temperature",) if settings.get(k) is not None}
    if settings.get("max_output_tokens") is not None:
        changes["max_tokens"] = settings["max_output_tokens"]
    return changes


def _llm_with(config: LLMConfig | dict[str, Any], changes: dict[str, Any]) -> LLMConfig:
    """``config`` with ``changes``; InvalidInputError (400) if the result is not a valid config."""
    values = config if isinstance(config, dict) else config.model_dump()
    try:
        return LLMConfig.model_validate({**values, **changes})
    except ValueError as exc:
        raise InvalidInputError(f"invalid model settings: {exc}") from exc


@agents.get("/", response_model=list[AgentStateView], summary="List agents")
async def list_agents(
    client: ClientDep,
    name: str | None = None,
    tags: Annotated[list[str] | None, Query()] = None,
    match_all_tags: bool = False,
    before: str | None = None,
    after: str | None = None,
    limit: Annotated[int | None, page_limit()] = 50,
    order: Order | None = None,
    ascending: bool | None = None,
    identity_id: str | None = Query(default=None, description="only the agents of this identity"),
) -> Response:
    direction: Order = order or ("asc" if ascending else "desc")
    if identity_id is not None:  # few agents per identity: paged in memory
        ids = await client.identities.agents_async(identity_id)
        found = sorted((s for s in await asyncio.gather(*(client.get_agent_state_async(i) for i in ids))
                        if name is None or s.name == name), key=lambda s: (s.created_at, s.id))
        states = page(found, after, before, limit, direction)
    else:
        after, before = time_cursors(direction, after, before)
        states = await client.list_agents_async(name=name, tags=tags, match_all_tags=match_all_tags, limit=limit,
                                                after=after, before=before, order=direction)
    tools = await custom_tools(client, states)
    views = [AgentStateView.of(s, tools).model_dump(mode="json") for s in states]
    return Response(content=json.dumps(views), media_type="application/json")


@agents.get("/count", response_model=int, summary="How many agents there are")
async def count_agents(client: ClientDep) -> int:
    return await client.runtime.store.count_agents()


@agents.get("/{agent_id}", response_model=AgentStateView, summary="Retrieve an agent")
async def retrieve_agent(agent_id: str, client: ClientDep) -> Response:
    return json_response(await agent_view(client, await client.get_agent_state_async(agent_id)))


@agents.patch("/{agent_id}", response_model=AgentStateView, summary="Modify an agent")
async def modify_agent(agent_id: str, body: UpdateAgentRequest, client: ClientDep) -> Response:
    if body.block_ids is not None:
        raise InvalidInputError("block_ids cannot be replaced wholesale; use "
                                "/v1/agents/{agent_id}/core-memory/blocks/attach|detach/{block_id}")
    _refuse_unsupported(body.response_format)
    changes: dict[str, Any] = body.model_dump(include={"name", "system", "description", "metadata", "tags",
                                                       "max_steps", "timezone", "message_buffer_autoclear",
                                                       "identity_ids"}, exclude_none=True)
    if body.tool_rules is not None:
        changes["tool_rules"] = [rule.model_dump() for rule in body.tool_rules]
    if body.secrets is not None or body.tool_exec_environment_variables is not None:
        changes["secrets"] = {**(body.tool_exec_environment_variables or {}), **(body.secrets or {})}
    if body.tool_ids is not None:
        changes["tools"] = list(dict.fromkeys(await asyncio.gather(*(tool_name(client, i) for i in body.tool_ids))))
    llm_fields = _model_settings(body.model_settings)
    llm_fields.update({k: v for k, v in (("context_window", body.context_window_limit),
                                         ("max_tokens", body.max_tokens)) if v is not None})
    if body.llm_config is not None or body.model is not None or llm_fields:
        config: LLMConfig | dict[str, Any]
        if body.llm_config is not None:
            config = body.llm_config.to_core()
        elif body.model is not None:
            config = {"model": body.model, "handle": body.model,
                      "model_endpoint": stored_endpoint(body.model, body.model_endpoint
                                                        or client.settings.endpoint_for(body.model)),
                      "context_window": client.settings.default_context_window}
        else:
            config = (await client.get_agent_state_async(agent_id)).llm_config
        changes["llm_config"] = _llm_with(config, llm_fields).model_dump()
    if not changes:
        return await retrieve_agent(agent_id, client)
    state = await client.agent(agent_id).modify_async(**changes)
    return json_response(await agent_view(client, state))


@agents.delete("/{agent_id}", summary="Delete an agent with its messages and passages")
async def delete_agent(agent_id: str, client: ClientDep) -> JSONResponse:
    await client.delete_agent_async(agent_id)
    return message_response(f"Agent id={agent_id} successfully deleted")


class ResetMessagesRequest(BaseModel):
    add_default_initial_messages: bool = False


@agents.patch("/{agent_id}/reset-messages", response_model=AgentStateView, summary="Clear the context window")
async def reset_messages(agent_id: str, client: ClientDep,
                         body: Annotated[ResetMessagesRequest | None, Body()] = None) -> Response:
    state = await client.agent(agent_id).reset_messages_async(
        add_default_initial_messages=bool(body and body.add_default_initial_messages))
    return json_response(await agent_view(client, state))


# --------------------------------------------------------------------------- agent tools


@agents.get("/{agent_id}/tools", response_model=list[ToolView], summary="Tools attached to an agent")
async def list_agent_tools(agent_id: str, client: ClientDep, after: str | None = None, before: str | None = None,
                           limit: Annotated[int | None, page_limit()] = None, order: Order = "asc") -> list[ToolView]:
    view = await agent_view(client, await client.get_agent_state_async(agent_id))
    return page(view.tools, after, before, limit, order)


async def _set_tool(client: Client, agent_id: str, tool_id: str, attach: bool) -> Response:
    name, state = await asyncio.gather(tool_name(client, tool_id), client.get_agent_state_async(agent_id))
    tools = [t for t in state.tools if t != name] + ([name] if attach else [])
    if tools != state.tools:
        state = await client.agent(agent_id).modify_async(tools=tools)
    return json_response(await agent_view(client, state))


@agents.post("/{agent_id}/tools/{tool_name}/run", response_model=ToolExecutionResultView,
             summary="Run one of the agent's tools in the sandbox, with the agent's secrets")
async def run_tool_for_agent(agent_id: str, tool_name: str, client: ClientDep,
                             body: RunAgentToolRequest | None = None) -> ToolExecutionResultView:
    result = await client.agent(agent_id).run_tool_async(tool_name, (body or RunAgentToolRequest()).args)
    return ToolExecutionResultView(status="success" if result.ok else "error", func_return=result.message,
                                   stdout=[result.stdout] if result.stdout else None,
                                   stderr=[result.stderr] if result.stderr else None)


@agents.patch("/{agent_id}/tools/approval/{tool_name}", response_model=AgentStateView,
              summary="Require (or stop requiring) approval before the agent calls a tool")
async def modify_approval_for_tool(agent_id: str, tool_name: str, client: ClientDep,
                                   body: ModifyApprovalRequest | None = None,
                                   requires_approval: bool | None = None) -> Response:
    wanted = body.requires_approval if body is not None else requires_approval
    if wanted is None:
        raise InvalidInputError("say requires_approval (true or false) in the body")
    state = await client.agent(agent_id).set_approval_async(tool_name, wanted)
    return json_response(await agent_view(client, state))


@agents.patch("/{agent_id}/tools/attach/{tool_id}", response_model=AgentStateView, summary="Attach a tool")
async def attach_tool(agent_id: str, tool_id: str, client: ClientDep) -> Response:
    return await _set_tool(client, agent_id, tool_id, attach=True)


@agents.patch("/{agent_id}/tools/detach/{tool_id}", response_model=AgentStateView, summary="Detach a tool")
async def detach_tool(agent_id: str, tool_id: str, client: ClientDep) -> Response:
    return await _set_tool(client, agent_id, tool_id, attach=False)


# --------------------------------------------------------------------------- core memory


@agents.get("/{agent_id}/core-memory", response_model=MemoryView, summary="An agent's core memory")
async def retrieve_memory(agent_id: str, client: ClientDep) -> MemoryView:
    state = await client.get_agent_state_async(agent_id)
    return MemoryView(blocks=[BlockView.of(b) for b in state.blocks], agent_type=state.agent_type)


@agents.get("/{agent_id}/core-memory/blocks", response_model=list[BlockView], summary="An agent's blocks")
async def list_agent_blocks(agent_id: str, client: ClientDep, after: str | None = None, before: str | None = None,
                            limit: Annotated[int | None, page_limit()] = None, order: Order = "asc") -> list[BlockView]:
    blocks = (await client.get_agent_state_async(agent_id)).blocks
    return [BlockView.of(b) for b in page(blocks, after, before, limit, order)]


@agents.get("/{agent_id}/core-memory/blocks/{block_label}", response_model=BlockView, summary="A block by label")
async def retrieve_agent_block(agent_id: str, block_label: str, client: ClientDep) -> BlockView:
    block = (await client.get_agent_state_async(agent_id)).block(block_label)
    if block is None:
        raise NotFoundError("block", block_label)
    return BlockView.of(block)


@agents.patch("/{agent_id}/core-memory/blocks/{block_label}", response_model=BlockView,
              summary="Edit a block by label (waits for the agent's current turn)")
async def modify_agent_block(agent_id: str, block_label: str, body: UpdateBlockRequest,
                             client: ClientDep) -> BlockView:
    changes = body.changes()
    if changes.get("label", block_label) != block_label or "metadata" in changes:
        # a rename or new metadata: the edit by id, which every agent holding the block sees
        block = (await client.get_agent_state_async(agent_id)).block(block_label)
        if block is None:
            raise NotFoundError("block", block_label)
        return BlockView.of(await client.update_block_async(block.id, **changes))
    changes.pop("label", None)
    value = changes.pop("value", None)
    return BlockView.of(await client.agent(agent_id).blocks.update_async(block_label, value, **changes))


@agents.patch("/{agent_id}/core-memory/blocks/attach/{block_id}", response_model=AgentStateView,
              summary="Attach a stored block (blocks attached to several agents are shared)")
async def attach_block(agent_id: str, block_id: str, client: ClientDep) -> Response:
    return json_response(await agent_view(client, await client.attach_block_async(agent_id, block_id)))


@agents.patch("/{agent_id}/core-memory/blocks/detach/{block_id}", response_model=AgentStateView,
              summary="Detach a block (the block itself stays)")
async def detach_block(agent_id: str, block_id: str, client: ClientDep) -> Response:
    return json_response(await agent_view(client, await client.detach_block_async(agent_id, block_id)))


# --------------------------------------------------------------------------- archival memory


@agents.get("/{agent_id}/archival-memory", response_model=list[PassageView], summary="List passages")
async def list_passages(
    agent_id: str,
    client: ClientDep,
    after: str | None = None,
    before: str | None = None,
    limit: Annotated[int, page_limit(1)] = 100,
    search: str | None = None,
    ascending: bool = True,
) -> list[PassageView]:
    await client.get_agent_state_async(agent_id)
    if before is not None:
        raise InvalidInputError("passages page forwards only: pass after=<last passage id> (not before)")
    archival = client.agent(agent_id).archival
    if search:
        passages = await archival.search_async(search, top_k=limit)
    else:
        passages = await archival.list_async(limit=limit, after=after, ascending=ascending)
    return [PassageView.of(p) for p in passages]


@agents.post("/{agent_id}/archival-memory", response_model=list[PassageView], summary="Insert a passage")
async def create_passage(agent_id: str, body: CreatePassageRequest, client: ClientDep) -> list[PassageView]:
    await client.get_agent_state_async(agent_id)
    return [PassageView.of(await client.agent(agent_id).archival.insert_async(body.text, body.tags))]


@agents.get("/{agent_id}/archival-memory/search", response_model=ArchivalSearchResponse,
            summary="Search passages by meaning and words, with tag and date filters")
async def search_passages(
    agent_id: str,
    client: ClientDep,
    query: str,
    tags: Annotated[list[str] | None, Query()] = None,
    tag_match_mode: Literal["any", "all"] = "any",
    top_k: Annotated[int | None, Query(ge=1)] = None,
    start_datetime: DateTime | None = None,
    end_datetime: DateTime | None = None,
) -> ArchivalSearchResponse:
    await client.get_agent_state_async(agent_id)
    found = await client.agent(agent_id).archival.search_async(
        query, top_k=top_k or 10, tags=tags, tag_match_mode=tag_match_mode, start=start_datetime, end=end_datetime)
    return ArchivalSearchResponse(results=[ArchivalSearchResult.of(p) for p in found], count=len(found))


@agents.delete("/{agent_id}/archival-memory/{memory_id}", summary="Delete a passage")
async def delete_passage(agent_id: str, memory_id: str, client: ClientDep) -> JSONResponse:
    await client.agent(agent_id).archival.delete_async(memory_id)
    return message_response(f"Memory id={memory_id} successfully deleted")
