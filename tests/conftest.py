"""Shared fixtures: a temp data dir for every test, and no real provider calls."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@pytest.fixture(autouse=True)
def _data_dir(tmp_path, monkeypatch):
    """Every test gets its own LETTA_RAY_HOME, so nothing leaks into ~/.letta_ray."""
    home = tmp_path / "letta_ray_home"
    monkeypatch.setenv("LETTA_RAY_HOME", str(home))
    return home
