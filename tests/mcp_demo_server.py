"""A small MCP server for the tests, written with the MCP SDK.

    python tests/mcp_demo_server.py stdio
    python tests/mcp_demo_server.py streamable-http PORT
    python tests/mcp_demo_server.py sse PORT

With ``MCP_DEMO_EXTRA=1`` in its environment it has one more tool (``multiply``), so a
test can change what the server offers and refresh.
"""

from __future__ import annotations

import asyncio
import os
import sys

from mcp.server.fastmcp import FastMCP

port = int(sys.argv[2]) if len(sys.argv) > 2 else 8000
server = FastMCP("demo", host="127.0.0.1", port=port, log_level="WARNING")


@server.tool()
def add(a: int, b: int) -> str:
    """Add two whole numbers."""
    return str(a + b)


@server.tool()
def whoami() -> str:
    """The server process's id."""
    return str(os.getpid())


@server.tool()
def env_value(name: str) -> str:
    """The value of an environment variable of the server's process, or <unset>."""
    return os.environ.get(name, "<unset>")


@server.tool()
async def slow(seconds: float) -> str:
    """Wait, then answer."""
    await asyncio.sleep(seconds)
    return f"waited {seconds} s"


@server.tool()
def fail(why: str) -> str:
    """Always fails, saying why."""
    raise ValueError(why)


@server.tool(name="long-name.with-dot")
def dotted() -> str:
    """A tool whose name a model cannot call."""
    return "unreachable"


if os.environ.get("MCP_DEMO_EXTRA") == "1":
    @server.tool()
    def multiply(a: int, b: int) -> str:
        """Multiply two whole numbers."""
        return str(a * b)


if __name__ == "__main__":
    server.run(transport=sys.argv[1] if len(sys.argv) > 1 else "stdio")  # type: ignore[arg-type]
