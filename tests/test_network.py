"""Embedded Ray listens on 127.0.0.1 only: an open Ray port runs anyone's code."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

import pytest

from letta_ray.local_cluster import descendants

pytestmark = pytest.mark.ray


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def _hex_to_ip(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    words = [raw[i: i + 4][::-1] for i in range(0, 16, 4)]
    return str(ipaddress.IPv6Address(b"".join(words)))


def _is_loopback(addr: str) -> bool:
    ip = ipaddress.ip_address(addr)
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is loopback too
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def listening_sockets() -> dict[str, tuple[str, int]]:
    """inode -> (address, port) of every listening TCP socket on the machine."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A":  # LISTEN
                continue
            addr, port = local.split(":")
            out[inode] = (_hex_to_ip(addr), int(port, 16))
    return out


def test_every_ray_listener_is_on_loopback(client: Any, fake_llm_server: Any) -> None:
    # make sure hosts and stores exist, so their worker processes are counted too
    agent = client.create_agent("net-check", model="fake-model", model_endpoint=fake_llm_server.url)
    agent.send("hello")
    ray_pids = descendants(os.getpid())
    listeners = listening_sockets()
    ours = {inode: listeners[inode] for pid in ray_pids for inode in _socket_inodes(pid) if inode in listeners}
    assert len(ours) >= 3, "expected Ray's GCS, raylet and workers to be listening"
    exposed = {addr for addr, _ in ours.values() if not _is_loopback(addr)}
    assert not exposed, f"Ray processes listen on non-loopback addresses: {sorted(ours.values())}"


def test_the_user_path_keeps_ray_on_loopback_without_any_environment(tmp_path: Path) -> None:
    """A script that just calls letta_ray.connect(), with none of Ray's variables set."""
    import subprocess
    import sys

    script = ("import sys, letta_ray\n"
              f"client = letta_ray.connect(home={str(tmp_path / 'home')!r})\n"
              "print('ready', flush=True)\n"
              "sys.stdin.readline()\n"
              "client.close()\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        pids = descendants(proc.pid) | {proc.pid}
        listeners = listening_sockets()
        theirs = {listeners[i] for pid in pids for i in _socket_inodes(pid) if i in listeners}
        assert len(theirs) >= 3
        assert all(_is_loopback(addr) for addr, _ in theirs), sorted(theirs)
    finally:
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(timeout=120)
