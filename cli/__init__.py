"""The ``letta-ray`` command line: chat, agents, serve, sim, export (``letta_ray.cli.app``)."""

from .app import app

__all__ = ["app"]
