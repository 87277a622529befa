"""The LLM boundary: chat completions, token counts and embeddings through litellm.

The only module of letta_ray that imports litellm, and the only one that reaches past its
public API (three places, in the "litellm internals" section, tested). Importing litellm costs ~4 s, so it is
imported on first use (``LiteLLM()`` does it at construction, before any event loop
step depends on it) rather than when this module is imported.

Retries live here and only here: litellm's and the OpenAI client's own retries are
switched off, and transient failures (timeouts, connection errors, 408/409/429, 5xx)
are retried with exponential backoff and jitter. Everything else, and a transient
failure that outlasts the retries, raises ``LLMError``; an over-long prompt raises its
subclass ``ContextWindowExceededError`` so the agent step can summarise and try again.
"""

from __future__ import annotations

import os

# Before litellm is ever imported: use the bundled model cost map, not the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# litellm scans every message of every request for base64 images to truncate in its
# logs; on a long agent context that costs more than the request. We log no payloads.
os.environ.setdefault("MAX_BASE64_LENGTH_FOR_LOGGING", "0")

import asyncio
import contextvars
import functools
import hashlib
import inspect
import json
import logging
import math
import random
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any, TypeVar

from letta_ray._urls import is_loopback_url
from letta_ray.deps import DeltaSink, LLMDelta, LLMResponse
from letta_ray.errors import LLMError
from letta_ray.messages import ToolCall
from letta_ray.schemas import LLMConfig, new_id

__all__ = [
    "HTTP_HANDLER_ENV",
    "ContextWindowExceededError",
    "LiteLLM",
    "TokenCounter",
    "aembed",
    "count_tokens",
    "use_litellm_http_handler",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# --------------------------------------------------------------------------- litellm internals
#
# The places letta_ray reaches past litellm's public API, all of them here.
#
# Each saves CPU on every LLM call of an agent host, where litellm's own bookkeeping is
# most of the cost of a turn (measured on 2 cores: ~1 ms for the post-call logging, ~0.5-1
# ms for pricing each response, ~1 ms for the openai SDK underneath litellm), and litellm
# offers no setting for any of them:
#
# - ``unlogged``: a call runs as litellm runs its own internal sub-calls (the private
#   ``litellm._internal_context.is_internal_call``), which skips the logging payload and
#   its background task, when no litellm callback or budget would read it;
# - ``price_only_when_asked``: ``Logging.response_cost_calculator`` (a private method) is
#   wrapped to do nothing inside such calls;
# - ``use_litellm_http_handler``: ``EXPERIMENTAL_OPENAI_BASE_LLM_HTTP_HANDLER``, an
#   environment switch litellm reads on every OpenAI-protocol call but does not document,
#   sends the request through litellm's own HTTP handler instead of the openai SDK.
#
# pyproject.toml pins litellm to the range these were tested with (``TESTED_LITELLM``).
# ``check_litellm_internals()`` raises, naming the internal, when one is gone; ``tests/test_llm.py`` calls it
# and also checks that each one still does its job (no logging, no pricing, no openai SDK
# on the wire), so an upgrade fails loudly there instead of making every call slower. In
# production a missing internal is logged once and the call runs as litellm runs it.

TESTED_LITELLM = "1.110.2"

# litellm reads it on every OpenAI-protocol call: "true" sends the request through
# litellm's own HTTP handler, otherwise through the openai SDK underneath litellm.
HTTP_HANDLER_ENV = "EXPERIMENTAL_OPENAI_BASE_LLM_HTTP_HANDLER"
# The openai SDK sends these as OpenAI-Organization / OpenAI-Project headers; litellm's
# own handler does not.
_OPENAI_ACCOUNT_ENV = ("OPENAI_ORGANIZATION", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID")
# Where litellm keeps its callbacks: any of them set means somebody reads the logging.
_CALLBACK_LISTS = ("callbacks", "success_callback", "_async_success_callback", "failure_callback",
                   "_async_failure_callback", "input_callback", "_async_input_callback", "service_callback")


def check_litellm_internals() -> None:
    """Raise RuntimeError if an internal used here is not where it was in litellm ``TESTED_LITELLM``."""
    import litellm
    import litellm.main

    problems = []
    try:
        from litellm._internal_context import is_internal_call
    except ImportError:
        problems.append("litellm._internal_context.is_internal_call is gone")
    else:
        if not isinstance(is_internal_call, contextvars.ContextVar):
            problems.append("litellm._internal_context.is_internal_call is no longer a ContextVar")
    try:
        from litellm.litellm_core_utils.litellm_logging import Logging
    except ImportError:
        problems.append("litellm.litellm_core_utils.litellm_logging.Logging is gone")
    else:
        if not callable(getattr(Logging, "response_cost_calculator", None)):
            problems.append("Logging.response_cost_calculator is gone")
    if HTTP_HANDLER_ENV not in inspect.getsource(litellm.main):
        problems.append(f"litellm.main no longer reads {HTTP_HANDLER_ENV}")
    missing = [name for name in _CALLBACK_LISTS if not hasattr(litellm, name)]
    if missing:
        problems.append(f"litellm has no callback lists {missing}")
    if problems:
        raise RuntimeError(f"litellm's internals changed since litellm {TESTED_LITELLM} "
                           f"(installed: {getattr(litellm, 'version', '?')}): " + "; ".join(problems))


async def drain_litellm_logging() -> None:
    """Run what litellm's logging worker still holds for calls made with its logging on
    (outside ``unlogged``: a baseline calling ``litellm.acompletion`` itself). Its queue is
    bound to the event loop: left there when ``asyncio.run`` ends, it is carried onto the
    next loop and runs during whatever is measured next."""
    try:
        from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER
    except ImportError:
        _warn_once("litellm_core_utils.logging_worker.GLOBAL_LOGGING_WORKER is gone")
        return
    await GLOBAL_LOGGING_WORKER.flush()


@functools.cache
def _warn_once(what: str) -> None:
    logger.warning("litellm internals changed (%s); calls run with litellm's full logging and pricing. "
                   "letta_ray was tested with litellm %s.", what, TESTED_LITELLM)


def use_litellm_http_handler() -> bool:
    """Send this process's OpenAI-protocol calls through litellm's own HTTP handler.

    For the processes letta_ray owns (agent hosts), where the only litellm calls are its
    own: the same request and response without the openai SDK's request building and
    typed parsing underneath litellm's, ~1 ms less CPU per call. litellm reads the switch
    per call from the environment, so it is process-wide: a driver script that imports
    letta_ray keeps litellm's default for its own calls. Left alone when the variable is
    already set (``false`` keeps the SDK path) and when an OpenAI organisation or project
    is set in the environment, which only the SDK path sends. Returns whether the
    handler is in use.
    """
    value = os.environ.get(HTTP_HANDLER_ENV)
    if value is None:
        if any(os.environ.get(name) for name in _OPENAI_ACCOUNT_ENV):
            return False
        value = os.environ[HTTP_HANDLER_ENV] = "true"
    return value.strip().lower() in ("1", "true", "yes", "on")


def _no_litellm_callbacks() -> bool:
    """No litellm callback and no litellm budget (which its logging keeps count for)."""
    import litellm

    return not any(getattr(litellm, name, None) for name in _CALLBACK_LISTS) and not getattr(
        litellm, "max_budget", None)


_unpriced: contextvars.ContextVar[bool] = contextvars.ContextVar("letta_ray_unpriced", default=False)


async def unlogged(call: Awaitable[T]) -> T:
    """Await a litellm call without litellm's logging and pricing, when nobody reads them.

    After every call litellm prices the response (its cost map, tiered prices, a
    zero-cost diagnosis for free models) and builds a logging payload for its callbacks,
    then hands that to a background task and a thread, competing with the next turn for
    the host's event loop. letta_ray reads neither. With no litellm callback or budget
    configured (the default), the call runs as litellm runs its own internal calls, which
    skip the logging, and is not priced. Register a litellm callback (e.g.
    ``litellm.success_callback = ["langfuse"]``) or set ``litellm.max_budget`` and both
    run as usual.
    """
    if not _no_litellm_callbacks():
        return await call
    try:
        from litellm._internal_context import is_internal_call
    except ImportError:
        _warn_once("no litellm._internal_context.is_internal_call")
        return await call
    internal = is_internal_call.set(True)
    unpriced = _unpriced.set(True)
    try:
        return await call
    finally:
        _unpriced.reset(unpriced)
        is_internal_call.reset(internal)


def price_only_when_asked() -> None:
    """Make litellm's response pricing a no-op inside ``unlogged`` calls.

    litellm has no switch for it, so its ``Logging.response_cost_calculator`` is wrapped
    once; outside ``unlogged`` (anyone else's litellm call in the process, or ours once a
    callback listens) it runs unchanged."""
    try:
        from litellm.litellm_core_utils.litellm_logging import Logging
    except ImportError:
        _warn_once("no litellm.litellm_core_utils.litellm_logging.Logging")
        return
    original = getattr(Logging, "response_cost_calculator", None)
    if original is None:
        _warn_once("no Logging.response_cost_calculator")
        return
    if getattr(original, "_letta_ray_wrapped", False):
        return

    @functools.wraps(original)
    def response_cost_calculator(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _unpriced.get():
            return None
        return original(self, *args, **kwargs)

    response_cost_calculator._letta_ray_wrapped = True  # type: ignore[attr-defined]
    Logging.response_cost_calculator = response_cost_calculator


# What the OpenAI client itself treats as worth retrying.
_TRANSIENT_STATUS = frozenset({408, 409, 429})
_LOOPBACK_DUMMY_KEY = "sk-letta-ray-loopback"  # an OpenAI client refuses to start without one


class ContextWindowExceededError(LLMError):
    """The prompt does not fit the model's context window (HTTP 400, never retried)."""

    context_window_exceeded = True


# --------------------------------------------------------------------------- litellm

_litellm: ModuleType | None = None
_import_lock = threading.Lock()


def _lib() -> ModuleType:
    """litellm, imported and quietened once."""
    global _litellm
    if _litellm is None:
        with _import_lock:
            if _litellm is None:
                # pydantic warns about litellm's ReadOnly TypedDicts whenever litellm
                # lazily loads another submodule; noise, and not ours to fix.
                warnings.filterwarnings(
                    "ignore", message=r".*`ReadOnly` qualifier", category=UserWarning, module=r"pydantic\."
                )
                import litellm

                litellm.suppress_debug_info = True
                litellm.set_verbose = False
                # Tokenizers that would be downloaded from Hugging Face (llama, cohere)
                # would block the caller on the network; tiktoken is close enough for
                # deciding when to summarise.
                litellm.disable_hf_tokenizer_download = True
                for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm"):
                    logging.getLogger(name).setLevel(logging.WARNING)
                price_only_when_asked()
                _litellm = litellm
    return _litellm


@functools.cache
def _known_providers() -> frozenset[str]:
    return frozenset(str(getattr(p, "value", p)) for p in _lib().provider_list)


OFFLINE_ENV = "LETTA_RAY_OFFLINE_LLM"


def _refuse_remote_when_offline(api_base: str | None, model: str) -> None:
    """With LETTA_RAY_OFFLINE_LLM=1 (tests, CI) only loopback endpoints may be called.

    An environment variable rather than a monkeypatch, so it holds in every Ray worker
    process the test session starts, not only in the test process itself.
    """
    if os.environ.get(OFFLINE_ENV, "") not in ("", "0") and not is_loopback_url(api_base):
        raise LLMError(f"refusing to call {model!r} at {api_base or 'its provider'}: {OFFLINE_ENV} is set, "
                       "so only loopback LLM endpoints may be used")


def _route(model: str, api_base: str | None, api_key: str | None) -> dict[str, Any]:
    """Provider and key arguments for a model string and an optional endpoint.

    A model without a provider prefix litellm knows, served by ``api_base``, is taken
    to be an OpenAI-compatible server (vLLM, llama.cpp, LM Studio, a proxy, the fake).
    """
    kwargs: dict[str, Any] = {}
    if api_base:
        kwargs["api_base"] = api_base
        prefix = model.split("/", 1)[0] if "/" in model else None
        if prefix not in _known_providers():
            kwargs["custom_llm_provider"] = "openai"
    if api_key is None and is_loopback_url(api_base):
        api_key = _LOOPBACK_DUMMY_KEY
    if api_key is not None:
        kwargs["api_key"] = api_key
    return kwargs


# --------------------------------------------------------------------------- errors


def _status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _is_provider_error(exc: BaseException) -> bool:
    """A failure of the provider or the network, as opposed to a bug of the program."""
    import httpx
    import openai

    return isinstance(exc, openai.OpenAIError | httpx.HTTPError | TimeoutError | ConnectionError) or (
        type(exc).__module__.startswith("litellm")
    )


# For servers whose overflow message litellm does not map (llama.cpp, some proxies).
_CONTEXT_OVERFLOW_HINT = re.compile(
    r"context[ _](length|window|size)|maximum context|prompt is too long|too many tokens", re.IGNORECASE
)


def _is_context_window_error(exc: BaseException) -> bool:
    if isinstance(exc, _lib().ContextWindowExceededError):
        return True
    return _status_of(exc) in (400, 413) and bool(_CONTEXT_OVERFLOW_HINT.search(str(exc)))


def _is_transient(exc: BaseException) -> bool:
    lib = _lib()
    if _is_context_window_error(exc):
        return False
    transient_types = (
        lib.Timeout,
        lib.APIConnectionError,
        lib.RateLimitError,
        lib.InternalServerError,
        lib.ServiceUnavailableError,
        lib.BadGatewayError,
        TimeoutError,  # asyncio.TimeoutError too
        ConnectionError,
    )
    if isinstance(exc, transient_types):
        return True
    status = _status_of(exc)
    return status is not None and (status in _TRANSIENT_STATUS or status >= 500)


def _retry_after(exc: BaseException) -> float | None:
    """Seconds the provider asked us to wait (``Retry-After``), if it said."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or getattr(exc, "litellm_response_headers", None)
    if not headers:
        return None
    try:
        value = headers.get("retry-after")
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


# litellm stacks class names in front of the provider's text:
# "litellm.BadRequestError: ContextWindowExceededError: OpenAIException - <text>".
_WRAPPER_PREFIX = re.compile(r"^(?:(?:litellm\.)?\w*(?:Error|Exception)\s*(?::|-)\s*)+")


def _provider_message(exc: BaseException) -> str:
    message = str(getattr(exc, "message", None) or exc).strip()
    text = _WRAPPER_PREFIX.sub("", message) or message or type(exc).__name__
    if text.startswith("{"):  # the provider's JSON error body, as litellm's own HTTP client passes it on
        try:
            body = json.loads(text)
        except ValueError:
            return text
        error = body.get("error", body) if isinstance(body, dict) else None
        if isinstance(error, dict):  # OpenAI's {"error": {"message"}}, or FastAPI's {"detail"} (vLLM, proxies)
            error = error.get("message") or error.get("detail")
        if isinstance(error, str) and error:
            return error
    return text


def _to_llm_error(exc: BaseException, what: str, attempts: int) -> LLMError:
    status = _status_of(exc)
    detail = _provider_message(exc)
    if _is_context_window_error(exc):
        return ContextWindowExceededError(
            f"{what}: the prompt exceeds the model's context window: {detail}",
            status_code=status or 400,
            retryable=False,
        )
    transient = _is_transient(exc)
    tried = f" after {attempts} attempts" if attempts > 1 else ""
    code = f" (HTTP {status})" if status else ""
    return LLMError(f"{what} failed{tried}{code}: {detail}", status_code=status, retryable=transient)


async def _with_retries(
    call: Callable[[], Awaitable[T]],
    what: str,
    *,
    max_retries: int,
    base_delay: float,
    max_delay: float,
    rate_limit_retries: int | None = None,
) -> T:
    """Run ``call``, retrying transient failures with exponential backoff and jitter.

    A rate limit (HTTP 429) gets ``rate_limit_retries`` tries if that is more: a
    provider throttling a burst recovers in tens of seconds, and giving up would lose
    the agent's turn.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, LLMError) or not _is_provider_error(exc):
                raise  # a bug (or a test's guard) must not pass for a provider failure
            budget = max_retries
            if rate_limit_retries is not None and _status_of(exc) == 429:
                budget = max(max_retries, rate_limit_retries)
            if attempt > budget or not _is_transient(exc):
                raise _to_llm_error(exc, what, attempt) from exc
            backoff = min(max_delay, base_delay * 2 ** (attempt - 1))
            delay = backoff / 2 + random.uniform(0, backoff / 2)  # "equal jitter"
            hinted = _retry_after(exc)
            if hinted is not None:
                delay = min(max_delay, max(delay, hinted))
            logger.warning(
                "%s: transient error (%s), retry %d/%d in %.2fs",
                what,
                type(exc).__name__,
                attempt,
                budget,
                delay,
            )
            await asyncio.sleep(delay)


# --------------------------------------------------------------------------- tokens


class TokenCounter:
    """Token counts with litellm's tokenizers, memoised per message.

    The prompt of an agent changes by a message or two between steps, so each message's
    count is cached (LRU, keyed by model and a hash of the message JSON) and a context
    is counted as the sum of its messages plus the request overhead.
    """

    def __init__(self, maxsize: int = 65_536) -> None:
        self.maxsize = maxsize
        self._cache: OrderedDict[tuple[str, bytes], int] = OrderedDict()
        self._lock = threading.Lock()

    def count(
        self,
        messages: list[dict[str, Any]],
        model: str,
        tools: list[dict[str, Any]] | None = None,
    ) -> int:
        total = self._cached(model, b"base", None)
        for message in messages:
            total += self._cached(model, b"m", message)
        if tools:
            total += self._cached(model, b"t", tools)
        return total

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    def _cached(self, model: str, kind: bytes, obj: Any) -> int:
        text = json.dumps(obj, default=str, separators=(",", ":"))
        key = (model, hashlib.blake2b(kind + text.encode(), digest_size=16).digest())
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        value = self._measure(model, kind, obj, text)
        with self._lock:
            self._cache[key] = value
            if len(self._cache) > self.maxsize:
                self._cache.popitem(last=False)
        return value

    def _measure(self, model: str, kind: bytes, obj: Any, text: str) -> int:
        """Tokens ``obj`` adds to a request: litellm's count minus the empty request's."""
        try:
            counter = _lib().token_counter
            if kind == b"base":
                return counter(model=model, messages=[])
            base = self._cached(model, b"base", None)
            if kind == b"t":
                return max(0, counter(model=model, messages=[], tools=obj) - base)
            return max(1, counter(model=model, messages=[obj]) - base)
        except Exception as exc:  # litellm cannot count for this model or message
            logger.debug("token_counter failed for %s (%s); estimating", model, exc)
            return 3 if kind == b"base" else math.ceil(len(text) / 4)


_token_counter = TokenCounter()


def count_tokens(messages: list[dict[str, Any]], config: LLMConfig, tools: list[dict[str, Any]] | None = None) -> int:
    """Tokens the prompt of ``messages`` (and ``tools``) takes for ``config.model``."""
    return _token_counter.count(messages, config.model, tools)


# --------------------------------------------------------------------------- completions


def _parse(response: Any, model: str) -> LLMResponse:
    choices = getattr(response, "choices", None) or []
    if not choices:
        raise LLMError(f"LLM call to {model!r} returned no choices", retryable=False)
    choice = choices[0]
    message = choice.message
    tool_calls = [
        ToolCall(
            id=call.id or new_id("call"),
            name=call.function.name,
            # Some providers send "" for a call without arguments; "{}" means the same.
            arguments=call.function.arguments or "{}",
        )
        for call in (getattr(message, "tool_calls", None) or [])
    ]
    usage = getattr(response, "usage", None)
    return LLMResponse(
        content=message.content or None,
        reasoning=getattr(message, "reasoning_content", None) or None,
        tool_calls=tool_calls,
        prompt_tokens=(getattr(usage, "prompt_tokens", None) or 0) if usage else 0,
        completion_tokens=(getattr(usage, "completion_tokens", None) or 0) if usage else 0,
        finish_reason=getattr(choice, "finish_reason", None),
        model=getattr(response, "model", None) or model,
    )


def _deltas(chunk: Any) -> list[LLMDelta]:
    """The pieces of one streamed chunk (OpenAI's shape, as litellm gives it for every provider)."""
    choices = getattr(chunk, "choices", None) or []
    if not choices:
        return []
    delta = getattr(choices[0], "delta", None)
    if delta is None:
        return []
    out = []
    if reasoning := getattr(delta, "reasoning_content", None):
        out.append(LLMDelta(reasoning=reasoning))
    if content := getattr(delta, "content", None):
        out.append(LLMDelta(content=content))
    for call in getattr(delta, "tool_calls", None) or []:
        function = getattr(call, "function", None)
        out.append(LLMDelta(tool_index=getattr(call, "index", None) or 0, tool_call_id=getattr(call, "id", None),
                            tool_name=getattr(function, "name", None) if function is not None else None,
                            arguments=(getattr(function, "arguments", None) or "") if function is not None else ""))
    return out


async def _streamed(lib: ModuleType, kwargs: dict[str, Any], on_delta: DeltaSink, what: str) -> Any:
    """One streamed call: each piece to ``on_delta`` as it arrives, then the whole response
    (litellm's ``stream_chunk_builder``). A failure before the first piece may be retried
    like any call; after it, the pieces are out, so it is an LLMError that is not."""
    stream = await lib.acompletion(**kwargs)
    chunks: list[Any] = []
    sent = False
    try:
        async for chunk in stream:
            chunks.append(chunk)
            for delta in _deltas(chunk):
                sent = True
                await on_delta(delta)
    except Exception as exc:
        if sent and not isinstance(exc, LLMError) and _is_provider_error(exc):
            raise _to_llm_error(exc, f"{what} (streamed, cut off)", 1) from exc
        raise
    if not chunks:
        raise LLMError(f"{what} streamed nothing", retryable=True)
    return lib.stream_chunk_builder(chunks, messages=kwargs.get("messages"))


class LiteLLM:
    """The production ``LLM``: any provider litellm knows, by model string.

    ``max_retries`` transient failures are retried (so up to ``max_retries + 1``
    attempts; ``rate_limit_retries`` for HTTP 429), waiting about ``base_delay * 2**n`` seconds (jittered, capped at
    ``max_delay``, at least what a ``Retry-After`` header asks for).
    """

    def __init__(
        self,
        *,
        max_retries: int = 3,
        rate_limit_retries: int = 8,
        base_delay: float = 0.5,
        max_delay: float = 30.0,
        timeout: float = 120.0,
        token_counter: TokenCounter | None = None,
    ) -> None:
        self.max_retries = max_retries
        self.rate_limit_retries = rate_limit_retries
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.timeout = timeout
        self.tokens = token_counter or _token_counter
        # Pay for importing litellm (~4 s) and loading tiktoken (~0.4 s) here, not
        # inside the first agent step of an event loop.
        self.tokens.count([], "gpt-4o-mini")

    def request_kwargs(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        config: LLMConfig,
        tool_choice: str | dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The keyword arguments ``complete`` passes to ``litellm.acompletion``."""
        kwargs: dict[str, Any] = {
            "model": config.model,
            "messages": messages,
            "temperature": config.temperature,
            "timeout": self.timeout,
            "num_retries": 0,  # ours are the only retries
            "max_retries": 0,
            "drop_params": True,  # e.g. temperature on reasoning models
        }
        if tools:
            kwargs["tools"] = tools
            if tool_choice is not None:
                kwargs["tool_choice"] = tool_choice
        if config.max_tokens is not None:
            kwargs["max_tokens"] = config.max_tokens
        kwargs.update(_route(config.model, config.model_endpoint, _api_key(config)))
        return kwargs

    async def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        config: LLMConfig,
        *,
        tool_choice: str | dict[str, Any] | None = None,
        on_delta: DeltaSink | None = None,
    ) -> LLMResponse:
        kwargs = self.request_kwargs(messages, tools, config, tool_choice)
        _refuse_remote_when_offline(kwargs.get("api_base"), config.model)
        lib = _lib()
        if "custom_llm_provider" in kwargs:
            _describe_served_model(config)
        what = f"LLM call to {config.model!r}"
        if on_delta is not None:
            kwargs.update(stream=True, stream_options={"include_usage": True})
            call: Callable[[], Awaitable[Any]] = lambda: unlogged(_streamed(lib, kwargs, on_delta, what))  # noqa: E731
        else:
            call = lambda: unlogged(lib.acompletion(**kwargs))  # noqa: E731
        response = await _with_retries(
            call,
            what,
            max_retries=self.max_retries,
            base_delay=self.base_delay,
            max_delay=self.max_delay,
            rate_limit_retries=self.rate_limit_retries,
        )
        return _parse(response, config.model)

    def count_tokens(
        self, messages: list[dict[str, Any]], config: LLMConfig, tools: list[dict[str, Any]] | None = None
    ) -> int:
        return self.tokens.count(messages, config.model, tools)


_described: set[str] = set()


def _describe_served_model(config: LLMConfig) -> None:
    """Tell litellm about a model an OpenAI-compatible server serves, if it does not know it.

    litellm prices every response and looks the model up several times per call; for a
    model missing from its map (anything served by vLLM, llama.cpp, a proxy...) each
    lookup falls through dozens of fuzzy matches, ~0.8 ms of CPU per call. Registered
    once, free (it runs on the user's own server) and with the agent's context window,
    every lookup is a hit. Models litellm knows keep their own entry.
    """
    model = config.model
    if model in _described:
        return
    lib = _lib()
    if model not in lib.model_cost and f"openai/{model}" not in lib.model_cost:
        entry = {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 0.0,
                 "output_cost_per_token": 0.0, "max_input_tokens": config.context_window}
        try:  # not into litellm's provider model sets: the name alone must not mean OpenAI
            lib.register_model({model: entry}, add_to_provider_model_sets=False)
        except TypeError:  # a litellm without that keyword
            lib.register_model({model: entry})
    _described.add(model)


def _api_key(config: LLMConfig) -> str | None:
    if not config.api_key_env:
        return None
    try:
        return os.environ[config.api_key_env]
    except KeyError:
        raise LLMError(
            f"LLM call to {config.model!r}: environment variable {config.api_key_env!r} "
            "(the config's api_key_env) is not set",
            retryable=False,
        ) from None


# --------------------------------------------------------------------------- embeddings


async def aembed(
    model: str,
    texts: list[str],
    *,
    api_base: str | None = None,
    api_key: str | None = None,
    timeout: float = 60.0,
    max_retries: int = 3,
    base_delay: float = 0.5,
) -> list[list[float]]:
    """Embed ``texts`` with a litellm embedding model; one vector per text, in order."""
    if not texts:
        return []
    _refuse_remote_when_offline(api_base, model)
    lib = _lib()
    kwargs: dict[str, Any] = {
        "model": model,
        "input": list(texts),
        "timeout": timeout,
        "num_retries": 0,
        "max_retries": 0,
        **_route(model, api_base, api_key),
    }
    response = await _with_retries(
        lambda: lib.aembedding(**kwargs),
        f"embedding call to {model!r}",
        max_retries=max_retries,
        base_delay=base_delay,
        max_delay=30.0,
    )
    items = sorted(response.data, key=lambda item: _field(item, "index") or 0)
    vectors = [list(map(float, _field(item, "embedding"))) for item in items]
    if len(vectors) != len(texts):
        raise LLMError(f"embedding call to {model!r} returned {len(vectors)} vectors for {len(texts)} texts")
    return vectors


def _field(item: Any, name: str) -> Any:
    return item[name] if isinstance(item, dict) else getattr(item, name)


# --------------------------------------------------------------------------- tests


def refuse_non_loopback_calls(monkeypatch: Any) -> None:
    """In tests: make litellm's entry points raise ``RuntimeError`` for any non-loopback endpoint.

    Complements ``LETTA_RAY_OFFLINE_LLM`` (which ``LiteLLM`` checks, in every process) by
    also catching direct litellm calls in this process. ``monkeypatch`` is pytest's.
    """
    lib = _lib()
    for name in ("completion", "acompletion", "embedding", "aembedding"):
        monkeypatch.setattr(lib, name, _refusing(lib, name, getattr(lib, name)))


def _refusing(lib: ModuleType, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    def guard(*args: Any, **kwargs: Any) -> Any:
        base = kwargs.get("api_base") or kwargs.get("base_url") or lib.api_base
        if not is_loopback_url(base):
            model = kwargs.get("model", args[0] if args else None)
            raise RuntimeError(
                f"real LLM provider call attempted in tests: litellm.{name}(model={model!r}, "
                f"api_base={base!r}); point the config's model_endpoint at a FakeOpenAIServer "
                "or use ScriptedLLM / FunctionLLM"
            )
        return original(*args, **kwargs)

    guard.__name__ = name
    guard.__wrapped__ = original  # type: ignore[attr-defined]
    return guard
