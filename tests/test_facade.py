"""Facades over actors: sync and async calls, and methods whose calls travel as one pickle."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from letta_ray.actors._facade import ActorFacade, blocking_method, one_pickle, remote_method
from letta_ray.errors import NotFoundError
from letta_ray.schemas import Block


def _facade_class() -> tuple[type, type]:
    """A plain actor class and its facade, made in a function so Ray ships them by value."""

    class Shelf:
        def __init__(self) -> None:
            self.blocks: dict[str, Block] = {}
            self.received: list[tuple[str, ...]] = []

        @one_pickle
        async def put(self, blocks: list[Block], *, note: str = "") -> list[Block]:
            for block in blocks:
                self.blocks[block.label] = block
            return [b.model_copy(update={"description": note}) for b in blocks]

        @one_pickle
        async def take(self, label: str | None = None, delay_s: float = 0.0) -> Block:
            await asyncio.sleep(delay_s)
            if label not in self.blocks:
                raise NotFoundError("block", str(label))
            return self.blocks[label]

        async def labels(self) -> list[str]:
            return sorted(self.blocks)

    class RecordingShelf(Shelf):
        """What Ray hands the actor: one bytes for a marked method's facade calls."""

        async def put(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            self.received.append(tuple(type(a).__name__ for a in args) + tuple(sorted(kwargs)))
            return await super().put(*args, **kwargs)

        async def arrived(self) -> list[tuple[str, ...]]:
            return self.received

    class ShelfHandle(ActorFacade):
        put = remote_method(Shelf.put)
        take = remote_method(Shelf.take)
        take_blocking = blocking_method(Shelf.take)
        labels = remote_method(Shelf.labels)

    return RecordingShelf, ShelfHandle


def test_one_pickle_calls_carry_models_kwargs_and_errors_through_ray(ray_session: Any) -> None:
    shelf_cls, handle_cls = _facade_class()
    shelf = handle_cls(ray_session.remote(shelf_cls).remote(), timeout=30)

    async def scenario() -> None:
        put = await shelf.put([Block(label="human", value="Ada"), Block(label="persona", value="I help.")],
                              note="from the facade")
        assert [(b.label, b.value, b.description) for b in put] == [
            ("human", "Ada", "from the facade"), ("persona", "I help.", "from the facade")]
        assert isinstance(put[0], Block)
        assert (await shelf.take("human")).value == "Ada"
        assert await shelf.labels() == ["human", "persona"]  # an unmarked method: Ray's own arguments
        assert await shelf.actor.arrived.remote() == [("bytes",)]  # the blocks and the note: one pickle
        with pytest.raises(NotFoundError, match="nothing"):  # the actor's exception, as itself
            await shelf.take("nothing")
    asyncio.run(scenario())

    assert shelf.take_blocking("persona").value == "I help."  # the caller's thread, no event loop
    with pytest.raises(NotFoundError):
        shelf.take_blocking(label="gone")


def test_a_blocking_call_past_the_facades_timeout_raises_timeout_error(ray_session: Any) -> None:
    shelf_cls, handle_cls = _facade_class()
    actor = ray_session.remote(shelf_cls).remote()
    asyncio.run(handle_cls(actor).put([Block(label="human", value="Ada")]))
    slow = handle_cls(actor, timeout=0.2)
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        slow.take_blocking("human", 5.0)
    assert time.monotonic() - began < 4.0


def test_a_plain_instance_and_a_local_facade_take_arguments_as_usual() -> None:
    shelf_cls, handle_cls = _facade_class()
    plain = shelf_cls()
    [put] = asyncio.run(plain.put([Block(label="human", value="Ada")], note="plain"))
    assert put.description == "plain"  # a result, not a pickle: only facade calls over Ray pack
    assert plain.received == [("list", "note")]
    local = handle_cls.local(plain)
    assert local.take_blocking("human").value == "Ada"
    assert asyncio.run(local.take("human")).value == "Ada"


def test_one_pickle_refuses_methods_ray_could_not_call_with_one_bytes() -> None:
    with pytest.raises(TypeError, match="at most one required argument"):
        @one_pickle
        async def two(self: Any, agent_id: str, messages: list[str]) -> None: ...
    with pytest.raises(TypeError, match="at most one required argument"):
        @one_pickle
        async def keyword(self: Any, *, agent_id: str) -> None: ...
    with pytest.raises(TypeError, match="not bytes"):
        @one_pickle
        async def raw(self: Any, payload: bytes = b"") -> None: ...
