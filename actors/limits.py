"""A cluster-wide cap on LLM requests: how many are in flight, and how many start per minute.

Thousands of agents stepping at once would otherwise flood a provider. The limits are
per model (a ``"*"`` entry is the default for any model without its own). The
``LLMLimiter`` lives in the directory actor, which every host already reaches; each host
wraps its LLM in a ``LimitedLLM`` that takes a slot before a request and gives it back
after (retries included: a request backing off after a 429 keeps its slot, so the cap
holds while the provider recovers). Hosts keep a copy of the limits, which the directory
updates on every change before acknowledging it, so models without limits cost nothing.
Plain classes, no Ray: unit-tested directly.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from letta_ray.deps import LLM, DeltaSink, LLMResponse, delta_kwargs
from letta_ray.errors import InvalidInputError
from letta_ray.schemas import LLMConfig, LLMLimit

DEFAULT = "*"


def parse_limits(raw: dict[str, Any] | None) -> dict[str, LLMLimit]:
    """``{"model or *": {"max_concurrent": .., "requests_per_minute": ..}}`` validated."""
    try:
        return {model: LLMLimit.model_validate(limit) for model, limit in (raw or {}).items()}
    except ValueError as exc:
        raise InvalidInputError(f"bad LLM limits {raw!r}: {exc}") from exc


@dataclass
class _ModelGate:
    limit: LLMLimit
    in_flight: int = 0
    max_in_flight: int = 0
    started: int = 0
    waiting: int = 0
    window: deque[float] = field(default_factory=deque)  # start times within the last minute
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)


class LLMLimiter:
    """Hands out request slots per model, first come first served."""

    WINDOW_S = 60.0

    def __init__(self, limits: dict[str, LLMLimit] | None = None, *, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self._clock = clock
        self._limits: dict[str, LLMLimit] = {}
        self._gates: dict[str, _ModelGate] = {}
        self.version = 0
        self._set(limits or {})

    def _set(self, limits: dict[str, LLMLimit]) -> int:
        self._limits = {m: limit for m, limit in limits.items() if not limit.unlimited}
        for model, gate in self._gates.items():
            gate.limit = self.limit_of(model) or LLMLimit()
        self.version += 1
        return self.version

    async def configure(self, limits: dict[str, LLMLimit]) -> int:
        """Replace the limits; requests already in flight keep their slots."""
        version = self._set(limits)
        for gate in self._gates.values():
            await self._notify(gate)
        return version

    def limits(self) -> tuple[int, dict[str, LLMLimit]]:
        return self.version, dict(self._limits)

    def limit_of(self, model: str) -> LLMLimit | None:
        return self._limits.get(model) or self._limits.get(DEFAULT)

    def _gate(self, model: str) -> _ModelGate:
        gate = self._gates.get(model)
        if gate is None:
            gate = self._gates[model] = _ModelGate(self.limit_of(model) or LLMLimit())
        return gate

    def _wait_s(self, gate: _ModelGate) -> float | None:
        """0 if a request may start now; else seconds until the rate window frees a start
        (``None``: wait for a release)."""
        limit = gate.limit
        if limit.max_concurrent is not None and gate.in_flight >= limit.max_concurrent:
            return None
        if limit.requests_per_minute is not None:
            now = self._clock()
            while gate.window and now - gate.window[0] >= self.WINDOW_S:
                gate.window.popleft()
            if len(gate.window) >= limit.requests_per_minute:
                return gate.window[0] + self.WINDOW_S - now
        return 0.0

    async def acquire(self, model: str) -> None:
        """Wait for a slot for one request to ``model``."""
        gate = self._gate(model)
        async with gate.changed:
            gate.waiting += 1
            try:
                while (wait := self._wait_s(gate)) != 0.0:
                    try:
                        await asyncio.wait_for(gate.changed.wait(), timeout=wait)
                    except TimeoutError:
                        pass
            finally:
                gate.waiting -= 1
            gate.in_flight += 1
            gate.started += 1
            gate.max_in_flight = max(gate.max_in_flight, gate.in_flight)
            if gate.limit.requests_per_minute is not None:
                gate.window.append(self._clock())

    async def release(self, model: str) -> None:
        gate = self._gate(model)
        gate.in_flight = max(0, gate.in_flight - 1)
        await self._notify(gate)

    @staticmethod
    async def _notify(gate: _ModelGate) -> None:
        async with gate.changed:
            gate.changed.notify_all()

    def stats(self) -> dict[str, dict[str, int]]:
        """Per model: in flight now, the most ever in flight, started, waiting."""
        return {model: {"in_flight": g.in_flight, "max_in_flight": g.max_in_flight, "started": g.started,
                        "waiting": g.waiting} for model, g in self._gates.items()}


class LLMLimiterSource(Protocol):
    """Where a host's limits come from and its slots are taken: the directory's handle
    (or a ``Directory`` itself, in tests)."""

    async def llm_limits(self) -> tuple[int, dict[str, LLMLimit]]: ...

    async def llm_acquire(self, model: str) -> None: ...

    async def llm_release(self, model: str) -> None: ...


class LimitsView:
    """A host's copy of the cluster's LLM limits: fetched once from the directory, then
    kept current by the directory pushing every change (``update``) before it returns."""

    def __init__(self, limiter: LLMLimiterSource) -> None:
        self.limiter = limiter
        self.version = -1
        self.limits: dict[str, LLMLimit] | None = None

    def update(self, version: int, limits: dict[str, LLMLimit]) -> None:
        if version > self.version:  # a push and the first fetch may cross
            self.version, self.limits = version, limits

    async def limited(self, model: str) -> bool:
        if self.limits is None:
            self.update(*await self.limiter.llm_limits())
        assert self.limits is not None
        return model in self.limits or DEFAULT in self.limits


class LimitedLLM:
    """An ``LLM`` that takes a slot from the cluster's limiter around each limited request.

    ``view.limiter`` is an ``LLMLimiterSource``.
    """

    def __init__(self, inner: LLM, view: LimitsView) -> None:
        self.inner = inner
        self.view = view

    async def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], config: LLMConfig, *,
                       tool_choice: str | dict[str, Any] | None = None,
                       on_delta: DeltaSink | None = None) -> LLMResponse:
        model = config.model
        streamed = delta_kwargs(on_delta)
        if not await self.view.limited(model):
            return await self.inner.complete(messages, tools, config, tool_choice=tool_choice, **streamed)
        limiter = self.view.limiter
        await limiter.llm_acquire(model)
        try:
            return await self.inner.complete(messages, tools, config, tool_choice=tool_choice, **streamed)
        finally:
            await limiter.llm_release(model)

    def count_tokens(self, messages: list[dict[str, Any]], config: LLMConfig,
                     tools: list[dict[str, Any]] | None = None) -> int:
        return self.inner.count_tokens(messages, config, tools)
