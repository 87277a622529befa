"""Routes of /v1/tools: the built-in tools and tools made from Python source."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from letta_ray.actors.client import Client
from letta_ray.errors import InvalidInputError
from letta_ray.schemas import Order

from ._common import (
    ClientDep,
    message_response,
    page,
    page_limit,
)
from .schemas import (
    BASE_TOOL_IDS,
    BASE_TOOL_VIEWS,
    CreateToolRequest,
    PipRequirementView,
    RunToolFromSourceRequest,
    ToolRunView,
    ToolSearchRequest,
    ToolSearchResultView,
    ToolView,
    UpdateToolRequest,
)

# --------------------------------------------------------------------------- tools

tools = APIRouter(prefix="/v1/tools", tags=["tools"])


@tools.get("/", response_model=list[ToolView], summary="List tools: the built-in ones, then yours, by name")
async def list_tools(client: ClientDep, name: str | None = None, after: str | None = None,
                     before: str | None = None, limit: Annotated[int | None, page_limit()] = 50,
                     order: Order = "asc", order_by: Literal["created_at"] = "created_at") -> list[ToolView]:
    views = sorted(BASE_TOOL_VIEWS.values(), key=lambda t: t.name)
    views += [ToolView.of(t) for t in await client.list_tools_async(limit=None)]
    return page([v for v in views if name is None or v.name == name], after, before, limit, order)


@tools.get("/count", response_model=int, summary="How many tools there are (built-in ones too)")
async def count_tools(client: ClientDep) -> int:
    return len(BASE_TOOL_VIEWS) + len(await client.list_tools_async(limit=None))


def _requirements(views: list[PipRequirementView] | None) -> list[dict[str, Any]] | None:
    return None if views is None else [v.model_dump() for v in views]


async def _create_tool(body: CreateToolRequest, client: Client) -> ToolView:
    if body.source_type != "python":
        raise InvalidInputError(f"source_type {body.source_type!r} is not supported; tools are Python functions")
    tool = await client.create_tool_async(
        body.source_code, tags=body.tags, description=body.description, json_schema=body.json_schema,
        return_char_limit=body.return_char_limit, pip_requirements=_requirements(body.pip_requirements),
        default_requires_approval=body.default_requires_approval)
    return ToolView.of(tool)


@tools.post("/", response_model=ToolView, summary="Create a tool from Python source (replaces one of that name)")
async def create_tool(body: CreateToolRequest, client: ClientDep) -> ToolView:
    return await _create_tool(body, client)


@tools.put("/", response_model=ToolView, summary="Create or replace a tool from Python source")
async def upsert_tool(body: CreateToolRequest, client: ClientDep) -> ToolView:
    return await _create_tool(body, client)


@tools.post("/search", response_model=list[ToolSearchResultView],
            summary="Search tools by words of their name, description and tags")
async def search_tools(body: ToolSearchRequest, client: ClientDep) -> list[ToolSearchResultView]:
    views = sorted(BASE_TOOL_VIEWS.values(), key=lambda t: t.name)
    views += [ToolView.of(t) for t in await client.list_tools_async(limit=None)]
    if body.tool_types:
        views = [v for v in views if v.tool_type in body.tool_types]
    if body.tags:
        views = [v for v in views if set(v.tags) & set(body.tags)]
    words = [w for w in re.findall(r"\w+", (body.query or "").lower())]
    scored = []
    for view in views:
        text = " ".join([view.name.replace("_", " "), view.description or "", *view.tags]).lower()
        hits = sum(1 for w in words if w in text)
        if hits or not words:
            scored.append((-hits, view.name, view, text))
    scored.sort(key=lambda item: (item[0], item[1]))
    return [ToolSearchResultView(tool=view, embedded_text=text[:500], fts_rank=rank + 1 if words else None)
            for rank, (_, _, view, text) in enumerate(scored[: body.limit])]


@tools.post("/run", response_model=ToolRunView, summary="Run a tool's source on arguments in the sandbox")
async def run_tool_from_source(body: RunToolFromSourceRequest, client: ClientDep) -> ToolRunView:
    if body.source_type not in (None, "python"):
        raise InvalidInputError(f"source_type {body.source_type!r} is not supported; tools are Python functions")
    result = await client.run_tool_from_source_async(body.source_code, body.args, name=body.name,
                                                     env=body.env_vars,
                                                     pip_requirements=_requirements(body.pip_requirements))
    return ToolRunView(name=body.name, tool_return=result.message, status="success" if result.ok else "error",
                       stdout=[result.stdout] if result.stdout else None,
                       stderr=[result.stderr] if result.stderr else None)


@tools.patch("/{tool_id}", response_model=ToolView, summary="Modify a tool")
async def modify_tool(tool_id: str, body: UpdateToolRequest, client: ClientDep) -> ToolView:
    if tool_id in BASE_TOOL_IDS:
        raise InvalidInputError(f"{BASE_TOOL_IDS[tool_id]!r} is a built-in tool and cannot be changed")
    return ToolView.of(await client.update_tool_async(
        tool_id, source_code=body.source_code, tags=body.tags, description=body.description,
        json_schema=body.json_schema, return_char_limit=body.return_char_limit,
        pip_requirements=_requirements(body.pip_requirements),
        default_requires_approval=body.default_requires_approval))


@tools.get("/{tool_id}", response_model=ToolView, summary="Retrieve a tool")
async def retrieve_tool(tool_id: str, client: ClientDep) -> ToolView:
    if tool_id in BASE_TOOL_IDS:
        return BASE_TOOL_VIEWS[BASE_TOOL_IDS[tool_id]]
    return ToolView.of(await client.get_tool_async(tool_id))


@tools.delete("/{tool_id}", summary="Delete a tool")
async def delete_tool(tool_id: str, client: ClientDep) -> JSONResponse:
    if tool_id in BASE_TOOL_IDS:
        raise InvalidInputError(f"{BASE_TOOL_IDS[tool_id]!r} is a built-in tool and cannot be deleted")
    await client.delete_tool_async(tool_id)
    return message_response(f"Tool id={tool_id} successfully deleted")
