"""Fault injection with a ledger: traffic against a real server, one fault at a time, and a
check that every acknowledged write is there exactly once.

A ``ServerProcess`` is ``letta-ray serve`` in a child process with its own embedded Ray
and data directory, on 127.0.0.1. ``Traffic`` runs client threads over HTTP that create
agents, send messages (each with an ``otid``), edit a block, insert passages and register
tools, retrying a failed request as a careful client would (the same ``otid``; a look
before inserting again) and writing every acknowledged write into a ``Ledger``. A fault is
injected while the traffic runs (``ServerProcess.kill`` of one actor's process, the whole
Ray and a restart on the same data, or a full disk); then ``Ledger.check`` reads everything
back through the API: no acknowledged write lost or doubled, and each unacknowledged one
either wholly there or wholly absent. Used by ``tests/test_faults.py`` (bounded) and
``bench/faults.py`` (longer, with its figures).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .local_cluster import _cmdline, descendants, start_serve, wait_gone

# Where each fault strikes: a substring of the process's command line (Ray names a worker
# after the actor it runs).
PROCESSES = {
    "agent host": "ray::AgentHost",
    "metadata store": "ray::MetadataStoreActor",
    "archive": "ray::ArchiveActor",
    "directory": "ray::Directory",
    "HTTP replica": "ServeReplica:letta_ray:letta_ray_http",
}


class ServerProcess:
    """``letta-ray serve`` on 127.0.0.1:``port`` over ``home``, in its own process group."""

    def __init__(self, home: Path, port: int, env: dict[str, str] | None = None, log: Path | None = None) -> None:
        self.home, self.port, self.log = home, port, log or home.parent / f"server-{port}.log"
        self.env = {**os.environ, "LETTA_RAY_HOME": str(home), "LETTA_RAY_LOCAL_LLM": "0",
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                    **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 180.0) -> float:
        """Start it and wait until it answers; the seconds that took."""
        started = time.monotonic()
        self.proc = start_serve(self.port, self.env, self.log, timeout_s=timeout_s)
        return time.monotonic() - started

    def processes(self, needle: str) -> list[int]:
        """The server's processes whose command line holds ``needle``."""
        if self.proc is None:
            return []
        return [pid for pid in sorted(descendants(self.proc.pid)) if needle in _cmdline(pid)]

    def kill(self, needle: str) -> int:
        """SIGKILL one process whose command line holds ``needle``; its pid."""
        pids = self.processes(needle)
        if not pids:
            raise LookupError(f"no process of the server matches {needle!r}")
        os.kill(pids[0], signal.SIGKILL)
        wait_gone([pids[0]])
        return pids[0]

    def kill_all(self) -> None:
        """SIGKILL the server and its whole Ray: a power cut, as far as the data is concerned."""
        if self.proc is None:
            return
        pids = [self.proc.pid, *descendants(self.proc.pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        wait_gone(pids)
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        self.kill_all()


# --------------------------------------------------------------------------- the ledger


@dataclass
class Ledger:
    """Every write the server acknowledged, and every one it did not (they may be there)."""

    agents: dict[str, str] = field(default_factory=dict)  # id -> name
    messages: dict[str, str] = field(default_factory=dict)  # otid -> agent id
    unacked_messages: dict[str, str] = field(default_factory=dict)
    blocks: dict[str, str] = field(default_factory=dict)  # agent id -> value last acknowledged
    unacked_blocks: dict[str, list[str]] = field(default_factory=dict)  # values sent since
    passages: dict[str, str] = field(default_factory=dict)  # token -> agent id
    unacked_passages: dict[str, str] = field(default_factory=dict)
    tools: set[str] = field(default_factory=set)
    unacked_tools: set[str] = field(default_factory=set)
    retried: int = 0  # requests sent again after a failure
    phase: str = "start"  # the fault last injected (set by whoever injects them), for the report
    sent_in: dict[str, str] = field(default_factory=dict)  # otid -> the phase it was sent in
    unexpected: list[str] = field(default_factory=list)  # answers no fault explains (a 4xx, say)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def writes(self) -> int:
        return len(self.agents) + len(self.messages) + len(self.passages) + len(self.tools) + len(self.blocks)

    def check(self, http: httpx.Client) -> dict[str, Any]:
        """Read everything back; the problems found (empty lists when all is well) and counts."""
        lost: list[str] = []
        doubled: list[str] = []
        torn: list[str] = []
        by_agent: dict[str, list[dict[str, Any]]] = {}
        for agent_id in self.agents:
            got = http.get(f"/v1/agents/{agent_id}")
            if got.status_code != 200:
                lost.append(f"agent {agent_id}: {got.status_code}")
                continue
            listed = http.get(f"/v1/agents/{agent_id}/messages", params={"limit": 10_000})
            listed.raise_for_status()
            by_agent[agent_id] = listed.json()
        for otid, agent_id in [*self.messages.items(), *self.unacked_messages.items()]:
            acked = otid in self.messages
            events = by_agent.get(agent_id, [])
            sent = [e for e in events if e.get("otid") == otid and e.get("message_type") == "user_message"]
            if len(sent) > 1:
                ids = [(e["id"], e.get("run_id")) for e in sent]
                doubled.append(f"message {otid} (sent after: {self.sent_in.get(otid)}): {len(sent)} times {ids}")
            elif not sent and acked:
                lost.append(f"message {otid} of {agent_id}")
            elif sent:  # the turn is whole: the reply is stored with it
                run = sent[0].get("run_id")
                if not any(e.get("run_id") == run and e.get("message_type") == "assistant_message" for e in events):
                    torn.append(f"message {otid}: stored without its reply")
        for agent_id, value in self.blocks.items():
            got = http.get(f"/v1/agents/{agent_id}/core-memory/blocks/ledger")
            if got.status_code != 200:
                lost.append(f"block of {agent_id}: {got.status_code}")
            elif got.json()["value"] not in (value, *self.unacked_blocks.get(agent_id, [])):
                lost.append(f"block of {agent_id}: {got.json()['value']!r}, acknowledged {value!r}")
        passages: dict[str, list[str]] = {}
        for agent_id in {*self.passages.values(), *self.unacked_passages.values()}:
            listed = http.get(f"/v1/agents/{agent_id}/archival-memory", params={"limit": 10_000})
            listed.raise_for_status()
            passages[agent_id] = [p["text"] for p in listed.json()]
        for token, agent_id in [*self.passages.items(), *self.unacked_passages.items()]:
            found = sum(token in text for text in passages.get(agent_id, []))
            if found > 1:
                doubled.append(f"passage {token}: {found} times")
            elif found == 0 and token in self.passages:
                lost.append(f"passage {token} of {agent_id}")
        names = [t["name"] for t in http.get("/v1/tools/", params={"limit": 10_000}).json()]
        for name in self.tools:
            if names.count(name) != 1:
                (lost if names.count(name) == 0 else doubled).append(f"tool {name}: {names.count(name)} times")
        return {"lost": lost, "doubled": doubled, "torn": torn, "writes": self.writes(),
                "unacknowledged": len(self.unacked_messages) + len(self.unacked_passages) + len(self.unacked_tools)
                + sum(len(v) for v in self.unacked_blocks.values()), "retried": self.retried,
                "unexpected": list(self.unexpected)}


# --------------------------------------------------------------------------- traffic


TOOL_SOURCE = '''def {name}(text: str) -> str:
    """Echo text back.

    Args:
        text: what to echo
    """
    return text
'''


class _Refused(Exception):
    """A 4xx: the request was wrong, not the server down."""


class Traffic:
    """``workers`` client threads writing through the API into ``ledger`` until stopped."""

    def __init__(self, url: str, ledger: Ledger, *, workers: int = 3, agents_per_worker: int = 2,
                 retry_for_s: float = 120.0, seed: int = 0) -> None:
        self.url, self.ledger, self.workers, self.agents_per_worker = url, ledger, workers, agents_per_worker
        self.retry_for_s = retry_for_s
        self.seed = seed
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.acks = 0
        self.failures = 0  # requests that failed (then retried)

    def start(self) -> Traffic:
        self._stop.clear()
        self._threads = [threading.Thread(target=self._worker, args=(i,), daemon=True, name=f"traffic-{i}")
                         for i in range(self.workers)]
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout_s: float = 180.0) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout_s)
        if any(t.is_alive() for t in self._threads):
            raise TimeoutError("traffic threads did not finish")

    # ---------------------------------------------------------------- one worker

    def _worker(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        with httpx.Client(base_url=self.url, timeout=60) as http:
            mine: list[str] = []
            while not self._stop.is_set():
                if len(mine) < self.agents_per_worker or rng.random() < 0.03:
                    if (agent := self._create_agent(http, f"w{index}-{uuid.uuid4().hex[:8]}")) is not None:
                        mine.append(agent)
                    continue
                agent = rng.choice(mine)
                roll = rng.random()
                if roll < 0.55:
                    self._message(http, agent)
                elif roll < 0.75:
                    self._edit_block(http, agent)
                elif roll < 0.95:
                    self._passage(http, agent)
                else:
                    self._tool(http, f"echo_{uuid.uuid4().hex[:8]}")

    def _attempts(self, request: Callable[[], httpx.Response], *, before_retry: Callable[[], bool] | None = None
                  ) -> httpx.Response | None:
        """``request`` until it is answered (2xx), for up to ``retry_for_s``; None if it never
        was. ``before_retry`` says, after a failure, whether the write landed anyway."""
        deadline = time.monotonic() + self.retry_for_s
        first = True
        while time.monotonic() < deadline:
            if not first:
                with self.ledger.lock:
                    self.ledger.retried += 1
                if before_retry is not None and before_retry():
                    return httpx.Response(200)
            first = False
            try:
                response = request()
            except httpx.HTTPError:
                self.failures += 1
                time.sleep(0.5)
                continue
            if response.status_code < 300:
                self.acks += 1
                return response
            if response.status_code < 500 and response.status_code not in (404, 409, 429):
                raise _Refused(f"{response.request.method} {response.request.url.path}: "
                               f"{response.status_code} {response.text[:300]}")
            # 5xx: the server is recovering; 404 or 409: an agent or tool mid-recovery
            self.failures += 1
            time.sleep(0.5)
        return None

    def _read(self, request: Callable[[], httpx.Response]) -> httpx.Response | None:
        """A read, asked until the server answers it (200), for up to ``retry_for_s``. While
        the server recovers, no answer does not mean "not there": taken so, a write that
        landed would be sent again."""
        deadline = time.monotonic() + self.retry_for_s
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                response = request()
                if response.status_code == 200:
                    return response
            time.sleep(0.5)
        return None

    def _guard(self, what: str, call: Callable[[], None]) -> None:
        try:
            call()
        except _Refused as exc:
            with self.ledger.lock:
                self.ledger.unexpected.append(f"{what}: {exc}")

    def _create_agent(self, http: httpx.Client, name: str) -> str | None:
        body = {"name": name, "memory_blocks": [{"label": "ledger", "value": "", "limit": 10_000},
                                                {"label": "human", "value": "Name: Ada"}]}

        def landed() -> bool:
            found = self._read(lambda: http.get("/v1/agents/", params={"name": name}))
            return found is not None and bool(found.json())

        created: list[str] = []

        def run() -> None:
            response = self._attempts(lambda: http.post("/v1/agents/", json=body), before_retry=landed)
            if response is None:
                return
            agent_id = (response.json()["id"] if response.content
                        else http.get("/v1/agents/", params={"name": name}).json()[0]["id"])
            with self.ledger.lock:
                self.ledger.agents[agent_id] = name
                self.ledger.blocks[agent_id] = ""
            created.append(agent_id)

        self._guard("create agent", run)
        return created[0] if created else None

    def _message(self, http: httpx.Client, agent_id: str) -> None:
        otid = f"otid-{uuid.uuid4().hex}"
        body = {"messages": [{"role": "user", "content": f"note {otid[-6:]}", "otid": otid}]}
        with self.ledger.lock:
            self.ledger.sent_in[otid] = self.ledger.phase

        def run() -> None:
            response = self._attempts(lambda: http.post(f"/v1/agents/{agent_id}/messages", json=body))
            with self.ledger.lock:
                if response is not None and any(m.get("message_type") == "assistant_message"
                                                for m in response.json()["messages"]):
                    self.ledger.messages[otid] = agent_id
                else:
                    self.ledger.unacked_messages[otid] = agent_id

        self._guard("message", run)

    def _edit_block(self, http: httpx.Client, agent_id: str) -> None:
        value = f"v-{uuid.uuid4().hex[:12]}"
        with self.ledger.lock:
            self.ledger.unacked_blocks.setdefault(agent_id, []).append(value)

        def run() -> None:
            response = self._attempts(lambda: http.patch(f"/v1/agents/{agent_id}/core-memory/blocks/ledger",
                                                         json={"value": value}))
            if response is not None:
                with self.ledger.lock:
                    self.ledger.blocks[agent_id] = value
                    self.ledger.unacked_blocks[agent_id] = []

        self._guard("block edit", run)

    def _passage(self, http: httpx.Client, agent_id: str) -> None:
        token = f"tok{uuid.uuid4().hex[:12]}"

        def landed() -> bool:
            listed = self._read(lambda: http.get(f"/v1/agents/{agent_id}/archival-memory", params={"limit": 10_000}))
            return listed is not None and any(token in p["text"] for p in listed.json())

        def run() -> None:
            response = self._attempts(lambda: http.post(f"/v1/agents/{agent_id}/archival-memory",
                                                        json={"text": f"passage {token}"}), before_retry=landed)
            with self.ledger.lock:
                (self.ledger.passages if response is not None else self.ledger.unacked_passages)[token] = agent_id

        self._guard("passage", run)

    def _tool(self, http: httpx.Client, name: str) -> None:
        def run() -> None:  # an upsert: sending it again is harmless
            response = self._attempts(lambda: http.put("/v1/tools/", json={"source_code": TOOL_SOURCE.format(
                name=name)}))
            with self.ledger.lock:
                (self.ledger.tools.add if response is not None else self.ledger.unacked_tools.add)(name)

        self._guard("tool", run)


# --------------------------------------------------------------------------- recovery


def time_to_answer(url: str, agent_id: str, *, since: float, timeout_s: float = 180.0) -> float:
    """Seconds from ``since`` until a message to ``agent_id`` is answered again."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, timeout=30) as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                reply = http.post(f"/v1/agents/{agent_id}/messages",
                                  json={"messages": [{"role": "user", "content": "are you there?",
                                                      "otid": f"probe-{uuid.uuid4().hex}"}]})
                if reply.status_code == 200:
                    return time.monotonic() - since
            time.sleep(0.2)
    raise TimeoutError(f"the service did not answer within {timeout_s:.0f} s")


@contextlib.contextmanager
def full_disk(folder: Path) -> Iterator[Path]:
    """Fill the file system of ``folder`` (a small tmpfs) until writes fail; free it after."""
    filler = folder / "filler.bin"
    chunk = b"\0" * 2**20
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            try:
                if os.write(fd, chunk) < len(chunk):
                    break
            except OSError:
                break
    finally:
        os.close(fd)
    try:
        yield filler
    finally:
        filler.unlink(missing_ok=True)


# --------------------------------------------------------------------------- one round of faults


FAULTS = [*PROCESSES, "Ray restart", "full disk"]


def inject(server: ServerProcess, fault: str, *, disk: Path | None, probe: str, hold_s: float = 4.0) -> float:
    """Inject ``fault`` into ``server`` (for "full disk", ``disk`` is the tmpfs its data
    directory is on); the seconds until a message to ``probe`` is answered again, counted
    from the fault (from freeing the disk, for a full one)."""
    if fault == "full disk":
        if disk is None:
            raise ValueError("a full disk needs the data directory on a small file system of its own")
        with full_disk(disk):
            time.sleep(hold_s)  # traffic against a full disk: refused, not acknowledged
            freed = time.monotonic()
        return time_to_answer(server.url, probe, since=freed)
    struck = time.monotonic()
    if fault == "Ray restart":
        server.kill_all()
        server.start()
    elif fault == "agent host":
        for _ in server.processes(PROCESSES[fault]):  # every host, the probe's too
            server.kill(PROCESSES[fault])
    else:
        server.kill(PROCESSES[fault])
    return time_to_answer(server.url, probe, since=struck)


def run_faults(server: ServerProcess, ledger: Ledger, *, disk: Path | None, faults: list[str] | None = None,
               pause_s: float = 4.0) -> tuple[dict[str, float], dict[str, Any]]:
    """Traffic into ``ledger`` while each fault strikes in turn (``pause_s`` of traffic
    before each); the recovery time of each, and the ledger's check afterwards."""
    recovery: dict[str, float] = {}
    with httpx.Client(base_url=server.url, timeout=60) as http:
        probe = http.post("/v1/agents/", json={"name": f"probe-{uuid.uuid4().hex[:6]}"}).json()["id"]
        traffic = Traffic(server.url, ledger, workers=3, retry_for_s=150).start()
        try:
            for fault in faults or FAULTS:
                time.sleep(pause_s)
                if fault == "full disk" and disk is None:
                    continue
                ledger.phase = fault
                recovery[fault] = inject(server, fault, disk=disk, probe=probe)
            time.sleep(pause_s)
        finally:
            traffic.stop()
        return recovery, ledger.check(http)


@contextlib.contextmanager
def small_disk(path: Path, size_mb: int = 384) -> Iterator[Path | None]:
    """A tmpfs of ``size_mb`` at ``path`` to fill up (root only); None where it cannot be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)], capture_output=True).returncode == 0
    try:
        yield path if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)
