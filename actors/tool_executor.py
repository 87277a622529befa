"""Tool executors: the actors that own the tool sandboxes, one per tool environment.

A tool environment is a set of ``pip_requirements``. Its executor is a Ray actor created
with ``runtime_env={"pip": [...]}``, so Ray builds that environment once per node, caches
it and starts the actor's interpreter in it; the actor's ``ToolSandbox`` then starts its
warm, shut-in worker processes with that interpreter. Tools without requirements share
one executor. Agent hosts and drivers reach executors through ``ToolExecutors``.
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
from letta_ray.sandbox import Isolation, SandboxLimits, SandboxResult, ToolSandbox
from letta_ray.schemas import PipRequirement

from ._facade import ActorFacade, get_or_create, remote_method

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SandboxConfig:
    """How every executor of a runtime shuts its tools in (from ``Settings``)."""

    limits: SandboxLimits
    isolation: Isolation = "landlock"
    workers: int = 8
    forbidden: tuple[str, ...] = ()  # the data directory: no tool may read it
    install_timeout_s: float = 600.0


class ToolExecutorActor:
    """One tool environment: a ``ToolSandbox`` running on this actor's interpreter."""

    def __init__(self, config: SandboxConfig) -> None:
        self.sandbox = ToolSandbox(config.limits, isolation=config.isolation, workers=config.workers,
                                   forbidden=config.forbidden)

    async def ready(self) -> str:
        """Start the spare worker; returns the interpreter the tools run on."""
        await self.sandbox.start()
        return sys.executable

    async def describe(self, source: str, name: str | None = None) -> dict[str, Any]:
        return await self.sandbox.describe(source, name)

    async def call(self, source: str, name: str, args: dict[str, Any], *, env: dict[str, str] | None = None,
                   agent_state: dict[str, Any] | None = None, return_char_limit: int | None = None
                   ) -> SandboxResult:
        return await self.sandbox.call(source, name, args, env=env, agent_state=agent_state,
                                       return_char_limit=return_char_limit)

    async def stats(self) -> dict[str, int]:
        return self.sandbox.stats()

    async def close(self) -> None:
        await self.sandbox.close()


class ToolExecutorHandle(ActorFacade):
    """A tool executor's methods, awaited (see ``ToolExecutorActor``)."""

    ready = remote_method(ToolExecutorActor.ready)
    describe = remote_method(ToolExecutorActor.describe)
    call = remote_method(ToolExecutorActor.call)
    stats = remote_method(ToolExecutorActor.stats)
    close = remote_method(ToolExecutorActor.close)


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
    """The name part of a tool environment: the same packages give the same executor."""
    specs = sorted({str(r) for r in requirements})
    return hashlib.sha256("\n".join(specs).encode()).hexdigest()[:16] if specs else "base"


class ToolExecutors:
    """The executors of one runtime, by tool environment, made on first use.

    Picklable (hosts get one); each process keeps its own handles and remembers an
    environment that failed to install, so one bad requirement costs one attempt.
    """

    def __init__(self, prefix: str, namespace: str, config: SandboxConfig) -> None:
        self.prefix = prefix
        self.namespace = namespace
        self.config = config
        self._handles: dict[str, ToolExecutorHandle] = {}
        self._failed: dict[str, str] = {}
        self._lock: asyncio.Lock | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "namespace": self.namespace, "config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["prefix"], state["namespace"], state["config"])  # type: ignore[misc]

    def name_of(self, requirements: list[PipRequirement]) -> str:
        return f"{self.prefix}-tools-{requirements_key(requirements)}"

    async def get(self, requirements: list[PipRequirement] | None = None) -> ToolExecutorHandle:
        """The executor of ``requirements`` (installing them the first time); ToolDefinitionError
        if they cannot be installed."""
        reqs = list(requirements or [])
        key = requirements_key(reqs)
        handle = self._handles.get(key)
        if handle is not None:
            return handle
        if key in self._failed:
            raise ToolDefinitionError(self._failed[key])
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if key in self._handles:
                return self._handles[key]
            options: dict[str, Any] = {"lifetime": "detached", "num_cpus": 0, "max_concurrency": 1_000}
            if reqs:
                options["runtime_env"] = {"pip": {"packages": sorted(str(r) for r in reqs), "pip_check": False}}
            handle = ToolExecutorHandle(get_or_create(ToolExecutorActor, self.name_of(reqs), self.namespace,
                                                      (self.config,), **options))
            try:
                await asyncio.wait_for(handle.ready(), self.config.install_timeout_s)
            except RuntimeEnvSetupError as exc:
                message = (f"cannot install the tool's pip_requirements {sorted(str(r) for r in reqs)}: "
                           f"{_last_lines(str(exc))}")
                self._failed[key] = message
                raise ToolDefinitionError(message) from None
            except TimeoutError:
                raise ToolDefinitionError(
                    f"installing the tool's pip_requirements {sorted(str(r) for r in reqs)} took longer than "
                    f"{self.config.install_timeout_s:g} s (LETTA_RAY_TOOL_INSTALL_TIMEOUT_S)") from None
            except RayActorError as exc:
                raise ToolDefinitionError(f"the tool sandbox did not start: {_last_lines(str(exc))}") from None
            self._handles[key] = handle
            return handle

    def forget(self, requirements: list[PipRequirement] | None = None) -> None:
        """Drop a handle (its actor died): the next ``get`` finds or makes it again."""
        self._handles.pop(requirements_key(list(requirements or [])), None)

    def stop_all(self) -> None:
        """Kill every executor of this runtime (at shut-down)."""
        for name in ray.util.list_named_actors():
            if name.startswith(f"{self.prefix}-tools-"):
                try:
                    ray.kill(ray.get_actor(name, namespace=self.namespace), no_restart=True)
                except Exception:
                    log.debug("could not stop %s", name, exc_info=True)


def _last_lines(text: str, lines: int = 12) -> str:
    """The end of a long error (pip's own words are at the bottom)."""
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return "\n".join(kept)
