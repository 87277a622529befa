"""MCP servers in the driver API: ``client.mcp_servers`` (the shape of the Letta SDK's).

Registering a server lists its tools and stores each as a tool (``tool_type
"external_mcp"``, tag ``mcp:<server name>``) that agents attach by name like any other;
their calls go to the server's actor (see ``actors/mcp_servers.py``). ``refresh`` makes
the stored tools what the server offers now.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import TypeAdapter, ValidationError

from letta_ray.errors import InvalidInputError, NotFoundError
from letta_ray.mcp import MCPServer, MCPServerConfig, MCPServerUnavailableError, tool_of
from letta_ray.sandbox import SandboxResult
from letta_ray.schemas import Tool, utcnow

from .hosts import Connection

log = logging.getLogger(__name__)
_CONFIG: TypeAdapter[Any] = TypeAdapter(MCPServerConfig)


def parse_config(config: Any) -> Any:
    """A server configuration from a model or a dict (``mcp_server_type`` says which)."""
    if not isinstance(config, dict):
        config = config.model_dump() if hasattr(config, "model_dump") else config
    try:
        return _CONFIG.validate_python(config)
    except ValidationError as exc:
        raise InvalidInputError(f"invalid MCP server config: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"])
    return f"{where}: {error['msg']}" if where else error["msg"]


class MCPServersAPI:
    """Register MCP servers and use their tools: ``client.mcp_servers.create("files", {...})``."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.runtime = connection.runtime

    def _run(self, coro: Any) -> Any:
        return self.connection.loop.run(coro)

    # ---------------------------------------------------------------- servers

    async def create_async(self, server_name: str, config: Any) -> MCPServer:
        try:
            server = MCPServer(server_name=server_name, config=parse_config(config))
        except ValidationError as exc:
            raise InvalidInputError(f"invalid MCP server: {_first_error(exc)}") from None
        self.runtime.mcp.check(server)
        server = await self.runtime.store.upsert_mcp_server(server)
        await self._sync_quietly(server)
        return server

    def create(self, server_name: str, config: Any) -> MCPServer:
        """Register an MCP server and its tools. ``config`` is
        ``{"mcp_server_type": "stdio", "command": ..., "args": [...], "env": {...}}`` or
        ``{"mcp_server_type": "streamable_http" | "sse", "server_url": ..., "auth_token": ...}``.
        A server that cannot be reached now is kept without tools (``refresh`` lists them later)."""
        return self._run(self.create_async(server_name, config))

    async def list_async(self) -> list[MCPServer]:
        return await self.runtime.store.list_mcp_servers()

    def list(self) -> list[MCPServer]:
        """The registered MCP servers, oldest first."""
        return self._run(self.list_async())

    async def retrieve_async(self, server_id: str) -> MCPServer:
        return await self.runtime.store.get_mcp_server(server_id)

    def retrieve(self, server_id: str) -> MCPServer:
        """An MCP server by id; NotFoundError if there is none."""
        return self._run(self.retrieve_async(server_id))

    async def update_async(self, server_id: str, *, server_name: str | None = None,
                           config: Any = None) -> MCPServer:
        server = await self.runtime.store.get_mcp_server(server_id)
        changes: dict[str, Any] = {}
        if server_name is not None:
            changes["server_name"] = server_name
        if config is not None:
            given = config if isinstance(config, dict) else config.model_dump(exclude_none=True)
            given = {k: v for k, v in given.items() if v is not None}
            kind = given.get("mcp_server_type", server.config.mcp_server_type)
            base = server.config.model_dump() if kind == server.config.mcp_server_type else {}
            changes["config"] = parse_config({**base, **given, "mcp_server_type": kind})
        try:
            updated = MCPServer.model_validate({**server.model_dump(), **changes,
                                                "updated_at": utcnow()})
        except ValidationError as exc:
            raise InvalidInputError(f"invalid MCP server: {_first_error(exc)}") from None
        self.runtime.mcp.check(updated)
        updated = await self.runtime.store.upsert_mcp_server(updated)
        await self.runtime.mcp.reconfigure(updated)
        await self._sync_quietly(updated)
        return updated

    def update(self, server_id: str, *, server_name: str | None = None, config: Any = None) -> MCPServer:
        """Rename a server or change its configuration (fields left out stay); its tools are
        listed again from the changed server."""
        return self._run(self.update_async(server_id, server_name=server_name, config=config))

    async def delete_async(self, server_id: str) -> list[str]:
        names = await self.runtime.store.delete_mcp_server(server_id)
        await self.runtime.mcp.stop(server_id)
        await self.runtime.directory.tools_changed()
        return names

    def delete(self, server_id: str) -> list[str]:
        """Delete a server and its tools (agents that had them attached no longer see them);
        a stdio server's process ends. Returns the names of the deleted tools."""
        return self._run(self.delete_async(server_id))

    # ---------------------------------------------------------------- tools

    async def refresh_async(self, server_id: str) -> dict[str, list[str]]:
        server = await self.runtime.store.get_mcp_server(server_id)
        return await self._sync(server)

    def refresh(self, server_id: str) -> dict[str, list[str]]:
        """List the server's tools again and store them: ``{"added", "updated", "deleted",
        "skipped"}`` (skipped: a name a model cannot call, or one another tool has).
        MCPServerUnavailableError if the server cannot be reached."""
        return self._run(self.refresh_async(server_id))

    async def tools_async(self, server_id: str) -> list[Tool]:
        await self.runtime.store.get_mcp_server(server_id)  # NotFoundError for an unknown server
        return await self.runtime.store.mcp_server_tools(server_id)

    def tools(self, server_id: str) -> list[Tool]:
        """The stored tools of a server, by name."""
        return self._run(self.tools_async(server_id))

    async def tool_async(self, server_id: str, tool: str) -> Tool:
        for stored in await self.tools_async(server_id):
            if tool in (stored.id, stored.name):
                return stored
        raise NotFoundError(f"tool of MCP server {server_id}", tool)

    async def run_tool_async(self, server_id: str, tool: str, args: dict[str, Any] | None = None) -> SandboxResult:
        stored = await self.tool_async(server_id, tool)
        server = await self.runtime.store.get_mcp_server(server_id)
        ok, text = await self.runtime.mcp.call_tool(server, stored.name, dict(args or {}))
        return SandboxResult(ok=ok, message=text)

    def run_tool(self, server_id: str, tool: str, args: dict[str, Any] | None = None) -> SandboxResult:
        """Call one of a server's tools (by id or name) outside any agent."""
        return self._run(self.run_tool_async(server_id, tool, args))

    async def _sync(self, server: MCPServer) -> dict[str, list[str]]:
        infos = await self.runtime.mcp.list_tools(server)  # MCPServerUnavailableError if it is down
        tools, unusable = [], []
        for info in infos:
            try:
                tools.append(tool_of(server, info))
            except InvalidInputError as exc:
                log.warning("MCP server %s: %s", server.server_name, exc)
                unusable.append(info.name)
        result = await self.runtime.store.sync_mcp_tools(server.id, tools)
        result["skipped"] = sorted([*result["skipped"], *unusable])
        await self.runtime.directory.tools_changed()
        return result

    async def _sync_quietly(self, server: MCPServer) -> None:
        try:
            await self._sync(server)
        except MCPServerUnavailableError as exc:
            log.warning("%s; it is registered without tools until a refresh reaches it", exc)

