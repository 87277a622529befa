"""Errors survive pickling: they cross from actors to callers through Ray."""

from __future__ import annotations

import pickle

import pytest

from letta_ray.errors import (
    BlockLimitError,
    InvalidInputError,
    LLMError,
    NotFoundError,
)


@pytest.mark.parametrize(
    "error",
    [NotFoundError("agent", "agent-1"), BlockLimitError("human", 30, 20),
     LLMError("503 from provider", status_code=503, retryable=True), InvalidInputError("bad limit")],
)
def test_errors_round_trip_through_pickle(error: Exception) -> None:
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error)
    assert str(again) == str(error)
    assert vars(again) == vars(error)
