"""The Ray Serve internals letta_ray patches are where they were (no Ray needed)."""

from __future__ import annotations

import pytest

from letta_ray.serve import _serve_internals


def test_the_serve_internals_letta_ray_relies_on_are_where_it_left_them() -> None:
    """Fails loudly on a Ray upgrade that moved them; tests/test_network.py and
    tests/test_http.py check that the patches still do their job (loopback listeners,
    a replica back on its port)."""
    import ray

    assert ray.__version__ == _serve_internals.TESTED_RAY
    _serve_internals.check()


def test_a_moved_serve_internal_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.serve._private import replica

    monkeypatch.delattr(replica, "add_port_to_grpc_server")
    with pytest.raises(RuntimeError, match="add_port_to_grpc_server is gone"):
        _serve_internals.check()


def test_the_loopback_patch_rewrites_only_the_wildcard_address(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.serve._private import replica

    bound: list[str] = []
    monkeypatch.setattr(replica, "add_port_to_grpc_server", lambda server, address: bound.append(address) or 1)
    _serve_internals.keep_replica_grpc_on_loopback()
    _serve_internals.keep_replica_grpc_on_loopback()  # twice: wrapped once
    replica.add_port_to_grpc_server(None, "[::]:0")
    replica.add_port_to_grpc_server(None, "10.0.0.5:7000")
    assert bound == ["127.0.0.1:0", "10.0.0.5:7000"]
