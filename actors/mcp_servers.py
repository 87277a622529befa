"""MCP servers on Ray: one actor per registered server holds its one connection.

A stdio server is a child process of its actor, never of an agent host, and every agent
(on every host) that calls one of its tools goes through that actor; an HTTP server is
reached through its actor's one session too. The actor is named after the server, so any
process finds it, and it is made again from the stored configuration when it is missing
(first use, or after it died).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import RayActorError

from letta_ray.errors import InvalidInputError
from letta_ray.mcp import MCPServer, MCPServerUnavailableError, MCPSession, MCPToolInfo, StdioServerConfig

from ._facade import ActorFacade, get_or_create, kill_named, remote_method

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MCPConfig:
    """How the runtime talks to MCP servers (from ``Settings``)."""

    call_timeout_s: float = 60.0
    connect_timeout_s: float = 15.0
    allow_stdio: bool = True


class MCPServerActor:
    """Holds the connection to one MCP server (for a stdio server: its process)."""

    def __init__(self, server: MCPServer, connect_timeout_s: float) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.session = MCPSession(server, connect_timeout_s=connect_timeout_s)

    async def configure(self, server: MCPServer) -> None:
        """Use a changed configuration: the old connection closes, the next call opens the new one."""
        old, self.session = self.session, MCPSession(server, connect_timeout_s=self.connect_timeout_s)
        await old.close()

    async def list_tools(self) -> list[MCPToolInfo]:
        """The server's tools; MCPServerUnavailableError if it cannot be reached."""
        return await self.session.list_tools()

    async def call_tool(self, name: str, args: dict[str, Any], timeout_s: float) -> tuple[bool, str]:
        """(ok, text) of one tool call; a server that is down or slow is (False, why)."""
        return await self.session.call_tool(name, args, timeout_s)

    async def close(self) -> None:
        await self.session.close()

    async def ping(self) -> str:
        return "ok"


class MCPServerHandle(ActorFacade):
    """An MCP server actor's methods, awaited."""

    configure = remote_method(MCPServerActor.configure)
    list_tools = remote_method(MCPServerActor.list_tools)
    call_tool = remote_method(MCPServerActor.call_tool)
    close = remote_method(MCPServerActor.close)
    ping = remote_method(MCPServerActor.ping)


class MCPServers:
    """Finds (or makes) the actor of an MCP server; picklable, so every host has one."""

    def __init__(self, prefix: str, namespace: str, config: MCPConfig) -> None:
        self.prefix = prefix
        self.namespace = namespace
        self.config = config
        self._handles: dict[str, MCPServerHandle] = {}  # found once per process: a lookup costs ms

    def __getstate__(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "namespace": self.namespace, "config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["prefix"], state["namespace"], state["config"])  # type: ignore[misc]

    def check(self, server: MCPServer) -> None:
        """InvalidInputError if this runtime does not run servers like ``server``."""
        if isinstance(server.config, StdioServerConfig) and not self.config.allow_stdio:
            raise InvalidInputError("stdio MCP servers are turned off on this server (LETTA_RAY_MCP_STDIO=0); "
                                    "register one reached over HTTP (sse or streamable_http)")

    def name_of(self, server_id: str) -> str:
        return f"{self.prefix}-mcp-{server_id}"

    def handle(self, server: MCPServer) -> MCPServerHandle:
        """The server's actor, started if it is not running."""
        self.check(server)
        handle = self._handles.get(server.id)
        if handle is None:
            handle = self._handles[server.id] = MCPServerHandle(get_or_create(
                MCPServerActor, self.name_of(server.id), self.namespace, (server, self.config.connect_timeout_s),
                lifetime="detached", num_cpus=0))
        return handle

    async def list_tools(self, server: MCPServer) -> list[MCPToolInfo]:
        return await self._retrying(server, lambda h: h.list_tools())

    async def call_tool(self, server: MCPServer, name: str, args: dict[str, Any],
                        timeout_s: float | None = None) -> tuple[bool, str]:
        """One tool call through the server's actor: (ok, text), never an exception."""
        try:
            return await self._retrying(
                server, lambda h: h.call_tool(name, args, timeout_s or self.config.call_timeout_s))
        except (MCPServerUnavailableError, InvalidInputError) as exc:
            return False, str(exc)

    async def _retrying(self, server: MCPServer, call: Any) -> Any:
        """``call`` on the server's actor; once more on a new actor if that one died."""
        try:
            return await call(self.handle(server))
        except RayActorError:
            log.warning("the actor of MCP server %s died; starting it again", server.server_name)
            self._handles.pop(server.id, None)
            try:
                return await call(self.handle(server))
            except RayActorError as exc:
                raise MCPServerUnavailableError(server.server_name, "its actor keeps dying") from exc

    async def reconfigure(self, server: MCPServer) -> None:
        """Tell a running actor the server's new configuration (a stopped one reads it when started)."""
        try:
            actor = ray.get_actor(self.name_of(server.id), namespace=self.namespace)
        except ValueError:
            return
        await MCPServerHandle(actor).configure(server)

    async def stop(self, server_id: str) -> None:
        """Close a server's connection and stop its actor (when the server is deleted)."""
        self._handles.pop(server_id, None)
        try:
            actor = ray.get_actor(self.name_of(server_id), namespace=self.namespace)
        except ValueError:
            return
        try:
            await MCPServerHandle(actor).close()
        except Exception:
            log.debug("closing MCP server %s failed", server_id, exc_info=True)
        ray.kill(actor, no_restart=True)

    def stop_all(self) -> None:
        """Kill every MCP server actor of this runtime (at shut-down); stdio servers end with them."""
        kill_named(f"{self.prefix}-mcp-", self.namespace)
