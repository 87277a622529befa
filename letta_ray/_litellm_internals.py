"""The places letta_ray reaches past litellm's public API, all of them here.

Each saves CPU on every LLM call of an agent host, where litellm's own bookkeeping is
most of the cost of a turn (measured on 2 cores: ~1 ms for the post-call logging, ~0.5-1
ms for pricing each response, ~1 ms for the openai SDK underneath litellm), and litellm
offers no setting for any of them:

- ``unlogged``: a call runs as litellm runs its own internal sub-calls (the private
  ``litellm._internal_context.is_internal_call``), which skips the logging payload and
  its background task, when no litellm callback or budget would read it;
- ``price_only_when_asked``: ``Logging.response_cost_calculator`` (a private method) is
  wrapped to do nothing inside such calls;
- ``use_litellm_http_handler``: ``EXPERIMENTAL_OPENAI_BASE_LLM_HTTP_HANDLER``, an
  environment switch litellm reads on every OpenAI-protocol call but does not document,
  sends the request through litellm's own HTTP handler instead of the openai SDK.

pyproject.toml pins litellm to the range these were tested with (``TESTED_LITELLM``).
``check()`` raises, naming the internal, when one is gone; ``tests/test_llm.py`` calls it
and also checks that each one still does its job (no logging, no pricing, no openai SDK
on the wire), so an upgrade fails loudly there instead of making every call slower. In
production a missing internal is logged once and the call runs as litellm runs it.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import os
from collections.abc import Awaitable
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
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


def check() -> None:
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
