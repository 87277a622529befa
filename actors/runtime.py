"""Starting (or joining) Ray and the named actors that make up one letta_ray runtime.

All actors of one data directory share a name prefix derived from the directory, so
several runtimes (or test sessions) can live in one Ray cluster without meeting,
and a second driver, the HTTP server and the CLI all find the same actors by name.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import ray

from letta_ray import _process_env
from letta_ray._process_env import PROCESS_ENV
from letta_ray._process_env import apply as apply_process_env
from letta_ray.errors import InvalidInputError
from letta_ray.schemas import EmbeddingConfig
from letta_ray.settings import Settings

from ._facade import get_or_create, run_blocking
from .archive import ArchiveActor, ArchiveHandle
from .directory import Directory, DirectoryHandle
from .embedder import EmbedderActor, EmbedderHandle
from .host import AgentHost, HostHandle
from .mcp_servers import MCPConfig, MCPServers
from .messaging import DirectoryRouter
from .metadata_store import MetadataStoreActor, MetadataStoreHandle
from .tool_sandboxes import SandboxConfig, ToolSandboxes

log = logging.getLogger(__name__)

# Passed to every worker process of a cluster we join (an embedded Ray's workers
# inherit our environment, which letta_ray._process_env has set).
RUNTIME_ENV_VARS = dict(PROCESS_ENV)

# Actors wait on I/O, not CPU: they reserve no CPU so they never block scheduling.
_ACTOR_OPTIONS: dict[str, Any] = {"num_cpus": 0, "max_concurrency": 10_000}


def init_ray(settings: Settings) -> bool:
    """Start an embedded Ray on 127.0.0.1, or join ``settings.ray_address``.

    Returns True if this call started Ray. Does nothing if Ray is already up in this
    process (a test session, a Serve replica).
    """
    apply_process_env()
    if settings.embedded and _process_env.RAY_IMPORTED_TOO_EARLY:
        log.warning("ray was imported before letta_ray, so an embedded Ray may listen on every interface; "
                    "import letta_ray first or set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 in the environment")
    if ray.is_initialized():
        return False
    if settings.embedded:
        ray.init(
            address="local",
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            num_cpus=settings.num_cpus,
            namespace=settings.namespace,
            logging_level=logging.WARNING,
            log_to_driver=True,
            configure_logging=True,
        )
    else:
        ray.init(address=settings.ray_address, namespace=settings.namespace, logging_level=logging.WARNING,
                 runtime_env={"env_vars": dict(RUNTIME_ENV_VARS)})
    return True


def runtime_prefix(settings: Settings) -> str:
    digest = hashlib.sha1(str(settings.home.resolve()).encode()).hexdigest()[:10]
    return f"letta_ray-{digest}"


class _HostMaker:
    """Creates AgentHost actors; a picklable callable the directory actor holds."""

    def __init__(self, prefix: str, namespace: str, store: MetadataStoreHandle, archive: ArchiveHandle,
                 tools: ToolSandboxes, mcp: MCPServers, llm: Any = None, agent_call_timeout_s: float = 120.0,
                 journal_dir: str | None = None) -> None:
        self.tools = tools
        self.mcp = mcp
        self.journal_dir = journal_dir
        self.prefix = prefix
        self.namespace = namespace
        self.store = store
        self.archive = archive
        self.llm = llm
        self.agent_call_timeout_s = agent_call_timeout_s

    def __call__(self, host_id: str) -> HostHandle:
        remote = ray.remote(AgentHost).options(
            name=f"{self.prefix}-{host_id}", namespace=self.namespace, lifetime="detached",
            scheduling_strategy=self._node_for(host_id), max_restarts=0, **_ACTOR_OPTIONS)
        # The directory is made after this maker: hosts find it by name on first use.
        directory = DirectoryHandle.named(f"{self.prefix}-directory", self.namespace)
        router = DirectoryRouter(directory, self.store)
        return HostHandle(remote.remote(host_id, self.store, self.archive, self.llm, router,
                                        self.agent_call_timeout_s, self.journal_dir, directory, self.tools,
                                        self.mcp))

    @staticmethod
    def _node_for(host_id: str) -> Any:
        """Hosts go round-robin over the nodes with CPUs (in proportion to their CPUs), so a
        cluster shares the agents evenly. Ray's SPREAD does not spread actors that reserve
        no CPU; a soft node affinity does, and falls back elsewhere if the node is gone."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        slots = [node["NodeID"] for node in sorted(ray.nodes(), key=lambda n: n["NodeID"])
                 if node.get("Alive") for _ in range(int(node.get("Resources", {}).get("CPU", 0)))]
        if not slots:
            return "DEFAULT"
        number = int(host_id.rsplit("-", 1)[-1]) if host_id.rsplit("-", 1)[-1].isdigit() else 0
        # Interleave nodes: slot k of node A, then of node B, ... (not all of A first).
        order = sorted(range(len(slots)), key=lambda i: (slots[:i].count(slots[i]), slots[i]))
        return NodeAffinitySchedulingStrategy(node_id=slots[order[number % len(slots)]], soft=True)


class _ExistingAgents:
    """Which of some agent ids the store knows (the directory asks before placing them)."""

    def __init__(self, store: MetadataStoreHandle) -> None:
        self.store = store

    async def __call__(self, agent_ids: list[str]) -> set[str]:
        return set(await self.store.existing_agents(agent_ids))


class _TimerStore:
    """Persists the directory's schedules in the metadata store."""

    KEY = "schedules"

    def __init__(self, store: MetadataStoreHandle) -> None:
        self.store = store

    async def load(self) -> list[dict[str, Any]]:
        raw = await self.store.get_meta(self.KEY)
        return json.loads(raw) if raw else []

    async def save(self, docs: list[dict[str, Any]]) -> None:
        await self.store.set_meta(self.KEY, json.dumps(docs))


@dataclass
class Runtime:
    """Handles on the named actors of one data directory: the stores, the embedder, the
    directory, this process's tool sandboxes (made on first use) and the MCP servers' actors."""

    settings: Settings
    prefix: str
    store: MetadataStoreHandle
    archive: ArchiveHandle
    embedder: EmbedderHandle
    directory: DirectoryHandle
    tools: ToolSandboxes
    mcp: MCPServers


def start_runtime(settings: Settings, *, llm: Any = None) -> Runtime:
    """Find or create the store, embedder, archive and directory actors for ``settings.home``.

    ``llm`` overrides the LLM of every host (tests pass a fake); by default hosts use
    litellm with each agent's own config.
    """
    if settings.embedding_model != "hash" and settings.embedding_dim <= 0:
        raise InvalidInputError("embedding_dim must be positive")
    settings.home.mkdir(parents=True, exist_ok=True)
    prefix = runtime_prefix(settings)
    ns = settings.namespace
    detached = {"lifetime": "detached", **_ACTOR_OPTIONS}
    journals = str(settings.home / "journal")
    store = MetadataStoreHandle(get_or_create(
        MetadataStoreActor, f"{prefix}-store", ns,
        (str(settings.meta_path), settings.store_batch_ms, True, journals), **detached))
    embedding = EmbeddingConfig(embedding_model=settings.embedding_model, embedding_dim=settings.embedding_dim)
    embedder = EmbedderHandle(get_or_create(EmbedderActor, f"{prefix}-embedder", ns, (embedding,), **detached))
    archive = ArchiveHandle(get_or_create(ArchiveActor, f"{prefix}-archive", ns,
                                          (str(settings.archive_path), embedder, settings.embedding_dim),
                                          **detached))
    tools = ToolSandboxes(prefix, ns, sandbox_config(settings))
    mcp = MCPServers(prefix, ns, MCPConfig(call_timeout_s=settings.mcp_timeout_s,
                                           connect_timeout_s=settings.mcp_connect_timeout_s,
                                           allow_stdio=settings.mcp_stdio))
    maker = _HostMaker(prefix, ns, store, archive, tools, mcp, llm, settings.agent_call_timeout_s, journals)
    directory = DirectoryHandle(get_or_create(
        Directory, f"{prefix}-directory", ns, (maker,),
        {"placement": settings.placement, "agents_per_host": settings.agents_per_host,
         "max_hosts": settings.max_hosts or _cluster_cpus(), "exists": _ExistingAgents(store),
         "timers": _TimerStore(store), "llm_limits": settings.llm_limits()},
        **detached))
    # Surface a broken store (a locked file, a bad path) now, with its real error.
    async def ready() -> None:
        await asyncio.gather(store.ping(), archive.ping(), directory.start_timers())
    run_blocking(ready)
    return Runtime(settings, prefix, store, archive, embedder, directory, tools, mcp)


def sandbox_config(settings: Settings) -> SandboxConfig:
    """How tools are shut in: the settings' limits, and the data directory out of reach."""
    return SandboxConfig(limits=settings.sandbox_limits(), isolation=settings.tool_isolation,
                         workers=settings.tool_workers, forbidden=(str(settings.home.resolve()),),
                         install_timeout_s=settings.tool_install_timeout_s)


def _cluster_cpus() -> int:
    """Hosts for packed placement by default: one per CPU of the whole cluster."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def stop_runtime(runtime: Runtime) -> None:
    """Kill the runtime's actors (hosts included) after closing the store cleanly."""
    try:
        hosts = run_blocking(runtime.directory.all_hosts, timeout=30)
    except Exception:
        hosts = {}
    try:
        run_blocking(runtime.store.close, timeout=60)
    except Exception:
        log.warning("metadata store did not close cleanly", exc_info=True)
    runtime.tools.stop_environments()
    runtime.mcp.stop_all()
    handles = [host.actor for host in hosts.values()]
    for handle in [*handles, runtime.directory.actor, runtime.archive.actor, runtime.embedder.actor,
                   runtime.store.actor]:
        try:
            ray.kill(handle, no_restart=True)
        except Exception:
            pass
