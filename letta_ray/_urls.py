"""Where a URL points (the one loopback check shared by the LLM boundary and the test doubles),
and a free port to listen on."""

from __future__ import annotations

import socket
from urllib.parse import urlparse

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def is_loopback_url(url: str | None) -> bool:
    """True when ``url`` (with or without a scheme) points at this machine's loopback interface."""
    if not url:
        return False
    host = urlparse(url if "://" in url else f"http://{url}").hostname or ""
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def free_port(preferred: int = 0, host: str = "127.0.0.1") -> int:
    """``preferred`` if nothing listens on it on ``host``, else a free port there."""
    for candidate in dict.fromkeys((preferred, 0)):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            try:
                sock.bind((host, candidate))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise OSError(f"no free port on {host}")
