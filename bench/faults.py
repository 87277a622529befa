"""Faults under traffic, with a ledger: the figures of README's reliability section.

Starts ``letta-ray serve`` (its own embedded Ray, a data directory on a small tmpfs when
run as root, so that the disk can be filled) against a loopback fake model, runs client
threads writing through the HTTP API (agents, messages with an otid, block edits,
passages, tools; a failed request is retried as a careful client does), and injects each
fault in turn, ``--rounds`` times over: SIGKILL of the agent hosts, the metadata store,
the archive, the directory and the HTTP replica; the whole Ray killed and started again on
the same data; a full disk. Then every write is read back through the API.

Prints, per fault, the median and worst seconds until the service answered again, and
the ledger's totals: writes acknowledged and checked, lost, doubled, half there.

Run: .venv/bin/python bench/faults.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from letta_ray.fake_llm_server import FakeOpenAIServer
from letta_ray.fault_ledger import FAULTS, Ledger, ServerProcess, run_faults, small_disk
from letta_ray.serve.startup import free_port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="times each fault is injected")
    parser.add_argument("--pause-s", type=float, default=4.0, help="traffic before each fault")
    args = parser.parse_args()
    recovery: dict[str, list[float]] = {f: [] for f in FAULTS}
    ledger = Ledger()
    with tempfile.TemporaryDirectory(prefix="letta-ray-faults-") as tmp, FakeOpenAIServer() as model, \
            small_disk(Path(tmp) / "disk") as disk:
        home = (disk or Path(tmp)) / "home"
        server = ServerProcess(home, free_port(), log=Path(tmp) / "server.log", env={
            "LETTA_RAY_DEFAULT_MODEL": "fake-model", "LETTA_RAY_DEFAULT_MODEL_ENDPOINT": model.url})
        print(f"server up in {server.start():.1f} s; data on {'a tmpfs' if disk else 'the disk (no full-disk fault)'}")
        try:
            for round_ in range(args.rounds):
                times, report = run_faults(server, ledger, disk=disk, pause_s=args.pause_s)
                for fault, seconds in times.items():
                    recovery[fault].append(seconds)
                print(f"round {round_ + 1}: " + ", ".join(f"{f} {s:.1f} s" for f, s in times.items()))
        finally:
            server.stop()
    print("\n| fault | injected | answered again after (median) | worst |\n|---|---|---|---|")
    for fault, seconds in recovery.items():
        if seconds:
            print(f"| {fault} | {len(seconds)} | {statistics.median(seconds):.1f} s | {max(seconds):.1f} s |")
    summary = {"writes_checked": report["writes"], "unacknowledged": report["unacknowledged"],
               "lost": len(report["lost"]), "doubled": len(report["doubled"]), "torn": len(report["torn"]),
               "client_retries": report["retried"], "unexpected_answers": len(report["unexpected"]),
               "messages": len(ledger.messages), "passages": len(ledger.passages), "agents": len(ledger.agents),
               "tools": len(ledger.tools)}
    print(json.dumps(summary))
    for problem in report["lost"] + report["doubled"] + report["torn"] + report["unexpected"]:
        print("PROBLEM:", problem)
    raise SystemExit(1 if summary["lost"] or summary["doubled"] or summary["torn"] else 0)


if __name__ == "__main__":
    main()
