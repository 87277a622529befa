"""A Ray cluster of several nodes and an S3-compatible server, all on this machine, on 127.0.0.1.

For the multi-node tests and ``bench/sim.py --nodes N --storage s3``: what a cluster of
separate machines does to letta_ray (nodes that share no disk, a node that dies, an object
store that drops), reproduced on one machine with the real pieces.

- ``LocalCluster`` starts a head and workers with ``ray start``, each node with its own
  ``--temp-dir`` (and so its own logs, sockets and object store), all with
  ``--node-ip-address=127.0.0.1``, with Ray's token authentication and a token of its own.
  ``kill(node)`` SIGKILLs a node's raylet and every process of it, as a machine that loses
  power. A multi-node Ray needs ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1`` (with ``0`` a worker
  cannot join); Ray then binds its GCS and raylet ports on every interface, which the token
  guards (measured with Ray 2.60).
- ``MotoServer`` runs moto's S3 server on a loopback port and counts the requests it serves.
- ``TcpProxy`` stands between the clients and the S3 server: ``down()`` makes the object
  store unreachable (connections refused mid-flight and new ones reset) while moto keeps
  its data; ``delay_s`` makes it slow.

Nothing here imports Ray: the nodes are other processes, started with Ray's own CLI.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from letta_ray._urls import free_port


def wait_for_port(port: int, timeout_s: float = 30.0, what: str = "server") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"the {what} did not listen on 127.0.0.1:{port} within {timeout_s:g}s")


def start_serve(port: int, env: dict[str, str], log: Path, timeout_s: float = 120.0) -> subprocess.Popen[bytes]:
    """``letta-ray serve --port port`` in a process of its own (its output in ``log``),
    returned once ``/v1/health/`` answers 200; the caller stops it. If it exits or does not
    come up in ``timeout_s``, it is killed and AssertionError says so, with its log."""
    import httpx

    command = [sys.executable, "-c", "from letta_ray.cli import app; app()", "serve", "--port", str(port)]
    with Path(log).open("a") as out:  # a restart's output after the last run's
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            assert proc.poll() is None, Path(log).read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/health/", timeout=2).status_code == 200:
                    return proc
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"letta-ray serve did not come up: {Path(log).read_text()[-3000:]}"
            time.sleep(0.5)
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def _ray_cli() -> str:
    found = Path(sys.executable).with_name("ray")
    return str(found) if found.exists() else (shutil.which("ray") or "ray")


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def process_gone(pid: int) -> bool:
    """The process has exited (gone, or a zombie waiting for its parent)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_gone(pids: list[int], timeout_s: float = 30.0) -> None:
    """Wait until every one of ``pids`` has exited (after a SIGKILL); TimeoutError if not."""
    deadline = time.monotonic() + timeout_s
    while not all(process_gone(pid) for pid in pids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"processes {pids} outlived SIGKILL")
        time.sleep(0.05)


def _processes_with(text: str) -> list[int]:
    """Pids of the processes (not this one) whose command line contains ``text``."""
    return [pid for pid in _pids() if pid != os.getpid() and text in _cmdline(pid)]


def descendants(root: int) -> set[int]:
    """Every process below ``root``: its children, theirs, and so on (``root`` not included)."""
    children: dict[int, list[int]] = {}
    for pid in _pids():
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


@dataclass
class Node:
    name: str
    temp_dir: Path
    head: bool
    num_cpus: int
    node_id: str = ""
    alive: bool = True

    def pids(self) -> list[int]:
        """Every process of this node: those naming its temp dir, and the raylet's descendants."""
        own = _processes_with(str(self.temp_dir) + "/")
        raylets = [p for p in own if "raylet/raylet" in _cmdline(p)]
        return sorted(set(own) | {d for r in raylets for d in descendants(r)})



# Health checks a little faster than Ray's defaults (every 3 s, 5 misses), so a test sees a
# dead node in ~3 s rather than ~15 s. The recovery bound a test states includes this.
FAST_HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3,
                      "health_check_timeout_ms": 1000}


@dataclass
class LocalCluster:
    """A head and workers started with ``ray start`` under ``root``; ``stop()`` ends them all."""

    root: Path
    system_config: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # for every node (and drivers: ``driver_env``)
    nodes: list[Node] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        token = self.root / "auth_token"
        if not token.exists():
            token.write_text(uuid.uuid4().hex + uuid.uuid4().hex)
            token.chmod(0o600)
        self._token = token

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def node_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
        env.update(self.env)
        env.update(extra or {})
        env.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN_PATH": str(self._token), "RAY_USAGE_STATS_ENABLED": "0",
                    "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
        return env

    def driver_env(self) -> dict[str, str]:
        """The environment of a process that joins this cluster (``ray.init(address=...)``)."""
        return {**self.node_env(), "RAY_ADDRESS": self.address}

    def _start(self, name: str, args: list[str], head: bool, num_cpus: int,
               env: dict[str, str] | None = None) -> Node:
        temp_dir = self.root / name
        shutil.rmtree(temp_dir, ignore_errors=True)
        temp_dir.mkdir(parents=True)
        command = [_ray_cli(), "start", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
                   f"--temp-dir={temp_dir}", "--disable-usage-stats", *args]
        result = subprocess.run(command, env=self.node_env(env), capture_output=True, text=True, timeout=180)
        if result.returncode != 0:
            raise RuntimeError(f"ray start of {name} failed ({result.returncode}):\n{result.stdout[-3000:]}"
                               f"\n{result.stderr[-3000:]}")
        node = Node(name, temp_dir, head, num_cpus)
        node.node_id = self._node_id(temp_dir)
        self.nodes.append(node)
        return node

    @staticmethod
    def _node_id(temp_dir: Path) -> str:
        for pid in _processes_with(str(temp_dir) + "/"):
            match = re.search(r"--node_id=([0-9a-f]+)", _cmdline(pid))
            if "raylet/raylet" in _cmdline(pid) and match:
                return match.group(1)
        return ""

    def start_head(self, num_cpus: int = 1, resources: dict[str, float] | None = None) -> Node:
        self.port = free_port()
        args = ["--head", f"--port={self.port}", f"--ray-client-server-port={free_port()}",
                "--include-dashboard=false", f"--dashboard-agent-listen-port={free_port()}"]
        if resources:
            args.append(f"--resources={json.dumps(resources)}")
        if self.system_config:
            args.append(f"--system-config={json.dumps(self.system_config)}")
        return self._start("head", args, True, num_cpus)

    def add_worker(self, num_cpus: int = 1, name: str | None = None, env: dict[str, str] | None = None) -> Node:
        """A worker node; ``env`` is its own environment on top of the cluster's (its data dir)."""
        name = name or f"worker-{sum(not n.head for n in self.nodes) + 1}"
        return self._start(name, [f"--address={self.address}", f"--dashboard-agent-listen-port={free_port()}"],
                           False, num_cpus, env)

    def kill(self, node: Node) -> list[int]:
        """SIGKILL every process of ``node`` at once, as when its machine loses power."""
        pids = node.pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        node.alive = False
        return pids

    def stop(self) -> None:
        for node in reversed(self.nodes):
            if node.alive:
                self.kill(node)
        self.nodes.clear()


class MotoServer:
    """moto's S3 server on a loopback port, with its request log kept to count requests."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=self._log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, what="S3 server (moto)")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> dict[str, int]:
        """Requests served so far, by HTTP method."""
        self._log.flush()
        counts: dict[str, int] = {}
        for method in re.findall(r'"(GET|PUT|POST|HEAD|DELETE) ', self.log_path.read_text(errors="replace")):
            counts[method] = counts.get(method, 0) + 1
        return counts

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


def s3_env(endpoint: str) -> dict[str, str]:
    """The ``AWS_*`` settings of a loopback S3 server (moto takes any keys)."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}


def make_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    env = s3_env(endpoint)
    boto3.client("s3", endpoint_url=endpoint, region_name=env["AWS_REGION"],
                 aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket=bucket)


class TcpProxy:
    """A loopback TCP proxy to ``target_port`` that can be taken down, or slowed, on demand."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.delay_s = 0.0
        self._down = threading.Event()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.setblocking(False)
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def down(self) -> None:
        """Unreachable: open connections are reset, new ones are reset on accept."""
        self._down.set()
        with self._lock:
            for sock in list(self._pairs):
                self._close(sock)

    def up(self) -> None:
        self._down.clear()

    def _close(self, sock: socket.socket) -> None:
        other = self._pairs.pop(sock, None)
        for s in (sock, other):
            if s is None:
                continue
            self._pairs.pop(s, None)
            try:
                self._selector.unregister(s)
            except (KeyError, ValueError):
                pass
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
                s.close()
            except OSError:
                pass

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.1):
                sock = key.fileobj
                with self._lock:
                    if sock is self._listener:
                        self._accept()
                    elif sock in self._pairs:
                        self._pump(sock)  # type: ignore[arg-type]

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        if self._down.is_set():
            self._pairs[client] = client
            self._close(client)
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            client.close()
            return
        for s in (client, upstream):
            s.setblocking(False)
            self._selector.register(s, selectors.EVENT_READ)
        self._pairs[client], self._pairs[upstream] = upstream, client

    def _pump(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(sock)
            return
        if self.delay_s:
            time.sleep(self.delay_s)
        try:
            self._pairs[sock].setblocking(True)
            self._pairs[sock].sendall(data)
            self._pairs[sock].setblocking(False)
        except OSError:
            self._close(sock)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        with self._lock:
            for sock in list(self._pairs):
                self._close(sock)
        self._listener.close()


__all__ = ["FAST_HEALTH_CHECKS", "LocalCluster", "MotoServer", "Node", "TcpProxy", "descendants", "free_port",
           "make_bucket", "s3_env", "start_serve", "wait_for_port"]
