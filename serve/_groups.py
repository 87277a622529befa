"""Routes of /v1/groups: groups of agents sent messages like one agent."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from letta_ray.group_policies import Group, GroupCreate
from letta_ray.schemas import Order

from ._common import ClientDep, json_response, message_response, page, page_limit
from .schemas import SendMessageRequest

groups = APIRouter(prefix="/v1/groups", tags=["groups"])


@groups.post("/", response_model=Group, summary="Create a group (round_robin, supervisor or dynamic)")
async def create_group(body: GroupCreate, client: ClientDep) -> Response:
    group = await client.groups.create_group_async(body.agent_ids, body.manager_config, body.description)
    return json_response(group)


@groups.get("/", response_model=list[Group], summary="List groups")
async def list_groups(client: ClientDep, manager_type: str | None = None, after: str | None = None,
                      before: str | None = None, limit: Annotated[int | None, page_limit()] = 50,
                      order: Order = "asc", order_by: Literal["created_at"] = "created_at") -> list[Group]:
    found = await client.groups.list_groups_async(manager_type=manager_type, limit=None)
    return page(found, after, before, limit, order)


@groups.get("/count", response_model=int, summary="How many groups there are")
async def count_groups(client: ClientDep) -> int:
    return len(await client.groups.list_groups_async(limit=None))


@groups.get("/{group_id}", response_model=Group, summary="Retrieve a group")
async def retrieve_group(group_id: str, client: ClientDep) -> Response:
    return json_response(await client.groups.get_group_async(group_id))


@groups.delete("/{group_id}", summary="Delete a group (its agents stay)")
async def delete_group(group_id: str, client: ClientDep) -> JSONResponse:
    await client.groups.delete_group_async(group_id)
    return message_response(f"Group id={group_id} successfully deleted")


@groups.post("/{group_id}/messages", summary="Send messages to a group; every participant's messages, in order")
async def send_group_message(group_id: str, body: SendMessageRequest, client: ClientDep) -> Response:
    response: Any = await client.groups.send_group_async(group_id, body.to_core(), max_steps=body.max_steps)
    return json_response(response)
