"""``ToolSandbox``: warm sandboxed worker processes that describe and run user tools.

Each worker (``letta_ray.sandbox.worker``) is a Python process started with an empty
environment, shut into its own user and PID namespaces, Landlock and resource limits
before it reads a request. A worker serves one tool with one set of environment
variables (its *key*), so nothing one agent's secrets left in a tool's module state is
seen by a call for another; warm workers are kept per key (least recently used go
first) and one spare is kept started, so a new tool does not wait for an interpreter.

Every limit ends in a ``SandboxResult`` the model can read, never in an exception of
the caller: a call that runs too long is killed at ``timeout_s`` (with every process it
started), one that uses its CPU time or memory stops there, and a worker that dies
(``os._exit``, a crash, a signal) is replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from letta_ray.errors import LettaRayError, ToolDefinitionError

log = logging.getLogger(__name__)

Isolation = Literal["landlock", "process"]
"""``landlock``: the filesystem is shut (Linux 5.13+); ``process``: a separate process with
its own environment and limits, but the filesystem open (only where Landlock is missing)."""

# What a tool may read besides the Python installation: the system's libraries and the
# few files of /etc that networking, TLS and time zones need (not /etc as a whole).
SYSTEM_READ = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc/ssl", "/etc/ca-certificates",
               "/etc/pki", "/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/gai.conf",
               "/etc/host.conf", "/etc/localtime", "/etc/mime.types", "/etc/services", "/etc/protocols",
               "/dev/urandom", "/dev/random", "/dev/zero")
SYSTEM_WRITE = ("/dev/null",)


WORKER_SCRIPT = str(Path(__file__).with_name("worker.py"))


class SandboxError(LettaRayError):
    """The sandbox cannot be set up here (the reason says what is missing)."""


@dataclass(frozen=True)
class SandboxLimits:
    """The limits of one tool call (and of a worker process)."""

    timeout_s: float = 60.0
    cpu_s: float = 30.0
    memory_mb: int = 1024
    file_mb: int = 64
    output_kb: int = 64
    cpu_budget_s: int = 600  # a worker's CPU time in all; it is replaced before a call could pass it
    idle_s: float = 300.0  # a warm worker unused this long is stopped


@dataclass
class SandboxResult:
    """What a call produced: the tool's result (or error) as the model reads it, its output,
    and which limit stopped it, if one did."""

    ok: bool
    message: str
    stdout: str = ""
    stderr: str = ""
    limit: str | None = None


def tool_key(source: str, name: str | None, env: dict[str, str]) -> str:
    """Which warm workers may serve a call: the same tool with the same environment."""
    blob = json.dumps([source, name, sorted(env.items())], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class _Worker:
    """One worker process and its socket."""

    def __init__(self, process: asyncio.subprocess.Process, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, root: str, info: dict[str, Any]) -> None:
        self.process = process
        self.reader = reader
        self.writer = writer
        self.root = root
        self.info = info
        self.cpu_used_s = 0.0
        self.last_used = time.monotonic()

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(message).encode()
        self.writer.write(struct.pack(">I", len(body)) + body)
        await self.writer.drain()
        return await _read_frame(self.reader)

    async def kill(self) -> None:
        """Kill the worker and, with it, every process a tool started (its process group;
        in a PID namespace, the namespace's first process takes all the others along)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        await self.process.wait()
        self.writer.close()
        shutil.rmtree(self.root, ignore_errors=True)

    async def ended(self) -> str:
        """Why the worker ended, once it has (waits briefly for its exit status)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.process.wait(), 5.0)
        code = self.process.returncode
        if code is None:
            return "stopped answering"
        if code < 0:
            return f"was killed by signal {signal.Signals(-code).name}"
        # the namespace's outer process passes the inner one's status on: 128 + n is signal n
        if code > 128 and code - 128 in signal.Signals._value2member_map_:
            return f"was killed by signal {signal.Signals(code - 128).name}"
        return f"ended its own process (exit status {code})"


async def _read_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    (size,) = struct.unpack(">I", await reader.readexactly(4))
    return json.loads(await reader.readexactly(size))


class ToolSandbox:
    """Runs user tools in sandboxed worker processes (see the module docstring).

    ``forbidden`` are paths no tool may see (the data directory): the sandbox refuses to
    start if any of them lies beneath a path it would let tools read.
    """

    def __init__(self, limits: SandboxLimits | None = None, *, isolation: Isolation = "landlock",
                 python: str | None = None, workers: int = 8, spares: int = 1,
                 forbidden: tuple[str, ...] = ()) -> None:
        self.limits = limits or SandboxLimits()
        self.isolation = isolation
        self.python = python or sys.executable
        self.max_workers = max(1, workers)
        self.spares = max(0, spares)
        self.forbidden = tuple(str(Path(p).resolve()) for p in forbidden)
        self._root: str | None = None
        self._idle: OrderedDict[str, list[_Worker]] = OrderedDict()  # least recently used first
        self._spare: list[_Worker] = []
        self._count = 0  # workers alive or starting
        self._freed = asyncio.Condition()
        self._refilling: asyncio.Task[None] | None = None
        self._background: set[asyncio.Future[None]] = set()
        self._read_paths: list[str] | None = None
        self._reaper: asyncio.Task[None] | None = None
        self.started = 0  # worker processes started, for tests and benchmarks

    # ---------------------------------------------------------------- set-up

    def read_paths(self) -> list[str]:
        """What the workers may read: their interpreter's installation and import path (as
        the interpreter itself reports it, started as the workers are), and ``SYSTEM_READ``."""
        if self._read_paths is None:
            probe = ("import json, sys, letta_ray, os; print(json.dumps([sys.prefix, sys.base_prefix, sys.exec_prefix, "
                     "os.path.dirname(letta_ray.__file__), *sys.path]))")
            out = subprocess.run([self.python, "-I", "-c", probe], env={}, capture_output=True, text=True,
                                 timeout=60, check=False)
            if out.returncode != 0:
                raise SandboxError(f"the tool sandbox's interpreter {self.python} does not start: {out.stderr[-500:]}")
            paths = {p for p in json.loads(out.stdout) if p and os.path.isdir(p)}
            self._read_paths = sorted({str(Path(p).resolve()) for p in paths} | set(SYSTEM_READ))
        return self._read_paths

    def check(self) -> None:
        """SandboxError if this machine cannot give the isolation asked for, or a forbidden
        path would be readable."""
        if self.isolation == "landlock":
            from letta_ray.sandbox._landlock import abi_version

            if abi_version() < 1:
                raise SandboxError(
                    "user tools run under Linux Landlock, which this kernel does not offer (Linux 5.13 or later "
                    "with Landlock enabled); set LETTA_RAY_TOOL_ISOLATION=process to run them in a separate "
                    "process whose filesystem is not shut (it still gets no server keys)")
        for path in self.read_paths():
            for secret in self.forbidden:
                if secret == path or secret.startswith(path.rstrip("/") + "/"):
                    raise SandboxError(f"tools may read {path}, and the data directory {secret} lies inside it: "
                                       "keep LETTA_RAY_HOME outside the Python installation and system folders")

    def _config(self, root: str) -> dict[str, Any]:
        limits = asdict(self.limits) | {"output_bytes": self.limits.output_kb * 1024}
        return {"isolation": self.isolation, "root": root, "read": self.read_paths(),
                "write": [root, *SYSTEM_WRITE], "limits": limits, "namespaces": True}

    async def _spawn(self) -> _Worker:
        if self._root is None:
            self.check()
            self._root = tempfile.mkdtemp(prefix="letta-ray-tools-")
        root = tempfile.mkdtemp(dir=self._root, prefix="worker-")
        ours, theirs = socket.socketpair()
        try:
            # By path, not -m: the processes that only wait (outside and as the namespace's
            # first process) then never import letta_ray and stay small.
            process = await asyncio.create_subprocess_exec(
                self.python, "-I", WORKER_SCRIPT, str(theirs.fileno()), env={},
                pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL, start_new_session=True, cwd=root)
        finally:
            theirs.close()
        reader, writer = await asyncio.open_connection(sock=ours)
        worker = _Worker(process, reader, writer, root, {})
        self.started += 1
        try:
            config = self._config(root)
            body = json.dumps(config).encode()
            writer.write(struct.pack(">I", len(body)) + body)
            await writer.drain()
            hello = await asyncio.wait_for(_read_frame(reader), 60.0)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            await worker.kill()
            raise SandboxError(f"the tool sandbox's worker did not start: {exc!r}") from exc
        if not hello.get("ready"):
            await worker.kill()
            raise SandboxError(f"the tool sandbox could not shut its worker in: {hello.get('error')}")
        worker.info = hello
        return worker

    # ---------------------------------------------------------------- workers for a key

    async def _acquire(self, key: str) -> _Worker:
        async with self._freed:
            while True:
                idle = self._idle.get(key)
                if idle:
                    worker = idle.pop()
                    if not idle:
                        del self._idle[key]
                    if worker.alive:
                        return worker
                    self._count -= 1
                    continue
                if self._spare:
                    worker = self._spare.pop()
                    self._refill()
                    if worker.alive:
                        return worker
                    self._count -= 1
                    continue
                if self._count < self.max_workers + self.spares or await self._evict_one():
                    self._count += 1
                    break
                await self._freed.wait()
        try:
            return await self._spawn()
        except BaseException:
            async with self._freed:
                self._count -= 1
                self._freed.notify()
            raise

    async def _evict_one(self) -> bool:
        """Stop the least recently used idle worker (of any key), making room for one more;
        False if none is idle. Called with ``_freed`` held."""
        for key in list(self._idle):
            workers = self._idle[key]
            worker = workers.pop(0)
            if not workers:
                del self._idle[key]
            self._count -= 1
            task = asyncio.ensure_future(worker.kill())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return True
        return False

    async def _release(self, key: str, worker: _Worker, *, reuse: bool) -> None:
        budget_left = self.limits.cpu_budget_s - worker.cpu_used_s
        if not reuse or not worker.alive or budget_left < self.limits.cpu_s + 1:
            await worker.kill()
            async with self._freed:
                self._count -= 1
                self._freed.notify()
            return
        worker.last_used = time.monotonic()
        async with self._freed:
            self._idle.setdefault(key, []).append(worker)
            self._idle.move_to_end(key)
            self._freed.notify()
        self._start_reaper()

    def _start_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.ensure_future(self._reap())

    async def _reap(self) -> None:
        """Stop warm workers left unused for ``idle_s`` (the spares stay), while any are idle."""
        while self._idle:
            await asyncio.sleep(min(30.0, self.limits.idle_s / 2))
            cutoff = time.monotonic() - self.limits.idle_s
            stale: list[_Worker] = []
            async with self._freed:
                for key in list(self._idle):
                    keep = [w for w in self._idle[key] if w.last_used >= cutoff]
                    stale += [w for w in self._idle[key] if w.last_used < cutoff]
                    if keep:
                        self._idle[key] = keep
                    else:
                        del self._idle[key]
                self._count -= len(stale)
                self._freed.notify(len(stale))
            await asyncio.gather(*(w.kill() for w in stale), return_exceptions=True)

    def _refill(self) -> None:
        if self.spares and (self._refilling is None or self._refilling.done()):
            self._refilling = asyncio.ensure_future(self._fill_spares())

    async def _fill_spares(self) -> None:
        while len(self._spare) < self.spares:
            async with self._freed:
                if self._count >= self.max_workers + self.spares and not await self._evict_one():
                    return
                self._count += 1
            try:
                self._spare.append(await self._spawn())
            except Exception:
                async with self._freed:
                    self._count -= 1
                log.warning("could not start a spare tool worker", exc_info=True)
                return

    async def start(self) -> None:
        """Check the isolation and start the spare worker(s) now rather than at the first call."""
        self.check()
        self._refill()
        if self._refilling is not None:
            await self._refilling

    # ---------------------------------------------------------------- describe and call

    async def describe(self, source: str, name: str | None = None) -> dict[str, Any]:
        """The tool defined by ``source`` (its schema, from its signature and docstring),
        built in a worker: user code never runs in the caller's process."""
        key = tool_key(source, name, {})
        worker = await self._acquire(key)
        try:
            reply = await asyncio.wait_for(worker.request({"op": "describe", "source": source, "name": name}),
                                           self.limits.timeout_s)
        except (TimeoutError, asyncio.IncompleteReadError, OSError) as exc:
            why = f"ran longer than {self.limits.timeout_s:g} s" if isinstance(exc, TimeoutError) \
                else await worker.ended()
            await self._release(key, worker, reuse=False)
            raise ToolDefinitionError(f"the tool's source could not be loaded: loading it {why}") from None
        await self._release(key, worker, reuse=True)
        if not reply.get("ok"):
            raise ToolDefinitionError(reply.get("error") or "the tool's source could not be loaded")
        return {"tool": reply["tool"], "takes_agent_state": bool(reply.get("takes_agent_state"))}

    async def call(self, source: str, name: str, args: dict[str, Any], *, env: dict[str, str] | None = None,
                   agent_state: dict[str, Any] | None = None, return_char_limit: int | None = None
                   ) -> SandboxResult:
        """Run tool ``name`` of ``source`` on ``args`` in a worker; never raises for what the tool does."""
        env = dict(env or {})
        key = tool_key(source, name, env)
        worker = await self._acquire(key)
        request = {"op": "call", "source": source, "name": name, "args": args, "env": env,
                   "agent_state": agent_state, "cpu_s": self.limits.cpu_s, "return_char_limit": return_char_limit}
        try:
            reply = await asyncio.wait_for(worker.request(request), self.limits.timeout_s)
        except TimeoutError:
            await self._release(key, worker, reuse=False)
            return SandboxResult(False, f"Error running {name}: it ran longer than its time limit of "
                                        f"{self.limits.timeout_s:g} s and was stopped.", limit="timeout")
        except (asyncio.IncompleteReadError, OSError, ValueError):
            why = await worker.ended()
            await self._release(key, worker, reuse=False)
            return self._died(name, why)
        worker.cpu_used_s = float(reply.get("cpu_used_s") or worker.cpu_used_s)
        await self._release(key, worker, reuse=reply.get("kind") not in ("memory", "protocol"))
        stdout, stderr = str(reply.get("stdout") or ""), str(reply.get("stderr") or "")
        if reply.get("kind") == "memory":
            return SandboxResult(False, f"Error running {name}: it ran out of memory (a tool may use at most "
                                        f"{self.limits.memory_mb} MB).", stdout, stderr, limit="memory")
        if reply.get("kind") in ("definition", "protocol"):
            return SandboxResult(False, f"Error running {name}: {reply.get('error')}", stdout, stderr)
        return SandboxResult(bool(reply.get("ok")), str(reply.get("message", "")), stdout, stderr)

    def _died(self, name: str, why: str) -> SandboxResult:
        if "SIGXCPU" in why:
            return SandboxResult(False, f"Error running {name}: it used more than its {self.limits.cpu_s:g} s of "
                                        "CPU time and was stopped.", limit="cpu")
        if "SIGKILL" in why:  # the kernel's OOM killer, or a tool killing itself
            return SandboxResult(False, f"Error running {name}: its process was killed (it may have run out of "
                                        f"memory: a tool may use at most {self.limits.memory_mb} MB).", limit="killed")
        return SandboxResult(False, f"Error running {name}: the tool {why}.", limit="exit")

    async def close(self) -> None:
        for task in (self._refilling, self._reaper):
            if task is not None:
                task.cancel()
        workers = [w for ws in self._idle.values() for w in ws] + self._spare
        self._idle.clear()
        self._spare.clear()
        await asyncio.gather(*(w.kill() for w in workers), return_exceptions=True)
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)

    def stats(self) -> dict[str, int]:
        return {"started": self.started, "alive": self._count, "spare": len(self._spare),
                "idle": sum(len(ws) for ws in self._idle.values())}
