"""A driver process on a multi-node cluster, commanded by a test over stdin/stdout.

``python tests/cluster_driver.py`` joins the cluster in ``RAY_ADDRESS`` with
``letta_ray.connect`` (data dir ``LETTA_RAY_HOME``, storage ``LETTA_RAY_STORAGE``), the fake
``memory_responder`` as every host's LLM, then answers one JSON command per line with one
JSON line. A test holds the cluster (and kills its nodes); this process is the user's
driver script, which a node's death must not disturb.

Commands (``op``): ``create`` (n agents, their nodes), ``where``, ``start_traffic`` /
``stop_traffic`` (a conversation in the background, each agent one message at a time,
with a ledger of what was acknowledged), ``answer`` (send until each agent answers, and
how long that took), ``history`` (each agent's user messages and ``human`` block),
``archive`` / ``search``, ``describe`` (the directory's hosts and their nodes), ``quit``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
import traceback
from typing import Any

import letta_ray
from letta_ray.testing import FunctionLLM, memory_responder

PREFIX = "@@driver "  # Ray prints its workers' logs to this process's stdout too


class Driver:
    def __init__(self) -> None:
        self.client = letta_ray.connect(address=os.environ["RAY_ADDRESS"], llm=FunctionLLM(memory_responder),
                                        call_timeout_s=float(os.environ.get("DRIVER_CALL_TIMEOUT_S", "60")))
        self._traffic: list[threading.Thread] = []
        self._stop = threading.Event()
        self._ledger: list[dict[str, Any]] = []
        self._failed: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- placement

    def _nodes_of(self, ids: list[str]) -> dict[str, str | None]:
        """The node each agent's host runs on, asked of the host itself."""
        where = self.client.run_sync(self.client.runtime.directory.locate_many(ids))
        hosts = {host_id: host for host_id, host in where}

        async def nodes() -> dict[str, str | None]:
            infos = await asyncio.gather(*(host.info() for host in hosts.values()))
            return {host_id: info["node_id"] for host_id, info in zip(hosts, infos, strict=True)}

        node_of = self.client.run_sync(nodes())
        return {agent_id: node_of[host_id] for agent_id, (host_id, _) in zip(ids, where, strict=True)}

    def create(self, n: int, prefix: str) -> dict[str, Any]:
        started = time.monotonic()
        ids = [self.client.create_agent(
            f"{prefix}-{i}", model="fake/model", context_window=200_000,
            memory_blocks=[{"label": "human", "value": "", "limit": 200_000}]).id for i in range(n)]
        return {"agents": self._nodes_of(ids), "seconds": time.monotonic() - started}

    def where(self, ids: list[str]) -> dict[str, Any]:
        return {"agents": self._nodes_of(ids)}

    def describe(self) -> dict[str, Any]:
        return self.client.run_sync(self.client.runtime.directory.describe())

    # ----------------------------------------------------------------- traffic

    def start_traffic(self, ids: list[str], tag: str, workers: int = 4, pause_s: float = 0.0) -> dict[str, Any]:
        self._stop.clear()
        shards = [ids[i::workers] for i in range(workers)]
        for shard in shards:
            thread = threading.Thread(target=self._talk, args=(shard, tag, pause_s), daemon=True)
            thread.start()
            self._traffic.append(thread)
        return {"workers": len(shards)}

    def _talk(self, ids: list[str], tag: str, pause_s: float) -> None:
        k = 0
        while not self._stop.is_set():
            for agent_id in ids:
                if self._stop.is_set():
                    return
                kind = "remember" if k % 2 == 0 else "hello"
                text = f"{kind} {tag}-{agent_id[-8:]}-{k}."  # the dot: "-1." is not in "-11."
                sent = time.time()
                try:
                    response = self.client.agent(agent_id).send(text)
                    entry = {"agent": agent_id, "text": text, "kind": kind, "sent": sent, "acked": time.time(),
                             "stop_reason": str(getattr(response.stop_reason, "stop_reason", response.stop_reason))}
                    with self._lock:
                        self._ledger.append(entry)
                except Exception as exc:  # a failure is a result here: the test reads them
                    with self._lock:
                        self._failed.append({"agent": agent_id, "text": text, "sent": sent, "at": time.time(),
                                             "error": f"{type(exc).__name__}: {exc}"[:500]})
                if pause_s:
                    time.sleep(pause_s)
            k += 1

    def stop_traffic(self) -> dict[str, Any]:
        self._stop.set()
        for thread in self._traffic:
            thread.join(120)
        self._traffic.clear()
        with self._lock:
            ledger, failed, self._ledger, self._failed = self._ledger, self._failed, [], []
        return {"acked": ledger, "failed": failed}

    def answer(self, ids: list[str], text: str, deadline_s: float = 120.0) -> dict[str, Any]:
        """Send ``text`` to each agent (in parallel) until it answers; seconds until it did."""
        started = time.time()
        answered: dict[str, float] = {}
        errors: dict[str, str] = {}

        def one(agent_id: str) -> None:
            while time.time() - started < deadline_s:
                try:
                    self.client.agent(agent_id).send(text)
                    answered[agent_id] = time.time()
                    return
                except Exception as exc:
                    errors[agent_id] = f"{type(exc).__name__}: {exc}"[:300]
                    time.sleep(0.2)

        threads = [threading.Thread(target=one, args=(a,), daemon=True) for a in ids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(deadline_s + 60)
        return {"started": started, "answered": answered,
                "errors": {a: e for a, e in errors.items() if a not in answered}}

    # ----------------------------------------------------------------- reading back

    def history(self, ids: list[str]) -> dict[str, Any]:
        out = {}
        for agent_id in ids:
            handle = self.client.agent(agent_id)
            users = [m.content or "" for m in handle.messages(limit=None) if m.role == "user"]
            out[agent_id] = {"user": users, "human": handle.blocks["human"].value}
        return {"agents": out}

    def archive(self, agent_id: str, texts: list[str]) -> dict[str, Any]:
        started = time.monotonic()
        done, errors = [], []
        for text in texts:
            try:
                self.client.agent(agent_id).archival.insert(text, tags=["cluster"])
                done.append(text)
            except Exception as exc:
                errors.append({"text": text, "error": f"{type(exc).__name__}: {exc}"[:300]})
        return {"inserted": done, "errors": errors, "seconds": time.monotonic() - started}

    def search(self, agent_id: str, query: str) -> dict[str, Any]:
        return {"texts": [p.text for p in self.client.agent(agent_id).archival.list(limit=1000)]}

    def keepers(self) -> dict[str, Any]:
        """What the journal keepers on the head wrote for hosts elsewhere."""
        async def stats() -> list[dict[str, int]]:
            return list(await asyncio.gather(*(k.stats() for k in self.client.runtime.keepers)))

        return {"keepers": self.client.run_sync(stats())}

    def status(self) -> dict[str, Any]:
        return self.client.status()

    def snapshot(self) -> dict[str, Any]:
        return self.client.run_sync(self.client.runtime.store.snapshot())


def main() -> None:
    driver = Driver()
    print(PREFIX + json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        op = command.pop("op")
        if op == "quit":
            break
        try:
            result = getattr(driver, op)(**command)
            print(PREFIX + json.dumps({"ok": True, "result": result}, default=str), flush=True)
        except Exception as exc:
            print(PREFIX + json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}",
                              "traceback": traceback.format_exc()[-4000:]}), flush=True)
    driver.client.close(shutdown=False)


if __name__ == "__main__":
    main()
