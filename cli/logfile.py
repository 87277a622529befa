"""The log file of the terminal commands: Ray's, Ray Serve's and litellm's logs, off the chat.

``letta-ray run``, ``sim`` and ``serve`` talk to a person, and the libraries under them
log to the same terminal: Ray's driver (the ``ray`` logger), Ray Serve's driver side
(``ray.serve``, which ``import ray.serve`` sets up anew with its own stderr handler),
and litellm (``LiteLLM``); and Ray forwards whatever its workers print
(Serve's controller and proxy, the agent hosts' litellm warnings) unless
``ray.init(log_to_driver=False)`` (``Settings.log_to_driver``).

Without ``--verbose`` the commands send the first to ``<home>/logs/letta-ray.log`` and
leave the workers' output in Ray's session log folder, and the banner says where. Errors
of these loggers still reach the terminal; so does everything the commands print
themselves (a failed turn, an LLM error).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from letta_ray.settings import Settings

LOG_NAME = "letta-ray.log"
# Loggers that write to the terminal on their own (propagate off, a stream handler of their
# own) or through the root logger's last resort.
ROUTED = ("ray", "ray.serve", "LiteLLM", "LiteLLM Proxy", "LiteLLM Router")
_FORMAT = "%(asctime)s %(levelname)s %(name)s %(filename)s:%(lineno)d -- %(message)s"


def log_path(settings: Settings) -> Path:
    """The command's log file, in the data directory."""
    return settings.home / "logs" / LOG_NAME


def ray_worker_logs(settings: Settings) -> str:
    """Where Ray keeps what its workers print: this machine's session log folder (embedded Ray)."""
    import ray

    if not (settings.embedded and ray.is_initialized()):
        return "Ray's session logs on each node (/tmp/ray/session_latest/logs)"
    context = ray.get_runtime_context()
    return str(Path(context.get_temp_dir()) / context.get_session_name() / "logs")


class _FileHandler(logging.FileHandler):
    """A file handler that keeps its format: ``ray.init`` sets its own on every handler of "ray"."""

    def setFormatter(self, fmt: logging.Formatter | None) -> None:
        if self.formatter is None:
            super().setFormatter(fmt)


class LogFile:
    """While entered, the ``ROUTED`` loggers write to ``path`` and show only errors on the terminal.

    ``route()`` again after importing a library that sets its logger up anew (``ray.serve``).
    Leaving restores every logger and handler as it was (the in-process CLI tests share them).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handler: logging.FileHandler | None = None
        self._levels: dict[logging.Handler, int] = {}
        self._propagate: dict[logging.Logger, bool] = {}

    def __enter__(self) -> LogFile:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handler = _FileHandler(self.path, encoding="utf-8")
        self._handler.setFormatter(logging.Formatter(_FORMAT))
        self._handler.stream.write(f"---- letta-ray (pid {os.getpid()}) at {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        self._handler.flush()
        self.route()
        return self

    def route(self) -> None:
        """Add the file to each routed logger; raise its terminal handlers to errors only."""
        assert self._handler is not None, "route() inside the with block"
        for name in ROUTED:
            logger = logging.getLogger(name)
            if logger not in self._propagate:
                self._propagate[logger] = logger.propagate
            logger.propagate = False  # the root logger's last resort would print it
            if self._handler not in logger.handlers:
                logger.addHandler(self._handler)
            for handler in logger.handlers:
                terminal = isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
                if terminal and handler not in self._levels:
                    self._levels[handler] = handler.level
                    handler.setLevel(max(handler.level, logging.ERROR))

    def __exit__(self, *exc: object) -> None:
        for handler, level in self._levels.items():
            handler.setLevel(level)
        for logger, propagate in self._propagate.items():
            logger.propagate = propagate
            if self._handler is not None:
                logger.removeHandler(self._handler)
        if self._handler is not None:
            self._handler.close()
        self._levels.clear()
        self._propagate.clear()

    def banner(self, settings: Settings) -> str:
        """The banner's line saying where the logs are."""
        return f"{self.path}; Ray's workers: {ray_worker_logs(settings)} (--verbose shows them here)"


@contextmanager
def terminal_logs(settings: Settings, *, verbose: bool) -> Iterator[LogFile | None]:
    """The logs of a command talking to a person: to the log file, or (``verbose``) to the terminal."""
    if verbose:
        yield None
        return
    import ray  # noqa: F401  -- its import sets up the "ray" logger's terminal handler, which we route

    with LogFile(log_path(settings)) as logs:
        yield logs
