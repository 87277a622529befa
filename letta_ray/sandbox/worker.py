"""The sandboxed tool worker: ``python -I -m letta_ray.sandbox.worker``, one per warm slot.

Started by ``ToolSandbox`` with an empty environment and a socket (its fd number the one
argument), it shuts
itself in before it runs any user code:

1. a user namespace and a PID namespace of its own (where the kernel allows them): it
   forks twice, and the worker is process 2 of the new namespace under a reaping process
   1, so when the worker dies every process a tool started dies with it, and it holds no
   capability of the real user (root outside included), so it cannot raise its limits;
2. Landlock: from then on it can read only the Python installation and the system's
   libraries, and write only its own scratch folder; it cannot signal processes outside;
3. resource limits: address space, file size, CPU time (the budget of a worker; each
   call gets its own slice of it).

Then it answers requests from the socket, one at a time: ``describe`` a tool's source
(its schema), or ``call`` it with arguments in a fresh working directory, with exactly
the environment variables the request carries. Frames are a 4-byte big-endian length
and a JSON object, both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import struct
import sys
import tempfile
import types
from typing import Any

_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_PR_SET_PDEATHSIG = 1
MAX_FRAME = 256 * 2**20


def read_frame(sock: socket.socket) -> dict[str, Any] | None:
    header = _read_exactly(sock, 4)
    if header is None:
        return None
    (size,) = struct.unpack(">I", header)
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes")
    body = _read_exactly(sock, size)
    if body is None:
        return None
    return json.loads(body)


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def write_frame(sock: socket.socket, message: dict[str, Any]) -> None:
    body = json.dumps(message, default=str).encode()
    sock.sendall(struct.pack(">I", len(body)) + body)


# --------------------------------------------------------------------------- shutting in


def _enter_namespaces() -> bool:
    """A new user and PID namespace; this process forks and only the child returns.

    The parent waits for the child (process 1 of the namespace) and exits with its
    status. Returns whether the namespaces were made (False: the kernel refused).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWPID) != 0:
        return False
    for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"0 {uid} 1"),
                       ("/proc/self/gid_map", f"0 {gid} 1")):
        with contextlib.suppress(OSError), open(path, "w") as file:
            file.write(text)
    # The outer process stays outside; process 1 of the namespace only reaps; process 2 is
    # the worker. (Process 1 of a namespace ignores the signals it has no handler for, the
    # CPU limit's SIGXCPU among them, so the worker must not be it.) Each waits for the next
    # and exits with its status, so the sandbox sees how the worker ended; when process 1
    # ends, the kernel kills whatever is left in the namespace.
    for _ in range(2):
        child = os.fork()
        if child:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            _, status = os.waitpid(child, 0)
            code = os.waitstatus_to_exitcode(status)
            os._exit(128 - code if code < 0 else code & 0xFF)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    return True


def _shut_in(config: dict[str, Any]) -> dict[str, Any]:
    """Namespaces, Landlock and limits, as ``config`` asks; what was applied."""
    applied: dict[str, Any] = {"namespaces": False, "landlock": 0}
    if config.get("namespaces", True):
        applied["namespaces"] = _enter_namespaces()
    # Everything the tools' code may need from letta_ray is imported before the doors close.
    import letta_ray.schemas
    import letta_ray.tools  # noqa: F401

    if config["isolation"] == "landlock":
        from letta_ray.sandbox._landlock import restrict

        applied["landlock"] = restrict(config["read"], config["write"])
    limits = config["limits"]
    memory = int(limits["memory_mb"]) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    file_size = int(limits["file_mb"]) * 2**20
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
    budget = int(limits["cpu_budget_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (budget, budget))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an over-long write fails with EFBIG instead
    applied["pid"] = os.getpid()
    return applied


# --------------------------------------------------------------------------- calls


class _Worker:
    def __init__(self, root: str, output_bytes: int, in_namespace: bool) -> None:
        self.root = root
        self.output_bytes = output_bytes
        self.in_namespace = in_namespace
        self.tools: dict[str, Any] = {}

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "describe":
            return self._describe(request)
        if op == "call":
            return self._call(request)
        return {"ok": False, "kind": "protocol", "error": f"unknown op {op!r}"}

    def _tool(self, source: str, name: str | None) -> Any:
        from letta_ray.tools import tool_from_source

        key = hashlib.sha256(f"{name}\0{source}".encode()).hexdigest()
        tf = self.tools.get(key)
        if tf is None:
            tf = self.tools[key] = tool_from_source(source, name=name)
        return tf

    def _describe(self, request: dict[str, Any]) -> dict[str, Any]:
        from letta_ray.errors import ToolDefinitionError

        try:
            tf = self._tool(request["source"], request.get("name"))
        except ToolDefinitionError as exc:
            return {"ok": False, "kind": "definition", "error": str(exc)}
        if tf.takes_context and tf.context_param != "agent_state":
            return {"ok": False, "kind": "definition",
                    "error": f"tool {tf.name!r} takes a ToolContext, which only built-in tools can: a custom tool "
                             "runs in the sandbox, away from the agent (take agent_state: AgentState to read it)"}
        return {"ok": True, "tool": tf.tool.model_dump(mode="json"), "takes_agent_state": tf.takes_context}

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        from letta_ray.errors import ToolDefinitionError
        from letta_ray.schemas import AgentState
        from letta_ray.tools import run_tool

        try:
            tf = self._tool(request["source"], request.get("name"))
        except ToolDefinitionError as exc:
            return {"ok": False, "kind": "definition", "error": str(exc)}
        tf.tool.return_char_limit = int(request.get("return_char_limit") or tf.tool.return_char_limit)
        context = None
        if tf.takes_context and request.get("agent_state") is not None:
            context = types.SimpleNamespace(agent=AgentState.model_validate(request["agent_state"]))
        workdir = tempfile.mkdtemp(dir=self.root, prefix="call-")
        env = {"HOME": workdir, "TMPDIR": workdir, "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
               **{str(k): str(v) for k, v in (request.get("env") or {}).items()}}
        saved_fds = (os.dup(1), os.dup(2))
        out_path, err_path = os.path.join(workdir, ".stdout"), os.path.join(workdir, ".stderr")
        try:
            os.environ.clear()
            os.environ.update(env)
            os.chdir(workdir)
            self._redirect(out_path, err_path)
            used = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
            _, hard = resource.getrlimit(resource.RLIMIT_CPU)
            soft = min(hard, int(used + float(request.get("cpu_s", 30))) + 1)
            resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
            try:
                outcome = asyncio.run(run_tool(tf, json.dumps(request.get("args") or {}), context))  # type: ignore[arg-type]
                reply = {"ok": outcome.ok, "message": outcome.message}
                if outcome.error_type == "MemoryError":
                    reply["kind"] = "memory"
            except MemoryError:
                reply = {"ok": False, "kind": "memory", "message": ""}
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            for fd in saved_fds:
                os.close(fd)
            os.chdir(self.root)
            os.environ.clear()
            reply_out = self._read_capped(out_path), self._read_capped(err_path)
            self._stop_stray_processes()
            shutil.rmtree(workdir, ignore_errors=True)
        reply["stdout"], reply["stderr"] = reply_out
        reply["cpu_used_s"] = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
        return reply

    @staticmethod
    def _redirect(out_path: str, err_path: str) -> None:
        for fd, path in ((1, out_path), (2, err_path)):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(target, fd)
            os.close(target)

    def _read_capped(self, path: str) -> str:
        try:
            with open(path, "rb") as file:
                data = file.read(self.output_bytes + 1)
        except OSError:
            return ""
        text = data[: self.output_bytes].decode(errors="replace")
        return text + ("\n[output truncated]" if len(data) > self.output_bytes else "")

    def _stop_stray_processes(self) -> None:
        """Processes a tool left behind: alone in its namespace but for process 1, the worker
        kills every other process there."""
        if self.in_namespace:
            with contextlib.suppress(OSError):
                os.kill(-1, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    os.set_inheritable(sock.fileno(), False)  # not for the processes a tool starts
    config = read_frame(sock)
    if config is None:
        return
    try:
        applied = _shut_in(config)
    except Exception as exc:  # the sandbox could not be built: say why, then stop
        write_frame(sock, {"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        return
    worker = _Worker(config["root"], int(config["limits"]["output_bytes"]), applied["namespaces"])
    os.chdir(config["root"])
    write_frame(sock, {"ready": True, **applied})
    while (request := read_frame(sock)) is not None:
        try:
            reply = worker.handle(request)
        except MemoryError:
            reply = {"ok": False, "kind": "memory", "message": ""}
        except Exception as exc:  # a bug of the worker itself, not of the tool
            reply = {"ok": False, "kind": "protocol", "error": f"{type(exc).__name__}: {exc}"}
        write_frame(sock, reply)


if __name__ == "__main__":
    main()
