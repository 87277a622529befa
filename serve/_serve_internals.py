"""The places letta_ray reaches into Ray Serve's private modules, all of them here.

Ray Serve 2.60 offers no setting for either of the two behaviours patched below, and
``serve_running`` needs the controller's actor name, which Serve keeps private. Ray is
pinned to the version these were written against (``ray[serve]==2.60.0`` in
pyproject.toml), and ``check()`` raises, naming the internal, when one has moved:
``tests/test_http.py`` calls it, so an upgrade fails loudly in the tests instead of
silently listening on every interface or losing its port.
"""

from __future__ import annotations

import socket
from typing import Any

TESTED_RAY = "2.60.0"


def check() -> None:
    """Raise RuntimeError if an internal used here is not where it was in Ray ``TESTED_RAY``."""
    import inspect

    from ray.serve._private import constants, http_util, replica

    problems = []
    if not callable(getattr(replica, "add_port_to_grpc_server", None)):
        problems.append("ray.serve._private.replica.add_port_to_grpc_server is gone")
    elif '"[::]:0"' not in inspect.getsource(replica):
        problems.append("Serve replicas no longer bind their gRPC server to [::]:0")
    if getattr(http_util, "socket", None) is not socket and not isinstance(http_util.socket, _ReuseAddressSockets):
        problems.append("ray.serve._private.http_util no longer uses the socket module")
    for name in ("SERVE_CONTROLLER_NAME", "SERVE_NAMESPACE"):
        if not isinstance(getattr(constants, name, None), str):
            problems.append(f"ray.serve._private.constants.{name} is gone")
    if problems:
        raise RuntimeError(f"Ray Serve's internals changed since Ray {TESTED_RAY}: " + "; ".join(problems))


def keep_replica_grpc_on_loopback() -> None:
    """Bind the replica's inter-deployment gRPC server to 127.0.0.1, not every interface.

    Ray Serve 2.60 replicas open it on ``[::]:0`` whatever the HTTP host; an embedded
    server must not listen outside loopback (the proxy, on this machine, reaches the
    replica there). Called in the replica before Serve starts that server.
    """
    from ray.serve._private import replica

    bind = replica.add_port_to_grpc_server
    if getattr(bind, "loopback_only", False):
        return

    def loopback_only(server: Any, address: str) -> Any:
        if address.startswith("[::]:"):
            address = "127.0.0.1:" + address.removeprefix("[::]:")
        return bind(server, address)

    loopback_only.loopback_only = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = loopback_only


def reuse_address_for_direct_ingress() -> None:
    """Let the replica's HTTP socket bind while old connections to its port linger.

    Serve (2.60) binds it without SO_REUSEADDR. When a replica dies with clients
    connected, its port stays in TIME_WAIT for a minute; the replacement then fails to
    bind, and Serve blocks the port, which is the only one direct ingress may use here.
    Called in the replica before Serve starts that server.
    """
    from ray.serve._private import http_util

    if isinstance(http_util.socket, _ReuseAddressSockets):
        return
    http_util.socket = _ReuseAddressSockets()


class _ReuseAddressSockets:
    """The ``socket`` module, whose ``socket()`` sets SO_REUSEADDR."""

    def __getattr__(self, name: str) -> Any:
        return getattr(socket, name)

    @staticmethod
    def socket(*args: Any, **kwargs: Any) -> socket.socket:
        sock = socket.socket(*args, **kwargs)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        return sock


def serve_running() -> bool:
    """Whether Ray Serve runs in this Ray cluster already (its controller is up).

    Asked by the controller's actor name, which Serve keeps private: exact, and it
    starts or connects to nothing."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return False
    return True
