"""The tool sandboxes of a process, one per tool environment, and the environments' actors.

A tool environment is a set of ``pip_requirements``. Ray builds it: a small actor is
created with ``runtime_env={"pip": [...]}`` on this node, so Ray installs the packages
once per node, caches them, and starts the actor's interpreter in that environment; the
actor only tells where that interpreter is. This process's ``ToolSandbox`` for the
environment then starts its shut-in workers with that interpreter, as its own child
processes: a call goes straight from an agent host to its warm worker, with no Ray hop,
and never runs in the host. Tools without requirements use this process's interpreter.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sys
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import RayActorError, RuntimeEnvSetupError

from letta_ray.errors import ToolDefinitionError
from letta_ray.sandbox import Isolation, SandboxLimits, ToolSandbox
from letta_ray.schemas import PipRequirement

from ._facade import ActorFacade, get_or_create, kill_named, remote_method

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SandboxConfig:
    """How every tool sandbox of a runtime shuts its tools in (from ``Settings``)."""

    limits: SandboxLimits
    isolation: Isolation = "landlock"
    workers: int = 8
    forbidden: tuple[str, ...] = ()  # the data directory: no tool may read it
    install_timeout_s: float = 600.0


class ToolEnvironmentActor:
    """Lives in a tool environment Ray built (its ``runtime_env``), to say where it is."""

    async def python(self) -> str:
        """The interpreter of this environment (its packages on its import path)."""
        return sys.executable


class ToolEnvironmentHandle(ActorFacade):
    """A tool environment actor's methods, awaited."""

    python = remote_method(ToolEnvironmentActor.python)


def parse_requirements(requirements: list[PipRequirement | dict[str, Any] | str] | None) -> list[PipRequirement]:
    """Requirements as Letta sends them (``{"name", "version"}``), or pip strings (``"pkg==1.0"``)."""
    from letta_ray.errors import InvalidInputError

    parsed = []
    for item in requirements or []:
        try:
            if isinstance(item, PipRequirement):
                parsed.append(item)
            elif isinstance(item, str):
                name, _, version = item.partition("==")
                parsed.append(PipRequirement(name=name.strip(), version=version.strip() or None))
            else:
                parsed.append(PipRequirement.model_validate(item))
        except ValueError as exc:
            raise InvalidInputError(f"invalid pip requirement {item!r}: {exc}") from exc
    return parsed


def requirements_key(requirements: list[PipRequirement]) -> str:
    """The name part of a tool environment: the same packages give the same environment."""
    specs = sorted({str(r) for r in requirements})
    return hashlib.sha256("\n".join(specs).encode()).hexdigest()[:16] if specs else "base"


class ToolSandboxes:
    """This process's tool sandboxes, by tool environment, made on first use.

    Picklable (hosts get one): each process starts its own sandboxes and workers, and
    remembers an environment that failed to install, so one bad requirement costs one try.
    """

    def __init__(self, prefix: str, namespace: str, config: SandboxConfig) -> None:
        self.prefix = prefix
        self.namespace = namespace
        self.config = config
        self._sandboxes: dict[str, ToolSandbox] = {}
        self._failed: dict[str, str] = {}
        self._lock: asyncio.Lock | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "namespace": self.namespace, "config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["prefix"], state["namespace"], state["config"])  # type: ignore[misc]

    def name_of(self, requirements: list[PipRequirement], node_id: str) -> str:
        return f"{self.prefix}-toolenv-{requirements_key(requirements)}-{node_id[:12]}"

    async def get(self, requirements: list[PipRequirement] | None = None) -> ToolSandbox:
        """The sandbox of ``requirements`` (installing them on this node the first time);
        ToolDefinitionError if they cannot be installed."""
        reqs = list(requirements or [])
        key = requirements_key(reqs)
        sandbox = self._sandboxes.get(key)
        if sandbox is not None:
            return sandbox
        if key in self._failed:
            raise ToolDefinitionError(self._failed[key])
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if key in self._sandboxes:
                return self._sandboxes[key]
            python = await self._interpreter(reqs) if reqs else sys.executable
            sandbox = ToolSandbox(self.config.limits, isolation=self.config.isolation, python=python,
                                  workers=self.config.workers, forbidden=self.config.forbidden)
            await sandbox.start()
            self._sandboxes[key] = sandbox
            return sandbox

    async def _interpreter(self, reqs: list[PipRequirement]) -> str:
        """The interpreter of the environment of ``reqs`` on this node, which Ray builds."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        node_id = ray.get_runtime_context().get_node_id()
        specs = sorted(str(r) for r in reqs)
        handle = ToolEnvironmentHandle(get_or_create(
            ToolEnvironmentActor, self.name_of(reqs, node_id), self.namespace, lifetime="detached", num_cpus=0,
            runtime_env={"pip": {"packages": specs, "pip_check": False}},
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)))
        try:
            return await asyncio.wait_for(handle.python(), self.config.install_timeout_s)
        except RuntimeEnvSetupError as exc:
            message = f"cannot install the tool's pip_requirements {specs}: {_pip_says(str(exc))}"
            self._failed[requirements_key(reqs)] = message
            raise ToolDefinitionError(message) from None
        except TimeoutError:
            raise ToolDefinitionError(
                f"installing the tool's pip_requirements {specs} took longer than "
                f"{self.config.install_timeout_s:g} s (LETTA_RAY_TOOL_INSTALL_TIMEOUT_S)") from None
        except RayActorError as exc:
            raise ToolDefinitionError(f"the tool environment did not start: {_last_lines(str(exc))}") from None

    async def close(self) -> None:
        """Stop this process's tool workers."""
        sandboxes, self._sandboxes = list(self._sandboxes.values()), {}
        await asyncio.gather(*(s.close() for s in sandboxes), return_exceptions=True)

    def stop_environments(self) -> None:
        """Kill every tool environment actor of this runtime (at shut-down)."""
        kill_named(f"{self.prefix}-toolenv-", self.namespace)


def _pip_says(text: str) -> str:
    """pip's own error lines out of Ray's report of a failed install (else its last lines)."""
    said = list(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip().startswith("ERROR:")))
    return "\n".join(said[:6]) if said else _last_lines(text)


def _last_lines(text: str, lines: int = 12) -> str:
    """The end of a long error (pip's own words are at the bottom)."""
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return "\n".join(kept)
