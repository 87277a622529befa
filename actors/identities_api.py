"""Identities in the driver API: ``client.identities`` (the shape of Letta's).

An identity is someone agents talk to: a user or an organisation, known by the caller's
own ``identifier_key``. Agents are attached to identities (``AgentState.identity_ids``,
so ``client.list_agents`` can find a user's agents), and so are blocks (the identity keeps
their ids). Each method has an ``*_async`` twin.
"""

from __future__ import annotations

from typing import Any

from letta_ray.errors import ConflictError, InvalidInputError
from letta_ray.schemas import Identity, IdentityProperty, Order, utcnow

from .handles import AgentHandle
from .hosts import Connection

_CHANGEABLE = frozenset({"identifier_key", "name", "identity_type", "project_id", "block_ids", "properties"})


class IdentitiesAPI:
    """``client.identities``: the users and organisations agents talk to."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.store = connection.runtime.store

    def _run(self, coro: Any) -> Any:
        return self.connection.loop.run(coro)

    async def create_async(self, identifier_key: str, name: str, *, identity_type: str = "user",
                           agent_ids: list[str] | None = None, **fields: Any) -> Identity:
        if await self.store.list_identities(identifier_key=identifier_key, limit=1):
            raise ConflictError(f"an identity with identifier_key {identifier_key!r} exists already")
        identity = _identity(identifier_key=identifier_key, name=name, identity_type=identity_type, **fields)
        await self._check_blocks(identity.block_ids)
        identity = await self.store.upsert_identity(identity)
        for agent_id in agent_ids or []:
            await self.attach_async(agent_id, identity.id)
        return identity

    def create(self, identifier_key: str, name: str, **fields: Any) -> Identity:
        """A new identity (``identity_type`` "user", "org" or "other"; ``agent_ids``, ``block_ids``,
        ``properties`` [{"key", "value", "type"}]); ConflictError if the key is taken."""
        return self._run(self.create_async(identifier_key, name, **fields))

    async def upsert_async(self, identifier_key: str, name: str, **fields: Any) -> Identity:
        [existing] = await self.store.list_identities(identifier_key=identifier_key, limit=1) or [None]
        if existing is None:
            return await self.create_async(identifier_key, name, **fields)
        return await self.update_async(existing.id, name=name, **fields)

    def upsert(self, identifier_key: str, name: str, **fields: Any) -> Identity:
        """Create the identity of this key, or replace its fields if it exists."""
        return self._run(self.upsert_async(identifier_key, name, **fields))

    async def list_async(self, *, name: str | None = None, identifier_key: str | None = None,
                         identity_type: str | None = None, project_id: str | None = None, after: str | None = None,
                         before: str | None = None, limit: int | None = 50, order: Order = "asc") -> list[Identity]:
        return await self.store.list_identities(name=name, identifier_key=identifier_key, identity_type=identity_type,
                                                project_id=project_id, after=after, before=before, limit=limit,
                                                order=order)

    def list(self, **filters: Any) -> list[Identity]:
        return self._run(self.list_async(**filters))

    async def retrieve_async(self, identity_id: str) -> Identity:
        return await self.store.get_identity(identity_id)

    def retrieve(self, identity_id: str) -> Identity:
        return self._run(self.retrieve_async(identity_id))

    async def update_async(self, identity_id: str, *, agent_ids: list[str] | None = None, **changes: Any) -> Identity:
        identity = await self.store.get_identity(identity_id)
        if unknown := sorted(set(changes) - _CHANGEABLE):
            raise InvalidInputError(f"cannot change {unknown} of an identity; one of {sorted(_CHANGEABLE)}")
        changes = {k: v for k, v in changes.items() if v is not None}
        key = changes.get("identifier_key")
        if key and key != identity.identifier_key and await self.store.list_identities(identifier_key=key, limit=1):
            raise ConflictError(f"an identity with identifier_key {key!r} exists already")
        updated = _identity(**{**identity.model_dump(), **changes, "updated_at": utcnow()})
        await self._check_blocks(updated.block_ids)
        updated = await self.store.upsert_identity(updated)
        if agent_ids is not None:  # the identity's agents become exactly these
            current = set(await self.store.agents_with_identity(identity_id))
            for agent_id in sorted(current - set(agent_ids)):
                await self.detach_async(agent_id, identity_id)
            for agent_id in agent_ids:
                if agent_id not in current:
                    await self.attach_async(agent_id, identity_id)
        return updated

    def update(self, identity_id: str, **changes: Any) -> Identity:
        return self._run(self.update_async(identity_id, **changes))

    async def set_properties_async(self, identity_id: str, properties: list[dict[str, Any]]) -> Identity:
        return await self.update_async(identity_id, properties=properties)

    async def delete_async(self, identity_id: str) -> None:
        await self.store.get_identity(identity_id)
        for agent_id in await self.store.agents_with_identity(identity_id):
            await self.detach_async(agent_id, identity_id)
        await self.store.delete_identity(identity_id)

    def delete(self, identity_id: str) -> None:
        """Delete an identity, detaching it from its agents (the agents stay)."""
        self._run(self.delete_async(identity_id))

    async def agents_async(self, identity_id: str) -> list[str]:
        await self.store.get_identity(identity_id)
        return await self.store.agents_with_identity(identity_id)

    def agents(self, identity_id: str) -> list[str]:
        """The ids of the identity's agents."""
        return self._run(self.agents_async(identity_id))

    async def attach_async(self, agent_id: str, identity_id: str) -> list[str]:
        await self.store.get_identity(identity_id)
        return await AgentHandle(self.connection, agent_id, "").set_membership_async("identity_ids", identity_id,
                                                                                     True)

    def attach(self, agent_id: str, identity_id: str) -> list[str]:
        """Say an agent talks to this identity; returns the agent's identity ids."""
        return self._run(self.attach_async(agent_id, identity_id))

    async def detach_async(self, agent_id: str, identity_id: str) -> list[str]:
        return await AgentHandle(self.connection, agent_id, "").set_membership_async("identity_ids", identity_id,
                                                                                     False)

    def detach(self, agent_id: str, identity_id: str) -> list[str]:
        return self._run(self.detach_async(agent_id, identity_id))

    async def _check_blocks(self, block_ids: list[str]) -> None:
        for block_id in block_ids:
            await self.store.get_block(block_id)  # NotFoundError names it


def _identity(**fields: Any) -> Identity:
    try:
        if fields.get("properties") is not None:
            fields["properties"] = [p if isinstance(p, IdentityProperty) else IdentityProperty.model_validate(p)
                                    for p in fields["properties"]]
        return Identity.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValueError as exc:
        raise InvalidInputError(f"invalid identity: {exc}") from exc
