"""One fault at a time under traffic, with a ledger of every acknowledged write.

A real server (``letta-ray serve`` with its own Ray, in a child process) takes traffic
from client threads while, in turn, its agent hosts, metadata store, archive, directory
and HTTP replica are SIGKILLed, the whole Ray is killed and started again on the same
data, and its disk fills up. After all of them every acknowledged write is read back
through the API: none lost, none doubled, none half there; and the service answered
again within a bound after each fault.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from letta_ray.fault_ledger import PROCESSES, Ledger, ServerProcess, Traffic, full_disk, time_to_answer
from letta_ray.serve.startup import free_port

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

RECOVERY_BOUND_S = {"agent host": 30, "metadata store": 30, "archive": 30, "directory": 30, "HTTP replica": 60,
                    "Ray restart": 120, "full disk": 30}


@contextlib.contextmanager
def small_disk(path: Path, size_mb: int = 384) -> Any:
    """A tmpfs of ``size_mb`` at ``path`` (root only), or None when it cannot be mounted."""
    path.mkdir(parents=True)
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)], capture_output=True).returncode == 0
    try:
        yield path if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)


def test_every_acknowledged_write_survives_each_fault(tmp_path: Path, fake_llm_server: Any) -> None:
    with small_disk(tmp_path / "disk") as disk:
        home = (disk or tmp_path / "plain") / "home"
        server = ServerProcess(home, free_port(), log=tmp_path / "server.log", env={
            "LETTA_RAY_DEFAULT_MODEL": "fake-model", "LETTA_RAY_DEFAULT_MODEL_ENDPOINT": fake_llm_server.url,
            "LETTA_RAY_NUM_CPUS": "2"})
        server.start()
        ledger = Ledger()
        traffic = Traffic(server.url, ledger, workers=3, retry_for_s=150)
        recovery: dict[str, float] = {}
        try:
            with httpx.Client(base_url=server.url, timeout=60) as http:
                probe = http.post("/v1/agents/", json={"name": "probe"}).json()["id"]
                traffic.start()
                for fault, needle in [*PROCESSES.items(), ("Ray restart", None), ("full disk", None)]:
                    time.sleep(4)  # traffic runs before each fault
                    ledger.phase = fault
                    if fault == "full disk" and disk is None:
                        continue
                    if fault == "full disk":
                        assert disk is not None
                        with full_disk(disk):
                            time.sleep(4)  # traffic against a full disk: refused, not acknowledged
                            freed = time.monotonic()
                        recovery[fault] = time_to_answer(server.url, probe, since=freed)
                        continue
                    struck = time.monotonic()
                    if needle is None:
                        server.kill_all()
                        server.start()
                    elif fault == "agent host":
                        for _ in server.processes(needle):  # every host, the probe's too
                            server.kill(needle)
                    else:
                        server.kill(needle)
                    recovery[fault] = time_to_answer(server.url, probe, since=struck)
                time.sleep(4)
                traffic.stop()
                report = ledger.check(http)
        finally:
            with contextlib.suppress(Exception):
                traffic.stop(timeout_s=5)
            server.stop()
    print(json.dumps({"recovery_s": {k: round(v, 1) for k, v in recovery.items()},
                      **{k: v if isinstance(v, int) else len(v) for k, v in report.items()}}))
    print(report["doubled"], report["lost"], report["torn"])
    assert report["unexpected"] == []
    assert report["lost"] == [] and report["doubled"] == [] and report["torn"] == []
    assert len(ledger.messages) >= 20 and len(ledger.passages) >= 5 and len(ledger.agents) >= 6
    for fault, seconds in recovery.items():
        assert seconds < RECOVERY_BOUND_S[fault], f"{fault}: answered again after {seconds:.1f} s"
    assert set(recovery) >= set(PROCESSES) | {"Ray restart"}
