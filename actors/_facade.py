"""Typed handles on actors: facades whose methods are the actor class's own methods.

A plain class becomes a Ray actor only where it is created (``ray.remote(cls)``, see
``get_or_create``); everything else holds a facade over it, declared from the plain
class's methods::

    class ArchiveHandle(ActorFacade):
        search = remote_method(ArchiveActor.search)

``await archive.search(agent_id, "query")`` runs ``ArchiveActor.search`` on the actor
and returns its result, the actor's own exceptions raised as themselves (not wrapped in
Ray's ``RayTaskError``). Each facade method has the signature, docstring and return type
of the actor method it names, so grep and a type checker follow every call, and a
renamed actor method fails when the facade's module is imported, not at run time.

``Facade.local(instance)`` makes the same facade over a plain instance in this process
(unit tests of one actor against another, without Ray).

A hot call made from sync code can also be declared with ``blocking_method``: it waits for
the actor in the caller's thread (``ray.get``) instead of on an event loop. An actor method
marked ``@one_pickle`` gets its arguments and gives its result as one pickled ``bytes``
when called through a facade (see there why).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import pickle
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Concatenate, ParamSpec, TypeVar

import ray
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    ActorUnschedulableError,
    RayActorError,
    RayTaskError,
)

log = logging.getLogger(__name__)

ACTOR_GONE = (ActorDiedError, ActorUnavailableError, RayActorError, ActorUnschedulableError)
"""What a call raises when its actor died or cannot be reached (or, made for a node that is
gone, can never start)."""

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound="ActorFacade")


def unwrap(exc: BaseException) -> BaseException:
    """The user exception inside a RayTaskError, or ``exc`` itself."""
    if isinstance(exc, RayTaskError):
        cause = exc.cause
        if isinstance(cause, BaseException):
            return cause
    return exc


async def await_ref(ref: Any, timeout: float | None = None) -> Any:
    """The value of an ObjectRef, with the actor's exception raised as itself."""
    try:
        if timeout is None:
            return await ref
        return await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout)
    except RayTaskError as exc:
        raise unwrap(exc) from None


class ActorFacade:
    """A handle on one actor: a Ray actor handle, a named actor found on first use, or a
    plain instance in this process. Subclasses declare methods with ``remote_method``."""

    def __init__(self, actor: Any = None, *, timeout: float | None = None, name: str | None = None,
                 namespace: str | None = None, local: bool = False) -> None:
        self._actor = actor
        self._timeout = timeout
        self._name = name
        self._namespace = namespace
        self._local = local

    @classmethod
    def named(cls: type[F], name: str, namespace: str, *, timeout: float | None = None) -> F:
        """A facade of the named actor ``name``, looked up on first use (so it can be handed
        to actors created before that one exists)."""
        return cls(None, timeout=timeout, name=name, namespace=namespace)

    @classmethod
    def local(cls: type[F], instance: Any) -> F:
        """A facade over a plain instance of the actor class, in this process."""
        return cls(instance, local=True)

    @property
    def actor(self) -> Any:
        """The Ray actor handle (or the plain instance of a local facade)."""
        if self._actor is None:
            assert self._name is not None and self._namespace is not None
            self._actor = ray.get_actor(self._name, namespace=self._namespace)
        return self._actor

    async def _invoke(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], packed: bool) -> Any:
        bound = getattr(self.actor, method)
        if self._local:
            return await bound(*args, **kwargs)
        return _unpack(await await_ref(_submit(bound, args, kwargs, packed), self._timeout), packed)

    def _invoke_blocking(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], packed: bool) -> Any:
        bound = getattr(self.actor, method)
        if self._local:
            return run_blocking(lambda: bound(*args, **kwargs), self._timeout)
        try:
            return _unpack(ray.get(_submit(bound, args, kwargs, packed), timeout=self._timeout), packed)
        except RayTaskError as exc:
            raise unwrap(exc) from None

    async def _stream(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        bound = getattr(self.actor, method)
        if self._local:
            async for item in bound(*args, **kwargs):
                yield item
            return
        async for ref in bound.options(num_returns="streaming").remote(*args, **kwargs):
            yield await await_ref(ref)

    def __reduce__(self) -> tuple[Any, ...]:
        if self._local:
            raise TypeError(f"a local {type(self).__name__} cannot leave its process")
        return (_rebuild, (type(self), self._actor, self._timeout, self._name, self._namespace))


def _rebuild(cls: type[F], actor: Any, timeout: float | None, name: str | None, namespace: str | None) -> F:
    return cls(actor, timeout=timeout, name=name, namespace=namespace)


def one_pickle(fn: Callable[Concatenate[Any, P], Awaitable[R]]) -> Callable[Concatenate[Any, P], Awaitable[R]]:
    """Mark a hot actor method whose calls through a facade carry their arguments, and get
    their result, as one pickled ``bytes``, not as Ray's own serialisation of each.

    Ray serialises every argument apart, and each costs the call about 0.1 ms, a pydantic
    model about 0.3 ms; one ``bytes`` argument costs next to nothing beyond stdlib pickle's
    own ~20 µs. Measured on this 2-core machine, a host's ``create_agents`` call of one agent
    (five arguments) took 1.93 ms p50 as Ray's arguments and 1.60 ms as one pickle.

    Only for arguments and results of plain data: an ObjectRef or actor handle inside would
    skip Ray's reference counting. Called directly (a plain instance in tests, a local
    facade) the method takes its arguments as usual."""
    params = list(inspect.signature(fn).parameters.values())[1:]
    required = [p for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD,
                                                                           p.KEYWORD_ONLY)]
    if len(required) > 1 or (required and required[0].kind == required[0].KEYWORD_ONLY):
        raise TypeError(f"{fn.__qualname__}: @one_pickle needs at most one required argument, a positional "
                        "one (Ray checks a call of one bytes against the method's signature)")
    if params and "bytes" in str(params[0].annotation):  # a real bytes first argument would be unpacked
        raise TypeError(f"{fn.__qualname__}: @one_pickle needs a first argument that is not bytes")

    @functools.wraps(fn)
    async def method(self: Any, *args: P.args, **kwargs: P.kwargs) -> Any:
        if len(args) == 1 and not kwargs and type(args[0]) is bytes:  # from a facade: _submit's
            args, kwargs = pickle.loads(args[0])  # type: ignore[assignment]
            return pickle.dumps(await fn(self, *args, **kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        return await fn(self, *args, **kwargs)

    method.__one_pickle__ = True  # type: ignore[attr-defined]
    return method  # type: ignore[return-value]


def _submit(bound: Any, args: tuple[Any, ...], kwargs: dict[str, Any], packed: bool) -> Any:
    """The ObjectRef of a call of the actor method ``bound``, its arguments one pickle if ``packed``."""
    if packed:
        return bound.remote(pickle.dumps((args, kwargs), protocol=pickle.HIGHEST_PROTOCOL))
    return bound.remote(*args, **kwargs)


def _unpack(value: Any, packed: bool) -> Any:
    return pickle.loads(value) if packed else value


def remote_method(fn: Callable[Concatenate[Any, P], Awaitable[R]]
                  ) -> Callable[Concatenate[Any, P], Coroutine[Any, Any, R]]:
    """A facade method that runs the actor class's method ``fn`` on the facade's actor."""
    name, packed = fn.__name__, getattr(fn, "__one_pickle__", False)

    @functools.wraps(fn)
    async def call(self: ActorFacade, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self._invoke(name, args, kwargs, packed)

    return call


def blocking_method(fn: Callable[Concatenate[Any, P], Awaitable[R]]) -> Callable[Concatenate[Any, P], R]:
    """A sync facade method that runs the actor class's method ``fn`` and waits for it in the
    calling thread. For sync callers on a hot path: a coroutine run on a client's loop thread
    costs two thread hops and an asyncio future per call (~0.25 ms of CPU), this one neither.
    With a facade timeout, a call that outlives it raises ``ray.exceptions.GetTimeoutError``
    (a ``TimeoutError``); without one (hosts' facades have none) it waits as long as the actor."""
    name, packed = fn.__name__, getattr(fn, "__one_pickle__", False)

    @functools.wraps(fn)
    def call(self: ActorFacade, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._invoke_blocking(name, args, kwargs, packed)

    return call


def streaming_method(fn: Callable[Concatenate[Any, P], AsyncIterator[R]]
                     ) -> Callable[Concatenate[Any, P], AsyncIterator[R]]:
    """A facade method for an async-generator actor method: its items as they are yielded
    (a Ray streaming generator on a real actor)."""
    name = fn.__name__

    @functools.wraps(fn)
    def call(self: ActorFacade, *args: P.args, **kwargs: P.kwargs) -> AsyncIterator[R]:
        return self._stream(name, args, kwargs)

    return call


def run_blocking(call: Callable[[], Awaitable[R]], timeout: float | None = None) -> R:
    """Run ``call()`` (facade calls) to completion from sync code: start-up and shut-down,
    which run both where an event loop runs (a notebook) and where none does."""

    async def main() -> R:
        return await asyncio.wait_for(call(), timeout)

    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop runs in this thread (a script, atexit): run one here
        return asyncio.run(main())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="letta-ray-blocking") as pool:
        return pool.submit(asyncio.run, main()).result()


def get_or_create(cls: type, name: str, namespace: str, args: tuple[Any, ...] = (),
                  kwargs: dict[str, Any] | None = None, **options: Any) -> Any:
    """A named actor: the existing one, or a new one made from the plain class ``cls``."""
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        pass
    remote_cls = ray.remote(cls)
    return remote_cls.options(name=name, namespace=namespace, get_if_exists=True, **options).remote(
        *args, **(kwargs or {}))


def kill_named(prefix: str, namespace: str) -> None:
    """Kill every named actor whose name starts with ``prefix`` (at shut-down)."""
    for name in ray.util.list_named_actors():
        if name.startswith(prefix):
            try:
                ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
            except Exception:
                log.debug("could not stop %s", name, exc_info=True)
