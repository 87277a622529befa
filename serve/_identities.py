"""Routes of /v1/identities (the users and organisations agents talk to) and their attachments."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from letta_ray.actors.client import Client
from letta_ray.schemas import Identity, IdentityProperty, Order, time_cursors

from ._common import ClientDep, message_response, page_limit

identities = APIRouter(prefix="/v1/identities", tags=["identities"])
agent_identities = APIRouter(prefix="/v1/agents", tags=["identities"])

IdentityType = Literal["org", "user", "other"]


class IdentityView(BaseModel):
    id: str
    identifier_key: str
    name: str
    identity_type: IdentityType
    project_id: str | None = None
    agent_ids: list[str] = Field(default_factory=list)
    block_ids: list[str] = Field(default_factory=list)
    properties: list[IdentityProperty] = Field(default_factory=list)
    created_at: datetime | None = None
    updated_at: datetime | None = None


async def _view(client: Client, identity: Identity) -> IdentityView:
    agents = await client.runtime.store.agents_with_identity(identity.id)
    return IdentityView(**identity.model_dump(), agent_ids=agents)


class IdentityCreateRequest(BaseModel):
    identifier_key: str = Field(min_length=1, max_length=400)
    name: str = Field(min_length=1, max_length=200)
    identity_type: IdentityType = "user"
    project_id: str | None = None
    agent_ids: list[str] | None = None
    block_ids: list[str] | None = None
    properties: list[IdentityProperty] | None = None

    def fields(self) -> dict[str, Any]:
        return self.model_dump(exclude={"identifier_key", "name"}, exclude_none=True)


class IdentityUpdateRequest(BaseModel):
    identifier_key: str | None = Field(default=None, min_length=1, max_length=400)
    name: str | None = Field(default=None, min_length=1, max_length=200)
    identity_type: IdentityType | None = None
    agent_ids: list[str] | None = None
    block_ids: list[str] | None = None
    properties: list[IdentityProperty] | None = None


@identities.get("/", response_model=list[IdentityView], summary="List identities")
async def list_identities(client: ClientDep, name: str | None = None, identifier_key: str | None = None,
                          identity_type: IdentityType | None = None, project_id: str | None = None,
                          after: str | None = None, before: str | None = None,
                          limit: Annotated[int | None, page_limit()] = 50, order: Order = "desc",
                          order_by: Literal["created_at"] = "created_at") -> list[IdentityView]:
    after, before = time_cursors(order, after, before)
    found = await client.identities.list_async(name=name, identifier_key=identifier_key, identity_type=identity_type,
                                               project_id=project_id, after=after, before=before, limit=limit,
                                               order=order)
    return [await _view(client, i) for i in found]


@identities.get("/count", response_model=int, summary="How many identities there are")
async def count_identities(client: ClientDep) -> int:
    return len(await client.identities.list_async(limit=None))


@identities.post("/", response_model=IdentityView, summary="Create an identity (409 if its key is taken)")
async def create_identity(body: IdentityCreateRequest, client: ClientDep) -> IdentityView:
    return await _view(client, await client.identities.create_async(body.identifier_key, body.name, **body.fields()))


@identities.put("/", response_model=IdentityView, summary="Create or replace the identity of an identifier_key")
async def upsert_identity(body: IdentityCreateRequest, client: ClientDep) -> IdentityView:
    return await _view(client, await client.identities.upsert_async(body.identifier_key, body.name, **body.fields()))


@identities.get("/{identity_id}", response_model=IdentityView, summary="Retrieve an identity")
async def retrieve_identity(identity_id: str, client: ClientDep) -> IdentityView:
    return await _view(client, await client.identities.retrieve_async(identity_id))


@identities.patch("/{identity_id}", response_model=IdentityView, summary="Modify an identity")
async def modify_identity(identity_id: str, body: IdentityUpdateRequest, client: ClientDep) -> IdentityView:
    changes = body.model_dump(exclude_unset=True)
    return await _view(client, await client.identities.update_async(identity_id, **changes))


@identities.put("/{identity_id}/properties", response_model=IdentityView, summary="Replace an identity's properties")
async def upsert_identity_properties(identity_id: str, body: list[IdentityProperty],
                                     client: ClientDep) -> IdentityView:
    properties = [p.model_dump() for p in body]
    return await _view(client, await client.identities.set_properties_async(identity_id, properties))


@identities.delete("/{identity_id}", summary="Delete an identity (its agents stay)")
async def delete_identity(identity_id: str, client: ClientDep) -> Any:
    await client.identities.delete_async(identity_id)
    return message_response(f"Identity id={identity_id} successfully deleted")


@identities.get("/{identity_id}/agents", response_model=list[str], summary="The ids of an identity's agents")
async def list_identity_agents(identity_id: str, client: ClientDep) -> list[str]:
    return await client.identities.agents_async(identity_id)


@identities.get("/{identity_id}/blocks", response_model=list[str], summary="The ids of an identity's blocks")
async def list_identity_blocks(identity_id: str, client: ClientDep) -> list[str]:
    return (await client.identities.retrieve_async(identity_id)).block_ids


@agent_identities.patch("/{agent_id}/identities/attach/{identity_id}", summary="Attach an identity to an agent")
async def attach_identity(agent_id: str, identity_id: str, client: ClientDep) -> None:
    await client.identities.attach_async(agent_id, identity_id)


@agent_identities.patch("/{agent_id}/identities/detach/{identity_id}", summary="Detach an identity from an agent")
async def detach_identity(agent_id: str, identity_id: str, client: ClientDep) -> None:
    await client.identities.detach_async(agent_id, identity_id)
