"""Where the bundled local model is served now: agents name it, they never store its address.

``letta-ray serve`` (or ``run``) starts the local model on this Ray's Serve at whatever
port it listens on, and publishes that URL in Ray's key-value store. Agents on the local
model keep ``model_endpoint=None``; the host looks the URL up when it calls the model,
so restarting the server on another port strands no agent. An agent stored by an older
version with a loopback URL of its own is sent to the published one as well (the old
port is gone); with nothing published, a stored endpoint is used as it is.
"""

from __future__ import annotations

import time
from typing import Any

from letta_ray._urls import is_loopback_url
from letta_ray.deps import LLM, DeltaSink, LLMResponse, delta_kwargs
from letta_ray.errors import LLMError
from letta_ray.schemas import LLMConfig
from letta_ray.settings import LOCAL_LLM_MODEL

_KEY = b"letta_ray/local_llm_url"
NOT_RUNNING = ("the bundled local model is not running on this Ray: start it with `letta-ray serve` (or "
               "`letta-ray run`), or give the agent another model")


def _kv() -> tuple[Any, Any, Any, str]:
    import ray
    from ray.experimental import internal_kv

    return (internal_kv._internal_kv_put, internal_kv._internal_kv_get, internal_kv._internal_kv_del,
            ray.get_runtime_context().namespace)


def publish_local_model(url: str | None) -> None:
    """Make ``url`` the local model's address on this Ray (``None``: it stopped)."""
    put, _, delete, namespace = _kv()
    if url is None:
        delete(_KEY, namespace=namespace)
    else:
        put(_KEY, url.encode(), overwrite=True, namespace=namespace)


def local_model_url() -> str | None:
    """The local model's address published on this Ray, if it runs."""
    _, get, _, namespace = _kv()
    value = get(_KEY, namespace=namespace)
    return value.decode() if value else None


def is_local_model(config: LLMConfig) -> bool:
    return config.model == LOCAL_LLM_MODEL


def stored_endpoint(model: str, endpoint: str | None) -> str | None:
    """What an agent stores as its endpoint: none for the local model (looked up at use)."""
    return None if model == LOCAL_LLM_MODEL and (endpoint is None or is_loopback_url(endpoint)) else endpoint


class LocalModelLLM:
    """An ``LLM`` that sends the local model's requests to where it is served now.

    The published URL is read at most once per ``ttl_s`` (a key-value read is a call to
    Ray's control store)."""

    def __init__(self, inner: LLM, *, ttl_s: float = 1.0, lookup: Any = local_model_url) -> None:
        self.inner = inner
        self.ttl_s = ttl_s
        self._lookup = lookup
        self._url: str | None = None
        self._read_at = float("-inf")

    def _current(self) -> str | None:
        now = time.monotonic()
        if now - self._read_at >= self.ttl_s:
            self._url, self._read_at = self._lookup(), now
        return self._url

    def resolve(self, config: LLMConfig) -> LLMConfig:
        if not is_local_model(config):
            return config
        endpoint = config.model_endpoint
        if endpoint is not None and not is_loopback_url(endpoint):
            return config  # a local model served elsewhere on purpose
        url = self._current()
        if url is None:
            if endpoint is None:
                raise LLMError(NOT_RUNNING)
            return config
        return config if url == endpoint else config.model_copy(update={"model_endpoint": url})

    async def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], config: LLMConfig, *,
                       tool_choice: str | dict[str, Any] | None = None,
                       on_delta: DeltaSink | None = None) -> LLMResponse:
        return await self.inner.complete(messages, tools, self.resolve(config), tool_choice=tool_choice,
                                         **delta_kwargs(on_delta))

    def count_tokens(self, messages: list[dict[str, Any]], config: LLMConfig,
                     tools: list[dict[str, Any]] | None = None) -> int:
        return self.inner.count_tokens(messages, config, tools)
