"""Where a URL points: the one loopback check shared by the LLM boundary and the test doubles."""

from __future__ import annotations

from urllib.parse import urlparse

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def is_loopback_url(url: str | None) -> bool:
    """True when ``url`` (with or without a scheme) points at this machine's loopback interface."""
    if not url:
        return False
    host = urlparse(url if "://" in url else f"http://{url}").hostname or ""
    return host in LOOPBACK_HOSTS or host.startswith("127.")
