"""The tuned garbage collector: fewer, timed collections, and cycles still reclaimed."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from letta_ray import _collector


@pytest.fixture
def tuned() -> Iterator[None]:
    before = gc.get_threshold()
    _collector.tune()
    yield
    gc.set_threshold(*before)


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_cycles_are_reclaimed_without_an_explicit_collect(tuned: None) -> None:
    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    assert gone() is not None  # a cycle: reference counting alone never frees it
    keep = [[] for _ in range(3 * _collector.THRESHOLDS[0])]  # allocations, as turns make them
    assert gone() is None
    assert len(keep) == 3 * _collector.THRESHOLDS[0]


def test_collections_are_counted_and_timed(tuned: None) -> None:
    before = _collector.stats()
    assert before["thresholds"] == list(_collector.THRESHOLDS)
    gc.collect(0)
    gc.collect(1)
    after = _collector.stats()
    assert after["collections"][0] >= before["collections"][0] + 1
    assert after["collections"][1] >= before["collections"][1] + 1
    assert after["seconds"][1] >= before["seconds"][1]
    _collector.tune()  # idempotent: one timing callback, not two
    assert gc.callbacks.count(_collector._timed) == 1
