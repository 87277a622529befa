"""letta_ray: stateful LLM agents with self-edited memory, on Ray.

The core (schemas, the agent step, memory, tools, storage) imports no Ray. The driver
API (``connect``, ``Client``, ``AgentHandle``) lives in ``letta_ray.actors`` and is
re-exported here lazily, so ``import letta_ray`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from letta_ray.agent import StepResult, step
from letta_ray.errors import (
    BlockLimitError,
    ConflictError,
    InvalidInputError,
    LettaRayError,
    LLMError,
    NotFoundError,
    ToolError,
)
from letta_ray.mcp import MCPServer, MCPServerUnavailableError
from letta_ray.messages import LettaResponse, Message, MessageCreate
from letta_ray.schemas import AgentState, Block, ClientTool, EmbeddingConfig, LLMConfig, Passage, Tool
from letta_ray.settings import Settings

if TYPE_CHECKING:
    from letta_ray.actors.client import AgentHandle, Client, connect

__version__ = "0.1.0"

__all__ = [
    "AgentHandle",
    "AgentState",
    "Block",
    "BlockLimitError",
    "Client",
    "ClientTool",
    "ConflictError",
    "EmbeddingConfig",
    "InvalidInputError",
    "LLMConfig",
    "LLMError",
    "LettaRayError",
    "LettaResponse",
    "MCPServer",
    "MCPServerUnavailableError",
    "Message",
    "MessageCreate",
    "NotFoundError",
    "Passage",
    "Settings",
    "StepResult",
    "Tool",
    "ToolError",
    "connect",
    "step",
]

_LAZY = {"connect", "Client", "AgentHandle"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from letta_ray.actors import client

        return getattr(client, name)
    raise AttributeError(f"module 'letta_ray' has no attribute {name!r}")
