"""MCP servers: a small server written with the MCP SDK (tests/mcp_demo_server.py), over
stdio and over HTTP on 127.0.0.1; its tools registered, attached to agents and called by
them; timeouts, a server that is down, refresh, delete."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from letta_ray.errors import InvalidInputError
from letta_ray.local_cluster import free_port, wait_for_port
from letta_ray.mcp import (
    MCPServer,
    MCPServerUnavailableError,
    MCPSession,
    MCPToolInfo,
    SSEServerConfig,
    StdioServerConfig,
    StreamableHTTPServerConfig,
    tool_of,
)

DEMO = str(Path(__file__).with_name("mcp_demo_server.py"))


def stdio_config(**env: str) -> dict[str, Any]:
    return {"mcp_server_type": "stdio", "command": sys.executable, "args": [DEMO, "stdio"], "env": env or None}


@contextlib.contextmanager
def http_server(transport: str = "streamable-http") -> Iterator[str]:
    """The demo server over HTTP on a loopback port; yields its URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, DEMO, transport, str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    path = "/mcp" if transport == "streamable-http" else "/sse"
    url = f"http://127.0.0.1:{port}{path}"
    try:
        wait_for_port(port, 30.0, "demo MCP server")
        yield url
    finally:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- without Ray


@contextlib.asynccontextmanager
async def demo_session(**env: str) -> AsyncIterator[MCPSession]:
    """A session with the demo server over stdio, closed after the block."""
    session = MCPSession(MCPServer(server_name="demo", config=StdioServerConfig(
        command=sys.executable, args=[DEMO, "stdio"], env=env or None)))
    try:
        yield session
    finally:
        await session.close()


async def test_a_stdio_session_lists_and_calls_tools_and_the_server_gets_no_keys_of_ours(monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-leaves")
    async with demo_session(GREETING="hello") as session:
        names = [t.name for t in await session.list_tools()]
        assert {"add", "slow", "fail", "env_value"} <= set(names)
        assert await session.call_tool("add", {"a": 2, "b": 3}, 10) == (True, "5")
        assert await session.call_tool("env_value", {"name": "GREETING"}, 10) == (True, "hello")
        assert await session.call_tool("env_value", {"name": "OPENAI_API_KEY"}, 10) == (True, "<unset>")
        ok, text = await session.call_tool("fail", {"why": "no reason"}, 10)
        assert not ok and "no reason" in text
        # calls from many tasks share the one connection and run together
        started = time.monotonic()
        results = await asyncio.gather(*(session.call_tool("slow", {"seconds": 0.5}, 10) for _ in range(8)))
        assert all(ok for ok, _ in results) and time.monotonic() - started < 3.5


async def test_a_slow_tool_times_out_and_the_session_goes_on() -> None:
    async with demo_session() as session:
        started = time.monotonic()
        ok, text = await session.call_tool("slow", {"seconds": 30}, 1.0)
        assert not ok and "did not answer slow within 1 s" in text
        assert time.monotonic() - started < 5
        assert await session.call_tool("add", {"a": 1, "b": 1}, 10) == (True, "2")


async def test_a_stdio_server_that_dies_is_started_again_on_the_next_call() -> None:
    async with demo_session() as session:
        ok, pid = await session.call_tool("whoami", {}, 10)
        assert ok
        os.kill(int(pid), 9)
        await asyncio.sleep(0.5)
        first = await session.call_tool("whoami", {}, 10)  # may be the call that finds it dead
        second = first if first[0] else await session.call_tool("whoami", {}, 10)
        assert second[0] and second[1] != pid


async def test_servers_that_cannot_be_reached_are_a_clear_failure_not_a_hang() -> None:
    port = free_port()  # nothing listens there
    down = MCPSession(MCPServer(server_name="down", config=StreamableHTTPServerConfig(
        server_url=f"http://127.0.0.1:{port}/mcp")), connect_timeout_s=5)
    started = time.monotonic()
    ok, text = await down.call_tool("add", {"a": 1, "b": 2}, 10)
    assert not ok and "MCP server 'down' is unavailable" in text
    assert time.monotonic() - started < 6
    with pytest.raises(MCPServerUnavailableError, match="down"):
        await down.list_tools()
    missing = MCPSession(MCPServer(server_name="missing", config=StdioServerConfig(command="/no/such/program")))
    ok, text = await missing.call_tool("add", {}, 10)
    assert not ok and "missing" in text and "No such file" in text


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
async def test_sessions_over_http_on_loopback(transport: str) -> None:
    with http_server(transport) as url:
        config = (StreamableHTTPServerConfig if transport == "streamable-http" else SSEServerConfig)(server_url=url)
        session = MCPSession(MCPServer(server_name="web", config=config))
        try:
            assert "add" in [t.name for t in await session.list_tools()]
            assert await session.call_tool("add", {"a": 40, "b": 2}, 10) == (True, "42")
        finally:
            await session.close()


def test_server_configs_and_tools_are_checked() -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        StreamableHTTPServerConfig(server_url="file:///etc/passwd")
    config = StreamableHTTPServerConfig(server_url="https://x.test/mcp", auth_token="tok")
    assert config.headers() == {"Authorization": "Bearer tok"}
    server = MCPServer(server_name="demo", config=StdioServerConfig(command="x"))
    tool = tool_of(server, MCPToolInfo(name="add", description="Add.", input_schema={
        "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}))
    assert tool.tool_type == "external_mcp" and tool.tags == ["mcp:demo"]
    assert tool.metadata == {"mcp": {"server_name": "demo", "server_id": server.id}}
    assert tool.json_schema["parameters"]["required"] == ["a"]
    with pytest.raises(InvalidInputError, match="not a valid function name"):
        tool_of(server, MCPToolInfo(name="has.dot"))


# --------------------------------------------------------------------------- on Ray


@pytest.mark.ray
def test_agents_call_one_shared_stdio_server_that_runs_outside_their_hosts(client: Any, fake_llm_server: Any) -> None:
    server = client.mcp_servers.create("demo-shared", stdio_config())
    try:
        tools = {t.name: t for t in client.mcp_servers.tools(server.id)}
        assert {"add", "whoami", "slow"} <= set(tools) and "long-name.with-dot" not in tools
        assert tools["add"].tags == ["mcp:demo-shared"]
        first = client.create_agent("mcp-a", model="fake-model", model_endpoint=fake_llm_server.url,
                                    tools=["add", "whoami"])
        second = client.create_agent("mcp-b", model="fake-model", model_endpoint=fake_llm_server.url,
                                     tools=["whoami"])
        # a real turn: the model calls the MCP tool, the result comes back to it
        reply = first.send('call add {"a": 20, "b": 22}')
        returns = [m for m in reply.messages if m.message_type == "tool_return_message"]
        assert returns and returns[0].status == "success" and '"42"' in returns[0].tool_return
        one = first.run_tool("whoami")
        two = second.run_tool("whoami")
        assert one.ok and two.ok and one.message == two.message  # the same server process
        first.send('call whoami {}')  # and the same one from inside a turn, on the agent's host
        parent = Path(f"/proc/{int(one.message)}/stat").read_text().rsplit(")", 1)[1].split()[1]
        title = Path(f"/proc/{parent}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        assert "MCPServerActor" in title, title  # its parent is the server's actor, not a host
    finally:
        client.mcp_servers.delete(server.id)
    assert "add" not in [t.name for t in client.list_tools(limit=None)]
    reply = first.send('call add {"a": 1, "b": 2}')  # the deleted tool is no longer the agent's
    returns = [m for m in reply.messages if m.message_type == "tool_return_message"]
    assert returns and returns[0].status == "error" and "no tool named 'add'" in returns[0].tool_return


@pytest.mark.ray
def test_a_slow_or_unreachable_server_is_a_failed_tool_result_and_the_agent_goes_on(
        client: Any, fake_llm_server: Any, monkeypatch) -> None:
    with http_server() as url:
        server = client.mcp_servers.create("demo-web", {"mcp_server_type": "streamable_http", "server_url": url})
        agent = client.create_agent("mcp-web", model="fake-model", model_endpoint=fake_llm_server.url,
                                    tools=["add", "slow"])
        assert agent.run_tool("add", {"a": 1, "b": 2}).message == "3"
        monkeypatch.setattr(client.runtime.mcp, "config", type(client.runtime.mcp.config)(call_timeout_s=1.0))
        started = time.monotonic()
        slow = client.mcp_servers.run_tool(server.id, "slow", {"seconds": 20})
        assert not slow.ok and "within 1 s" in slow.message and time.monotonic() - started < 10
    # the server is gone now
    started = time.monotonic()
    reply = agent.send('call add {"a": 2, "b": 2}')
    returns = [m for m in reply.messages if m.message_type == "tool_return_message"]
    assert returns[0].status == "error" and "demo-web" in returns[0].tool_return
    assert time.monotonic() - started < 30
    assert agent.send("hello again").messages  # and it answers the next message normally
    with pytest.raises(MCPServerUnavailableError):
        client.mcp_servers.refresh(server.id)
    client.mcp_servers.delete(server.id)


@pytest.mark.ray
def test_refresh_follows_what_the_server_offers_and_names_are_unique(client: Any) -> None:
    server = client.mcp_servers.create("demo-refresh", stdio_config())
    try:
        assert "multiply" not in [t.name for t in client.mcp_servers.tools(server.id)]
        updated = client.mcp_servers.update(server.id, config={"mcp_server_type": "stdio",
                                                                "env": {"MCP_DEMO_EXTRA": "1"}})
        assert updated.config.command == sys.executable and updated.config.env == {"MCP_DEMO_EXTRA": "1"}
        names = [t.name for t in client.mcp_servers.tools(server.id)]
        assert "multiply" in names  # the update listed the changed server's tools
        assert client.mcp_servers.run_tool(server.id, "multiply", {"a": 6, "b": 7}).message == "42"
        client.mcp_servers.update(server.id, config={"env": {"MCP_DEMO_EXTRA": "0"}})
        assert client.mcp_servers.refresh(server.id)["added"] == []
        assert "multiply" not in [t.name for t in client.mcp_servers.tools(server.id)]
        with pytest.raises(Exception, match="exists already"):
            client.mcp_servers.create("demo-refresh", stdio_config())
        other = client.mcp_servers.create("demo-other", stdio_config())
        try:  # its tools have the names the first server's have: they are skipped, not stolen
            assert client.mcp_servers.tools(other.id) == []
            assert "add" in client.mcp_servers.refresh(other.id)["skipped"]
        finally:
            client.mcp_servers.delete(other.id)
        with pytest.raises(InvalidInputError, match="invalid MCP server config"):
            client.mcp_servers.create("bad", {"mcp_server_type": "sse", "server_url": "ftp://x"})
    finally:
        client.mcp_servers.delete(server.id)
