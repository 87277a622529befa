"""Routes of /v1/blocks: blocks of their own, shared by attaching them to agents."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from letta_ray.schemas import Order

from ._common import (
    ClientDep,
    custom_tools,
    message_response,
    page,
    page_limit,
)
from .schemas import (
    AgentStateView,
    BlockView,
    CreateBlockRequest,
    UpdateBlockRequest,
)

# --------------------------------------------------------------------------- blocks

blocks = APIRouter(prefix="/v1/blocks", tags=["blocks"])


@blocks.post("/", response_model=BlockView, summary="Create a block (attach it to agents to share it)")
async def create_block(body: CreateBlockRequest, client: ClientDep) -> BlockView:
    return BlockView.of(await client.create_block_async(body.to_core()))


@blocks.get("/", response_model=list[BlockView], summary="List blocks, by id")
async def list_blocks(client: ClientDep, label: str | None = None, after: str | None = None,
                      before: str | None = None, limit: Annotated[int | None, page_limit()] = 50,
                      order: Order = "asc", order_by: Literal["created_at"] = "created_at") -> list[BlockView]:
    if before is None and order == "asc":
        found = await client.list_blocks_async(label=label, limit=limit, after=after)
    else:  # the store pages forwards only
        found = page(await client.list_blocks_async(label=label, limit=None), after, before, limit, order)
    return [BlockView.of(b) for b in found]


@blocks.get("/count", response_model=int, summary="How many blocks there are")
async def count_blocks(client: ClientDep) -> int:
    return len(await client.list_blocks_async(limit=None))


@blocks.get("/{block_id}", response_model=BlockView, summary="Retrieve a block")
async def retrieve_block(block_id: str, client: ClientDep) -> BlockView:
    return BlockView.of(await client.get_block_async(block_id))


@blocks.patch("/{block_id}", response_model=BlockView, summary="Edit a block; every agent it is attached to sees it")
async def modify_block(block_id: str, body: UpdateBlockRequest, client: ClientDep) -> BlockView:
    return BlockView.of(await client.update_block_async(block_id, **body.changes()))


@blocks.delete("/{block_id}", summary="Delete a block, detaching it from every agent")
async def delete_block(block_id: str, client: ClientDep) -> JSONResponse:
    await client.delete_block_async(block_id)
    return message_response(f"Block id={block_id} successfully deleted")


@blocks.get("/{block_id}/agents", response_model=list[AgentStateView], summary="Agents a block is attached to")
async def list_block_agents(block_id: str, client: ClientDep, after: str | None = None, before: str | None = None,
                            limit: Annotated[int | None, page_limit()] = 50,
                            order: Order = "asc") -> list[AgentStateView]:
    ids = await client.agents_of_block_async(block_id)
    states = page(list(await asyncio.gather(*(client.get_agent_state_async(i) for i in ids))), after, before, limit,
                  order)
    tools = await custom_tools(client, states)
    return [AgentStateView.of(s, tools) for s in states]
