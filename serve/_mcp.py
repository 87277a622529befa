"""Routes of /v1/mcp-servers: register MCP servers, list and run their tools (Letta's shapes)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Response
from pydantic import Field

from letta_ray.mcp import MCPServer, MCPServerConfig, StdioServerConfig

from ._common import ClientDep
from .schemas import ToolExecutionResultView, ToolView, _Shape

mcp_servers = APIRouter(prefix="/v1/mcp-servers", tags=["mcp-servers"])


class StdioMCPServerView(_Shape):
    id: str
    server_name: str
    mcp_server_type: Literal["stdio"] = "stdio"
    command: str
    args: list[str]
    env: dict[str, str] | None = None


class HTTPMCPServerView(_Shape):
    id: str
    server_name: str
    mcp_server_type: Literal["sse", "streamable_http"]
    server_url: str
    auth_header: str | None = None
    auth_token: str | None = None
    custom_headers: dict[str, str] | None = None


MCPServerView = StdioMCPServerView | HTTPMCPServerView


def view_of(server: MCPServer) -> MCPServerView:
    fields = {"id": server.id, "server_name": server.server_name, **server.config.model_dump()}
    if isinstance(server.config, StdioServerConfig):
        return StdioMCPServerView(**fields)
    return HTTPMCPServerView(**fields)


class CreateMCPServerRequest(_Shape):
    server_name: str
    config: MCPServerConfig


class UpdateMCPServerConfig(_Shape):
    """The fields to change; those left out stay as they are."""

    mcp_server_type: Literal["stdio", "sse", "streamable_http"] | None = None
    command: str | None = None
    args: list[str] | None = None
    env: dict[str, str] | None = None
    server_url: str | None = None
    auth_header: str | None = None
    auth_token: str | None = None
    custom_headers: dict[str, str] | None = None


class UpdateMCPServerRequest(_Shape):
    server_name: str | None = None
    config: UpdateMCPServerConfig | None = None


class RunMCPToolRequest(_Shape):
    args: dict[str, Any] = Field(default_factory=dict)


@mcp_servers.post("/", response_model=MCPServerView, summary="Register an MCP server and its tools")
async def create_mcp_server(body: CreateMCPServerRequest, client: ClientDep) -> MCPServerView:
    return view_of(await client.mcp_servers.create_async(body.server_name, body.config))


@mcp_servers.get("/", response_model=list[MCPServerView], summary="List the registered MCP servers")
async def list_mcp_servers(client: ClientDep) -> list[MCPServerView]:
    return [view_of(s) for s in await client.mcp_servers.list_async()]


@mcp_servers.get("/{mcp_server_id}", response_model=MCPServerView, summary="Retrieve an MCP server")
async def retrieve_mcp_server(mcp_server_id: str, client: ClientDep) -> MCPServerView:
    return view_of(await client.mcp_servers.retrieve_async(mcp_server_id))


@mcp_servers.patch("/{mcp_server_id}", response_model=MCPServerView, summary="Rename or reconfigure an MCP server")
async def update_mcp_server(mcp_server_id: str, body: UpdateMCPServerRequest, client: ClientDep) -> MCPServerView:
    config = body.config.model_dump(exclude_none=True) if body.config is not None else None
    return view_of(await client.mcp_servers.update_async(mcp_server_id, server_name=body.server_name,
                                                         config=config or None))


@mcp_servers.delete("/{mcp_server_id}", status_code=204, summary="Delete an MCP server and its tools")
async def delete_mcp_server(mcp_server_id: str, client: ClientDep) -> Response:
    await client.mcp_servers.delete_async(mcp_server_id)
    return Response(status_code=204)


@mcp_servers.get("/{mcp_server_id}/tools", response_model=list[ToolView], summary="List an MCP server's tools")
async def list_mcp_tools(mcp_server_id: str, client: ClientDep) -> list[ToolView]:
    return [ToolView.of(t) for t in await client.mcp_servers.tools_async(mcp_server_id)]


@mcp_servers.get("/{mcp_server_id}/tools/{tool_id}", response_model=ToolView, summary="Retrieve an MCP tool")
async def retrieve_mcp_tool(mcp_server_id: str, tool_id: str, client: ClientDep) -> ToolView:
    return ToolView.of(await client.mcp_servers.tool_async(mcp_server_id, tool_id))


@mcp_servers.post("/{mcp_server_id}/tools/{tool_id}/run", response_model=ToolExecutionResultView,
                  summary="Run an MCP server's tool on arguments")
async def run_mcp_tool(mcp_server_id: str, tool_id: str, client: ClientDep,
                       body: RunMCPToolRequest | None = None) -> ToolExecutionResultView:
    result = await client.mcp_servers.run_tool_async(mcp_server_id, tool_id, (body or RunMCPToolRequest()).args)
    return ToolExecutionResultView(status="success" if result.ok else "error", func_return=result.message)


@mcp_servers.patch("/{mcp_server_id}/refresh", summary="List an MCP server's tools again and store them")
async def refresh_mcp_server(mcp_server_id: str, client: ClientDep, agent_id: str | None = None) -> dict[str, Any]:
    return await client.mcp_servers.refresh_async(mcp_server_id)
