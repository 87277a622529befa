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
import os
import zlib
from dataclasses import dataclass, field
from typing import Any

import ray

from letta_ray import _process_env
from letta_ray._process_env import PROCESS_ENV
from letta_ray._process_env import apply as apply_process_env
from letta_ray.errors import InvalidInputError
from letta_ray.schemas import EmbeddingConfig
from letta_ray.settings import Settings
from letta_ray.storage.object_store import StorageLocation

from ._facade import get_or_create, run_blocking
from .archive import ArchiveActor, ArchiveHandle
from .directory import Directory, DirectoryHandle
from .embedder import EmbedderActor, EmbedderHandle
from .host import AgentHost, HostHandle
from .journal_keeper import JournalKeeper, KeeperHandle
from .mcp_servers import MCPConfig, MCPServers
from .messaging import DirectoryRouter
from .metadata_store import MetadataStoreActor, MetadataStoreHandle
from .store_shards import ShardedStore, check_shard_count, journal_folder, meta_file
from .tool_sandboxes import SandboxConfig, ToolSandboxes

log = logging.getLogger(__name__)

# Passed to every worker process of a cluster we join (an embedded Ray's workers
# inherit our environment, which letta_ray._process_env has set).
RUNTIME_ENV_VARS = dict(PROCESS_ENV)

# Actors wait on I/O, not CPU: they reserve no CPU so they never block scheduling.
_ACTOR_OPTIONS: dict[str, Any] = {"num_cpus": 0, "max_concurrency": 10_000}

# The one-of-a-kind actors (the stores, the directory, the journal keepers) run on the head
# node: its disk holds meta.duckdb and the journals, and on a cluster it is the node that
# stays (Ray's own state is there too). Ray gives the head this resource, one unit.
HEAD_NODE_RESOURCE = "node:__internal_head__"
_ON_HEAD: dict[str, Any] = {"resources": {HEAD_NODE_RESOURCE: 0.001}}


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
            include_dashboard=settings.dashboard,
            num_cpus=settings.num_cpus,
            namespace=settings.namespace,
            logging_level=logging.WARNING,
            log_to_driver=settings.log_to_driver,
            configure_logging=True,
        )
    else:
        ray.init(address=settings.ray_address, namespace=settings.namespace, logging_level=logging.WARNING,
                 log_to_driver=settings.log_to_driver,
                 runtime_env={"env_vars": {**RUNTIME_ENV_VARS, **object_store_env()}})
    return True


# The object store's settings in the driver's environment reach the actors it starts on a
# cluster (the archive writes to the store with them). With an instance profile or a role
# (the better way on a cloud) there are no keys here to pass.
OBJECT_STORE_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
                    "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ALLOW_HTTP",
                    "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY")


def object_store_env() -> dict[str, str]:
    return {name: os.environ[name] for name in OBJECT_STORE_ENV if os.environ.get(name)}


def runtime_prefix(settings: Settings) -> str:
    digest = hashlib.sha1(str(settings.home.resolve()).encode()).hexdigest()[:10]
    return f"letta_ray-{digest}"


class _HostMaker:
    """Creates AgentHost actors; a picklable callable the directory actor holds."""

    def __init__(self, prefix: str, namespace: str, store: MetadataStoreHandle, archive: ArchiveHandle,
                 tools: ToolSandboxes, mcp: MCPServers, llm: Any = None, agent_call_timeout_s: float = 120.0,
                 journal_dir: str | None = None, keepers: list[KeeperHandle] | None = None,
                 store_node: str | None = None) -> None:
        self.keepers = keepers or []
        self.store_node = store_node
        self.tools = tools
        self.mcp = mcp
        self.journal_dir = journal_dir
        self.prefix = prefix
        self.namespace = namespace
        self.store = store
        self.archive = archive
        self.llm = llm
        self.agent_call_timeout_s = agent_call_timeout_s

    def __call__(self, host_id: str, node: str | None = None) -> HostHandle:
        """A new host; on ``node`` if given, and only there: a node that just joined may not
        have shown Ray its resources yet, and a soft affinity would then put the host (and
        the agents meant for that node) elsewhere. If the node dies first, the host dies
        with it and its agents are placed again (``Directory.host_failed``)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        strategy = NodeAffinitySchedulingStrategy(node_id=node, soft=False) if node else self._node_for(host_id)
        remote = ray.remote(AgentHost).options(
            name=f"{self.prefix}-{host_id}", namespace=self.namespace, lifetime="detached",
            scheduling_strategy=strategy, max_restarts=0, **_ACTOR_OPTIONS)
        # The directory is made after this maker: hosts find it by name on first use.
        directory = DirectoryHandle.named(f"{self.prefix}-directory", self.namespace)
        router = DirectoryRouter(directory, self.store)
        keeper = self.keepers[zlib.crc32(host_id.encode()) % len(self.keepers)] if self.keepers else None
        return HostHandle(remote.remote(host_id, self.store, self.archive, self.llm, router,
                                        self.agent_call_timeout_s, self.journal_dir, directory, self.tools,
                                        self.mcp, keeper=keeper, store_node=self.store_node))

    def existing(self) -> dict[str, HostHandle]:
        """The hosts alive now, by host id: what a restarted directory takes over."""
        marker = f"{self.prefix}-host-"
        found: dict[str, HostHandle] = {}
        # of this runtime's namespace, not the caller's: a directory's job may be another's
        # (one driver connected to two data directories), and without all_namespaces Ray
        # lists the job's namespace only, so a restarted directory took over no host at all
        for entry in ray.util.list_named_actors(all_namespaces=True):
            name = entry["name"]
            if entry["namespace"] == self.namespace and name.startswith(marker):
                try:
                    found[name.removeprefix(f"{self.prefix}-")] = HostHandle(
                        ray.get_actor(name, namespace=self.namespace))
                except ValueError:  # gone meanwhile
                    continue
        return found

    @staticmethod
    def _node_for(host_id: str) -> Any:
        """Hosts go round-robin over the nodes with CPUs (in proportion to their CPUs), so a
        cluster shares the agents evenly. Ray's SPREAD does not spread actors that reserve
        no CPU; a soft node affinity does, and falls back elsewhere if the node is gone."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        slots = cluster_slots()
        if not slots:
            return "DEFAULT"
        number = int(host_id.rsplit("-", 1)[-1]) if host_id.rsplit("-", 1)[-1].isdigit() else 0
        return NodeAffinitySchedulingStrategy(node_id=slots[number % len(slots)], soft=True)


def cluster_slots() -> list[str]:
    """The live nodes with CPUs, each once per CPU, interleaved (slot k of node A, then of
    node B, ...): where packed placement puts hosts, one per CPU."""
    slots = [node["NodeID"] for node in sorted(ray.nodes(), key=lambda n: n["NodeID"])
             if node.get("Alive") for _ in range(int(node.get("Resources", {}).get("CPU", 0)))]
    order = sorted(range(len(slots)), key=lambda i: (slots[:i].count(slots[i]), slots[i]))
    return [slots[i] for i in order]


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
    keepers: list[KeeperHandle] = field(default_factory=list)


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
    # Ray restarts a killed store, archive, embedder or directory; each rebuilds itself from
    # the data directory (the directory takes over the live hosts)
    detached = {"lifetime": "detached", "max_restarts": -1, **_ACTOR_OPTIONS, **_ON_HEAD}
    journals = str(settings.home / "journal")
    store = start_store(settings, prefix, detached)
    keepers = [KeeperHandle(get_or_create(JournalKeeper, f"{prefix}-keeper-{i}", ns, (journals,), **detached))
               for i in range(settings.keeper_count())]
    embedding = EmbeddingConfig(embedding_model=settings.embedding_model, embedding_dim=settings.embedding_dim)
    embedder = EmbedderHandle(get_or_create(EmbedderActor, f"{prefix}-embedder", ns, (embedding,), **detached))
    archive = ArchiveHandle(get_or_create(ArchiveActor, f"{prefix}-archive", ns,
                                          (settings.archive_uri, embedder, settings.embedding_dim),
                                          {"storage_options": settings.location.lance_options()}, **detached))
    tools = ToolSandboxes(prefix, ns, sandbox_config(settings))
    mcp = MCPServers(prefix, ns, MCPConfig(call_timeout_s=settings.mcp_timeout_s,
                                           connect_timeout_s=settings.mcp_connect_timeout_s,
                                           allow_stdio=settings.mcp_stdio))
    store_node = run_blocking(store.node_id) if keepers else None
    maker = _HostMaker(prefix, ns, store, archive, tools, mcp, llm, settings.agent_call_timeout_s, journals,
                       keepers, store_node)
    directory = DirectoryHandle(get_or_create(
        Directory, f"{prefix}-directory", ns, (maker,),
        {"placement": settings.placement, "agents_per_host": settings.agents_per_host,
         "max_hosts": settings.max_hosts, "slots": cluster_slots, "exists": _ExistingAgents(store),
         "timers": _TimerStore(store), "llm_limits": settings.llm_limits()},
        **detached))
    # Surface a broken store (a locked file, a bad path) now, with its real error.
    async def ready() -> None:
        await asyncio.gather(store.ping(), archive.ping(), directory.start_timers(),
                             *(keeper.ping() for keeper in keepers))
    run_blocking(ready)
    return Runtime(settings, prefix, store, archive, embedder, directory, tools, mcp, keepers)


def start_store(settings: Settings, prefix: str, options: dict[str, Any]) -> MetadataStoreHandle:
    """The metadata store: one actor, or ``settings.store_shards`` of them behind a
    ``ShardedStore`` (each its own DuckDB file, journal folder and snapshot folder)."""
    def shard(k: int) -> MetadataStoreHandle:
        snapshots = None
        if settings.location.remote:
            snapshots = settings.location if k == 0 else StorageLocation(
                settings.location.child(f"shard-{k}"), dict(settings.storage_options))
        return MetadataStoreHandle(get_or_create(
            MetadataStoreActor, f"{prefix}-store" if k == 0 else f"{prefix}-store-{k}", settings.namespace,
            (str(meta_file(settings.meta_path, k)), settings.store_batch_ms, True,
             str(journal_folder(settings.home / "journal", k)), snapshots, settings.snapshot_interval_s),
            **options))

    first = shard(0)
    # before any other shard is made: a count the data was not written with is refused
    run_blocking(lambda: check_shard_count(first, settings.store_shards))
    if settings.store_shards == 1:
        return first
    return ShardedStore([first, *(shard(k) for k in range(1, settings.store_shards))])


def store_actors(store: MetadataStoreHandle) -> list[Any]:
    """The Ray actors behind a store handle (one, or each shard's)."""
    return [shard.actor for shard in store.shards] if isinstance(store, ShardedStore) else [store.actor]


def sandbox_config(settings: Settings) -> SandboxConfig:
    """How tools are shut in: the settings' limits, and the data directory out of reach."""
    return SandboxConfig(limits=settings.sandbox_limits(), isolation=settings.tool_isolation,
                         workers=settings.tool_workers, forbidden=(str(settings.home.resolve()),),
                         install_timeout_s=settings.tool_install_timeout_s)


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
                   *store_actors(runtime.store), *(keeper.actor for keeper in runtime.keepers)]:
        try:
            ray.kill(handle, no_restart=True)
        except Exception:
            pass
