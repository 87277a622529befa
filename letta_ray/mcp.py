"""MCP servers: their configuration (Letta's shapes), their tools as ours, and a live session.

An MCP server is registered once (stdio: a command this machine runs; SSE or streamable
HTTP: a URL) and its tools become ordinary tools (``tool_type="external_mcp"``, tagged
``mcp:<server name>``) that agents attach like any other. ``MCPSession`` is one open
connection to a server through the ``mcp`` SDK; the runtime keeps one per server, outside
the agent hosts, and sends every agent's calls through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import Field, field_validator

from letta_ray.errors import InvalidInputError, LettaRayError
from letta_ray.schemas import Tool, _Model, new_id, utcnow

MCP_TOOL_TYPE = "external_mcp"
MCP_TAG_PREFIX = "mcp"
# What a provider accepts as a function name (OpenAI: ^[a-zA-Z0-9_-]{1,64}$).
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class MCPServerUnavailableError(LettaRayError):
    """An MCP server could not be reached, or its connection broke."""

    def __init__(self, server_name: str, reason: str) -> None:
        super().__init__(f"MCP server {server_name!r} is unavailable: {reason}")
        self.server_name = server_name
        self.reason = reason

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.server_name, self.reason))


def _http_url(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"server_url must be an http:// or https:// URL, got {url!r}")
    return url


class StdioServerConfig(_Model):
    """A server this machine starts as a process and talks to over its stdin and stdout."""

    mcp_server_type: Literal["stdio"] = "stdio"
    command: str = Field(min_length=1, description="the program to run")
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] | None = Field(
        None, description="its environment, on top of PATH, HOME and the like (never the server's keys)")


class _HTTPServerConfig(_Model):
    server_url: str
    auth_header: str | None = Field(None, description="the header the token goes in (e.g. Authorization)")
    auth_token: str | None = None
    custom_headers: dict[str, str] | None = None

    @field_validator("server_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value)

    def headers(self) -> dict[str, str]:
        headers = dict(self.custom_headers or {})
        if self.auth_token:
            name = self.auth_header or "Authorization"
            token = self.auth_token
            if name.lower() == "authorization" and not token.lower().startswith("bearer "):
                token = f"Bearer {token}"
            headers[name] = token
        return headers


class SSEServerConfig(_HTTPServerConfig):
    """A server reached over HTTP with server-sent events (the older MCP transport)."""

    mcp_server_type: Literal["sse"] = "sse"


class StreamableHTTPServerConfig(_HTTPServerConfig):
    """A server reached over streamable HTTP (the current MCP transport)."""

    mcp_server_type: Literal["streamable_http"] = "streamable_http"


MCPServerConfig = Annotated[StdioServerConfig | SSEServerConfig | StreamableHTTPServerConfig,
                            Field(discriminator="mcp_server_type")]


class MCPServer(_Model):
    """A registered MCP server."""

    id: str = Field(default_factory=lambda: new_id("mcp_server"))
    server_name: str = Field(min_length=1, max_length=200)
    config: MCPServerConfig
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    @field_validator("server_name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value.strip() or any(c in value for c in "\n\r\t"):
            raise ValueError("server_name must be a non-empty single line")
        return value


class MCPToolInfo(_Model):
    """A tool as an MCP server lists it."""

    name: str
    description: str | None = None
    input_schema: dict[str, Any] = Field(default_factory=dict)


def server_of(tool: Tool) -> str | None:
    """The id of the MCP server a tool comes from (None for other tools)."""
    if tool.tool_type != MCP_TOOL_TYPE:
        return None
    return (tool.metadata.get(MCP_TAG_PREFIX) or {}).get("server_id")


def tool_of(server: MCPServer, info: MCPToolInfo) -> Tool:
    """Our tool for one of a server's tools; InvalidInputError if a model could not call it."""
    if not _TOOL_NAME.match(info.name):
        raise InvalidInputError(f"MCP tool name {info.name!r} is not a valid function name "
                                "(letters, digits, _ and -, at most 64)")
    schema = dict(info.input_schema or {})
    if schema.get("type", "object") != "object":
        raise InvalidInputError(f"MCP tool {info.name!r} takes {schema.get('type')!r}, not an object of arguments")
    schema.setdefault("type", "object")
    schema.setdefault("properties", {})
    schema.setdefault("required", [])
    description = info.description or f"{info.name} (a tool of the MCP server {server.server_name})"
    return Tool(name=info.name, description=description, tool_type=MCP_TOOL_TYPE,
                json_schema={"name": info.name, "description": description, "parameters": schema},
                tags=[f"{MCP_TAG_PREFIX}:{server.server_name}"],
                metadata={MCP_TAG_PREFIX: {"server_name": server.server_name, "server_id": server.id}})


class MCPSession:
    """One open connection to an MCP server; calls from many tasks share it.

    The SDK's transports are async context managers that must be entered and left by one
    task, so a background task owns the connection and the calls go through its session.
    A connection that broke is opened again on the next call; a call that was under way
    when it broke is not repeated (a tool may have side effects).
    """

    def __init__(self, server: MCPServer, *, connect_timeout_s: float = 10.0) -> None:
        self.server = server
        self.connect_timeout_s = connect_timeout_s
        self._session: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._lock = asyncio.Lock()

    @property
    def name(self) -> str:
        return self.server.server_name

    def _transport(self) -> contextlib.AbstractAsyncContextManager[Any]:
        config = self.server.config
        if isinstance(config, StdioServerConfig):
            from mcp.client.stdio import StdioServerParameters, get_default_environment, stdio_client

            env = {**get_default_environment(), **(config.env or {})}
            return stdio_client(StdioServerParameters(command=config.command, args=config.args, env=env))
        if isinstance(config, SSEServerConfig):
            from mcp.client.sse import sse_client

            return sse_client(config.server_url, headers=config.headers(), timeout=self.connect_timeout_s)
        import httpx
        from mcp.client.streamable_http import streamable_http_client

        http = httpx.AsyncClient(headers=config.headers(),
                                 timeout=httpx.Timeout(self.connect_timeout_s, read=300.0))
        return _closing_after(streamable_http_client(config.server_url, http_client=http), http)

    async def _run(self, ready: asyncio.Future[None]) -> None:
        from mcp import ClientSession

        assert self._stop is not None
        try:
            async with self._transport() as streams, ClientSession(streams[0], streams[1]) as session:
                await session.initialize()
                self._session = session
                ready.set_result(None)
                await self._stop.wait()
        except BaseException as exc:  # for whoever waits for the connection, or calls next
            self._failure = exc
            if not ready.done():
                ready.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._session = None

    def _alive(self) -> bool:
        return self._session is not None and self._task is not None and not self._task.done()

    async def connect(self) -> None:
        """Open the connection if it is not open; MCPServerUnavailableError if it cannot be."""
        async with self._lock:
            if self._alive():
                return
            await self._shut()
            loop = asyncio.get_running_loop()
            ready: asyncio.Future[None] = loop.create_future()
            self._stop = asyncio.Event()
            self._task = loop.create_task(self._run(ready))
            try:
                await asyncio.wait_for(asyncio.shield(ready), self.connect_timeout_s)
            except TimeoutError:
                await self._shut()
                raise MCPServerUnavailableError(
                    self.name, f"no answer to the MCP handshake within {self.connect_timeout_s:g} s") from None
            except Exception as exc:
                await self._shut()
                raise MCPServerUnavailableError(self.name, _reason(exc)) from None

    async def list_tools(self) -> list[MCPToolInfo]:
        """The server's tools, every page of them; MCPServerUnavailableError if it cannot say."""
        import anyio

        for attempt in (1, 2):
            await self.connect()
            tools: list[MCPToolInfo] = []
            cursor: str | None = None
            try:
                while True:
                    page = await self._unless_it_breaks(self._session.list_tools(cursor=cursor),
                                                        self.connect_timeout_s * 3)
                    tools += [MCPToolInfo(name=t.name, description=t.description, input_schema=t.inputSchema or {})
                              for t in page.tools]
                    cursor = page.nextCursor
                    if not cursor:
                        return tools
            except TimeoutError:
                raise MCPServerUnavailableError(self.name, "it did not list its tools in time") from None
            except (anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
                await self._shut()  # it had gone away: connect again, once
                if attempt == 2:
                    raise MCPServerUnavailableError(self.name, _reason(exc)) from None
            except Exception as exc:
                await self._shut()
                raise MCPServerUnavailableError(self.name, _reason(exc)) from None
        raise AssertionError("unreachable")

    async def call_tool(self, name: str, args: dict[str, Any], timeout_s: float) -> tuple[bool, str]:
        """Call one tool: (ok, the text the model reads). A server that is down or a call that
        takes longer than ``timeout_s`` is (False, why), never an exception."""
        import anyio
        from mcp.shared.exceptions import McpError

        for attempt in (1, 2):
            try:
                await self.connect()
            except MCPServerUnavailableError as exc:
                return False, str(exc)
            try:
                result = await self._unless_it_breaks(
                    self._session.call_tool(name, args, read_timeout_seconds=timedelta(seconds=timeout_s)),
                    timeout_s + 1.0)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
                # The connection had closed (a stdio server that exited): the call was not
                # sent, so it is safe to open a new one and send it there.
                await self._shut()
                if attempt == 2:
                    return False, f"the MCP server {self.name!r} is unavailable: {_reason(exc)}"
                continue
            except (TimeoutError, McpError) as exc:
                if isinstance(exc, TimeoutError) or "timed out" in str(exc).lower():
                    return False, (f"the MCP server {self.name!r} did not answer {name} within {timeout_s:g} s "
                                   "(LETTA_RAY_MCP_TIMEOUT_S)")
                return False, f"the MCP server {self.name!r} refused {name}: {exc}"
            except Exception as exc:  # a broken transport: the next call reconnects
                await self._shut()
                return False, f"the MCP server {self.name!r} is unavailable: {_reason(exc)}"
            return not result.isError, _result_text(result)
        raise AssertionError("unreachable")

    async def _unless_it_breaks(self, request: Any, timeout_s: float) -> Any:
        """Await an MCP request, but not past the end of the connection: when a transport
        fails (an HTTP server that went away), the SDK ends the connection's task and the
        request would wait for its answer until it timed out."""
        call = asyncio.ensure_future(request)
        owner = self._task
        assert owner is not None
        done, _ = await asyncio.wait({call, owner}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if call in done:
            return call.result()
        call.cancel()
        with contextlib.suppress(BaseException):
            await call
        if owner in done:
            failure = self._failure
            raise ConnectionError(_reason(failure) if failure else "the connection closed")
        raise TimeoutError

    async def _shut(self) -> None:
        task, self._task = self._task, None
        if self._stop is not None:
            self._stop.set()
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), 5.0)
            except BaseException:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        self._session = None

    async def close(self) -> None:
        """Close the connection (a stdio server's process ends with it)."""
        async with self._lock:
            await self._shut()


@contextlib.asynccontextmanager
async def _closing_after(transport: contextlib.AbstractAsyncContextManager[Any], http: Any) -> Any:
    async with http, transport as streams:
        yield streams


def _result_text(result: Any) -> str:
    """What the model reads of a tool's result: its text parts, others described."""
    parts = []
    for piece in result.content or []:
        text = getattr(piece, "text", None)
        parts.append(text if isinstance(text, str) else f"[{getattr(piece, 'type', 'content')} content]")
    if not parts and result.structuredContent is not None:
        import json

        return json.dumps(result.structuredContent, ensure_ascii=False, default=str)
    return "\n".join(parts) if parts else "(the tool returned nothing)"


def _reason(exc: BaseException) -> str:
    """One line about why a connection failed (exception groups unwrapped)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
