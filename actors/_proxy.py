"""Awaitable proxies: call a Ray actor or a local object the same way.

``await proxy.method(*args)`` runs ``handle.method.remote(*args)`` for an actor and
``obj.method(*args)`` (in a worker thread when it is blocking) for a local object, so a
plain class can be wired to real actors in production and to local objects in unit
tests without knowing which it got. Actor-side exceptions come back as the original
typed exception, not Ray's wrapper.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import ray
from ray.exceptions import RayTaskError


def unwrap(exc: BaseException) -> BaseException:
    """The user exception inside a RayTaskError, or ``exc`` itself."""
    if isinstance(exc, RayTaskError):
        cause = exc.cause
        if isinstance(cause, BaseException):
            return cause
    return exc


async def await_ref(ref: Any, timeout: float | None = None) -> Any:
    try:
        if timeout is None:
            return await ref
        return await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout)
    except RayTaskError as exc:
        raise unwrap(exc) from None


class ActorProxy:
    """``await proxy.method(...)`` on a Ray actor handle."""

    def __init__(self, handle: Any, timeout: float | None = None) -> None:
        self.handle = handle
        self.timeout = timeout

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self.handle, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await await_ref(method.remote(*args, **kwargs), self.timeout)

        call.__name__ = name
        return call

    def __reduce__(self) -> tuple[Any, ...]:
        return (ActorProxy, (self.handle, self.timeout))


class NamedActorProxy(ActorProxy):
    """An ``ActorProxy`` of a named actor, looked up on first use (so it can be handed to
    actors created before the named one exists)."""

    def __init__(self, name: str, namespace: str, timeout: float | None = None) -> None:
        super().__init__(None, timeout)
        self.name = name
        self.namespace = namespace

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        if self.handle is None:
            self.handle = ray.get_actor(self.name, namespace=self.namespace)
        return super().__getattr__(name)

    def __reduce__(self) -> tuple[Any, ...]:
        return (NamedActorProxy, (self.name, self.namespace, self.timeout))


class LocalProxy:
    """``await proxy.method(...)`` on a plain object; blocking methods run in a thread."""

    def __init__(self, obj: Any, *, threaded: bool = True) -> None:
        self.obj = obj
        self.threaded = threaded

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self.obj, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            if inspect.iscoroutinefunction(method):
                return await method(*args, **kwargs)
            if self.threaded:
                return await asyncio.to_thread(method, *args, **kwargs)
            return method(*args, **kwargs)

        call.__name__ = name
        return call


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
