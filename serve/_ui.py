"""The web inspector: ``/ui/`` serves a few static files, ``/ui/api/`` what the page reads
beside Letta's own routes (which it uses for everything they already answer).

The page and its files need no token (they hold no data); every ``/ui/api`` route needs the
API's token like ``/v1``. The page asks for the token once and keeps it for the browser
session. Live messages are Server-Sent Events read with ``fetch`` (``EventSource`` cannot
send the token): the route watches the agent's history in the store, so turns from a
driver script, a simulation or another HTTP client all show up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import ray
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse

from letta_ray.actors.client import Client
from letta_ray.errors import NotFoundError
from letta_ray.messages import to_events
from letta_ray.sim.saved_runs import SavedRun, saved_runs

from ._common import ClientDep

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "ui"
_FILES = {"index.html": "text/html", "app.js": "text/javascript", "app.css": "text/css"}
LIVE_POLL_S = 0.5  # how often a live page's route looks for new messages
LIVE_PING_S = 15.0  # a comment line this often keeps proxies from closing a quiet stream

page = APIRouter(tags=["inspector"], include_in_schema=False)
api = APIRouter(prefix="/ui/api", tags=["inspector"], include_in_schema=False)


# --------------------------------------------------------------------------- the page


@page.get("/ui")
async def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/")


@page.get("/ui/")
async def ui_index() -> FileResponse:
    return _static("index.html")


@page.get("/ui/static/{name}")
async def ui_static(name: str) -> FileResponse:
    return _static(name)


def _static(name: str) -> FileResponse:
    if name not in _FILES:
        raise NotFoundError("file", name)
    return FileResponse(STATIC / name, media_type=_FILES[name], headers={"Cache-Control": "no-cache"})


# --------------------------------------------------------------------------- agents


@api.get("/agents")
async def agent_list(client: ClientDep, q: str | None = None, offset: Annotated[int, Query(ge=0)] = 0,
                     limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict[str, Any]:
    """One page of agents, newest first, with their host (if placed), message count and last activity."""
    total, rows = await client.runtime.store.agent_rows(query=q or None, limit=limit, offset=offset)
    hosts = await client.runtime.directory.hosts_of([r["id"] for r in rows])
    for row in rows:
        row["host"] = hosts.get(row["id"])
        for key in ("created_at", "last_active"):
            row[key] = row[key].isoformat() if row[key] is not None else None
    return {"total": total, "offset": offset, "limit": limit, "agents": rows}


@api.get("/agents/{agent_id}/live")
async def agent_live(agent_id: str, request: Request, client: ClientDep, after: str | None = None) -> StreamingResponse:
    """New messages of one agent as they are stored, as SSE ``data:`` lines of Letta
    message events; ``after``: the id of the last message the page has."""
    state = await client.get_agent_state_async(agent_id)  # a 404 before the stream starts
    return StreamingResponse(_live(client, request, agent_id, after, state.uses_send_message),
                             media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _live(client: Client, request: Request, agent_id: str, after: str | None,
                uses_send_message: bool) -> AsyncIterator[str]:
    store = client.runtime.store
    if after is None:  # start from now: the newest message so far
        newest = await store.list_messages(agent_id, limit=1, order="desc")
        after = newest[0].id if newest else None
    yield ": live\n\n"
    quiet = 0.0
    while not await request.is_disconnected():
        found = await store.list_messages(agent_id, limit=200, after=after, order="asc")
        for message in found:
            for event in to_events(message, uses_send_message=uses_send_message):
                yield f"data: {event.model_dump_json()}\n\n"
            after = message.id
        if found:
            quiet = 0.0
            continue
        await asyncio.sleep(LIVE_POLL_S)
        quiet += LIVE_POLL_S
        if quiet >= LIVE_PING_S:
            quiet = 0.0
            yield ": ping\n\n"


# --------------------------------------------------------------------------- simulations


def _sims_dir(client: Client) -> Path:
    return client.settings.home / "sims"


@api.get("/sims")
async def sim_list(client: ClientDep) -> list[dict[str, Any]]:
    """The runs of ``letta-ray sim`` under ``<home>/sims``, newest first."""
    return await asyncio.to_thread(lambda: [run.summary() for run in saved_runs(_sims_dir(client))])


@api.get("/sims/{name}")
async def sim_view(name: str, client: ClientDep) -> dict[str, Any]:
    """One run: its config, progress and one row of metrics per round written."""
    def read() -> dict[str, Any]:
        run = SavedRun.named(_sims_dir(client), name)
        return {**run.summary(), "config": run.saved["config"], "rounds_written": run.rounds()}

    return await asyncio.to_thread(read)


@api.get("/sims/{name}/network")
async def sim_network(name: str, client: ClientDep, round: Annotated[int, Query(ge=1)] = 1) -> dict[str, Any]:
    """Who talked to whom in one round."""
    return await asyncio.to_thread(lambda: SavedRun.named(_sims_dir(client), name).network(round))


# --------------------------------------------------------------------------- the cluster


@api.get("/cluster")
async def cluster(client: ClientDep) -> dict[str, Any]:
    """Nodes, agent hosts (agents, turns running or waiting), the store's lag, the runtime's
    metrics as Ray exports them, and where Ray's dashboard is (if it runs)."""
    directory = client.runtime.directory
    placement, hosts = await asyncio.gather(directory.describe(), directory.all_hosts())
    infos = await asyncio.gather(*(_host_info(host_id, handle) for host_id, handle in hosts.items()))
    store: Any
    try:
        store = await client.runtime.store.status()
    except Exception as exc:  # a sharded store, or one restarting: show the rest
        store = {"error": str(exc)}
    nodes = [{"node_id": n["NodeID"], "address": n["NodeManagerAddress"], "alive": n["Alive"],
              "resources": n.get("Resources", {}), "head": "node:__internal_head__" in n.get("Resources", {})}
             for n in await asyncio.to_thread(ray.nodes)]
    return {"nodes": nodes, "hosts": list(infos), "placement": {k: v for k, v in placement.items() if k != "hosts"},
            "store": store, "metrics": await _metrics_summary(),
            "dashboard_url": await asyncio.to_thread(_dashboard_url)}


async def _host_info(host_id: str, handle: Any) -> dict[str, Any]:
    try:
        return {**await asyncio.wait_for(handle.info(), 5), "alive": True}
    except Exception as exc:
        return {"host_id": host_id, "alive": False, "error": str(exc) or type(exc).__name__}


async def _metrics_summary() -> dict[str, Any] | None:
    """The runtime's metrics as Ray's metrics endpoints export them (they lag by Ray's report interval)."""
    try:
        from letta_ray.actors.metrics import read_metrics, summary

        return summary(await read_metrics())
    except Exception:
        log.debug("could not read the runtime's metrics", exc_info=True)
        return None


def _dashboard_url() -> str | None:  # (sync: called in a worker thread)
    """Ray's dashboard, when this cluster runs one (the embedded default does not)."""
    try:
        from ray.experimental.internal_kv import _internal_kv_get

        url = _internal_kv_get("dashboard", namespace="dashboard")
    except Exception:
        return None
    if not url:
        return None
    text = url.decode() if isinstance(url, bytes) else str(url)
    text = text if text.startswith("http") else f"http://{text}"
    try:  # Ray writes the address even when it starts no dashboard: ask it
        httpx.get(text, timeout=1.0, trust_env=False)
    except httpx.HTTPError:
        return None
    return text
