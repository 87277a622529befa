"""The tool sandbox on its own (no Ray): what a user tool can and cannot do, and its limits."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from letta_ray.errors import ToolDefinitionError
from letta_ray.sandbox import SandboxError, SandboxLimits, ToolSandbox
from letta_ray.sandbox._landlock import abi_version

pytestmark = pytest.mark.skipif(sys.platform != "linux" or abi_version() < 1,
                                reason="the sandbox's isolation needs Linux Landlock")


def tool(body: str, params: str = "", name: str = "t") -> str:
    """The source of a tool ``name`` whose body is ``body`` (indented by the caller)."""
    doc = '    """A test tool."""\n' if not params else (
        '    """A test tool.\n\n    Args:\n' + "".join(f"        {p.split(':')[0]}: an argument\n"
                                                     for p in params.split(", ")) + '    """\n')
    return f"import os, sys, glob, time, subprocess\n\ndef {name}({params}) -> str:\n{doc}{body}"


@pytest.fixture(scope="module")
async def sandbox(tmp_path_factory: Any) -> Any:
    data = tmp_path_factory.mktemp("data_dir")
    (data / "meta.duckdb").write_text("the agents' data")
    box = ToolSandbox(SandboxLimits(timeout_s=20, cpu_s=1, memory_mb=512, file_mb=8, output_kb=4),
                      workers=4, forbidden=(str(data),))
    await box.start()
    box.data_dir = data  # type: ignore[attr-defined]
    yield box
    await box.close()


async def test_a_tool_sees_only_the_environment_its_call_carries(sandbox: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-the-servers-own")
    monkeypatch.setenv("LETTA_RAY_HOME", "/somewhere")
    result = await sandbox.call(tool("    return repr(sorted(os.environ.items()))\n"), "t", {},
                                env={"MY_TOKEN": "t0k"})
    assert result.ok, result.message
    env = dict(eval(result.message))  # the tool's own repr of its environment
    assert env["MY_TOKEN"] == "t0k"
    assert "OPENAI_API_KEY" not in env and not any(k.startswith("LETTA_RAY") for k in env)
    assert set(env) == {"MY_TOKEN", "HOME", "TMPDIR", "PATH", "LANG"}


async def test_the_data_directory_cannot_be_read_listed_or_written(sandbox: Any) -> None:
    data = sandbox.data_dir
    body = (f"    out = [repr(glob.glob({str(data)!r} + '/*'))]\n"
            f"    for attempt in (lambda: open({str(data / 'meta.duckdb')!r}).read(),\n"
            f"                    lambda: open({str(data / 'new')!r}, 'w').write('x'),\n"
            f"                    lambda: os.listdir({str(data)!r})):\n"
            "        try:\n            out.append(repr(attempt()))\n"
            "        except OSError as exc:\n            out.append(type(exc).__name__)\n"
            "    return ' | '.join(out)\n")
    result = await sandbox.call(tool(body), "t", {})
    assert result.ok, result.message
    assert result.message == "[] | PermissionError | PermissionError | PermissionError"
    assert sorted(p.name for p in data.iterdir()) == ["meta.duckdb"]


async def test_a_tool_cannot_read_other_processes_or_signal_them(sandbox: Any) -> None:
    body = (f"    try:\n        open('/proc/{os.getpid()}/environ').read()\n        seen = 'read'\n"
            "    except OSError as exc:\n        seen = type(exc).__name__\n"
            f"    try:\n        os.kill({os.getpid()}, 0)\n        signalled = 'signalled'\n"
            "    except OSError as exc:\n        signalled = type(exc).__name__\n"
            "    return seen + ' ' + signalled\n")
    result = await sandbox.call(tool(body), "t", {})
    assert result.message in ("PermissionError PermissionError", "PermissionError ProcessLookupError")


async def test_each_call_works_in_a_fresh_scratch_directory(sandbox: Any) -> None:
    source = tool("    open('note.txt', 'a').write('x')\n    return os.getcwd() + ' ' + str(len(os.listdir('.')))\n")
    first, second = [await sandbox.call(source, "t", {}) for _ in range(2)]
    assert first.ok and second.ok
    assert first.message.split()[0] != second.message.split()[0]
    assert first.message.endswith(" 3") and second.message.endswith(" 3")  # note.txt and the two output files


async def test_a_tool_that_ends_its_process_is_a_failed_result_and_the_next_call_works(sandbox: Any) -> None:
    source = tool("    if x == 'die':\n        os._exit(3)\n    return 'alive'\n", "x: str")
    died = await sandbox.call(source, "t", {"x": "die"})
    assert not died.ok and died.limit == "exit" and "exit status 3" in died.message
    assert (await sandbox.call(source, "t", {"x": "live"})).message == "alive"


async def test_a_busy_loop_is_stopped_at_its_cpu_limit(sandbox: Any) -> None:
    result = await sandbox.call(tool("    while True:\n        pass\n"), "t", {})
    assert not result.ok and result.limit == "cpu", result
    assert "1 s of CPU time" in result.message


async def test_a_tool_that_waits_forever_is_stopped_at_its_time_limit() -> None:
    box = ToolSandbox(SandboxLimits(timeout_s=1.5), spares=0)
    try:
        result = await box.call(tool("    time.sleep(600)\n"), "t", {})
        assert not result.ok and result.limit == "timeout" and "1.5 s" in result.message
    finally:
        await box.close()


async def test_allocating_10_gb_fails_at_the_memory_limit(sandbox: Any) -> None:
    result = await sandbox.call(tool("    block = bytearray(10 * 2**30)\n    return str(len(block))\n"), "t", {})
    assert not result.ok and result.limit == "memory" and "512 MB" in result.message


async def test_processes_a_tool_starts_do_not_outlive_its_call(sandbox: Any) -> None:
    marker = "letta-ray-sandbox-child-marker"
    body = ("    for _ in range(3):\n"
            f"        subprocess.Popen(['/bin/sh', '-c', 'exec -a {marker} sleep 600'], start_new_session=True)\n"
            "    return 'started'\n")
    assert (await sandbox.call(tool(body), "t", {})).message == "started"

    def alive() -> int:
        count = 0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                count += marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                pass
        return count

    deadline = time.monotonic() + 10  # killed at the end of the call; the kernel may take a moment to reap
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive() == 0


async def test_100_mb_of_stdout_fails_at_the_file_limit_and_keeps_the_start(sandbox: Any) -> None:
    body = "    for _ in range(100):\n        sys.stdout.write('x' * 2**20)\n    return 'done'\n"
    result = await sandbox.call(tool(body), "t", {})
    assert not result.ok and "File too large" in result.message
    assert result.stdout.startswith("xxxx") and result.stdout.endswith("[output truncated]")
    assert len(result.stdout) < 5000


async def test_one_environment_never_sees_what_another_left_in_the_tool(sandbox: Any) -> None:
    source = ("SEEN = []\n\n" + tool("    SEEN.append(os.environ.get('SECRET'))\n    return repr(SEEN)\n"))
    assert (await sandbox.call(source, "t", {}, env={"SECRET": "alice"})).message == "['alice']"
    assert (await sandbox.call(source, "t", {}, env={"SECRET": "bob"})).message == "['bob']"
    assert (await sandbox.call(source, "t", {}, env={"SECRET": "alice"})).message == "['alice', 'alice']"


async def test_warm_calls_reuse_their_worker(sandbox: Any) -> None:
    source = tool("    return 'warm'\n", name="warm_tool")
    await sandbox.call(source, "warm_tool", {})
    started = sandbox.started
    for _ in range(5):
        assert (await sandbox.call(source, "warm_tool", {})).message == "warm"
    assert sandbox.started == started


async def test_arguments_are_checked_against_the_signature(sandbox: Any) -> None:
    source = tool("    return str(n * 2)\n", "n: int")
    assert (await sandbox.call(source, "t", {"n": "21"})).message == "42"
    bad = await sandbox.call(source, "t", {"n": "many"})
    assert not bad.ok and "Argument 'n'" in bad.message


async def test_describe_builds_the_schema_in_the_sandbox(sandbox: Any, tmp_path: Path) -> None:
    witness = tmp_path / "ran-here"
    source = f"open({str(witness)!r}, 'w').write('x')\n\n" + tool("    return 'x'\n", "city: str", name="weather")
    with pytest.raises(ToolDefinitionError, match="PermissionError"):  # its module code ran, shut in
        await sandbox.describe(source)
    assert not witness.exists()
    described = await sandbox.describe(tool("    return city\n", "city: str", name="weather"))
    assert described["tool"]["name"] == "weather"
    assert described["tool"]["json_schema"]["parameters"]["required"] == ["city"]
    with pytest.raises(ToolDefinitionError, match="does not parse"):
        await sandbox.describe("def broken(:\n")
    with pytest.raises(ToolDefinitionError, match="ToolContext"):
        await sandbox.describe('def f(ctx: ToolContext) -> str:\n    """x"""\n    return ""\n')


async def test_a_tool_may_read_the_agent_state_it_is_handed(sandbox: Any) -> None:
    from letta_ray.schemas import AgentState, LLMConfig

    source = ('def whoami(agent_state: "AgentState") -> str:\n'
              '    """Say the agent\'s name."""\n    return agent_state.name\n')
    described = await sandbox.describe(source)
    assert described["takes_agent_state"]
    state = AgentState(name="sam", system="s", llm_config=LLMConfig(model="x"))
    result = await sandbox.call(source, "whoami", {}, agent_state=state.model_dump(mode="json"))
    assert result.ok and result.message == "sam"


async def test_warm_workers_left_unused_are_stopped() -> None:
    box = ToolSandbox(SandboxLimits(idle_s=0.5), spares=0)
    try:
        assert (await box.call(tool("    return 'once'\n"), "t", {})).ok
        assert box.stats()["idle"] == 1
        deadline = time.monotonic() + 10
        while box.stats()["alive"] and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert box.stats() == {"started": 1, "alive": 0, "spare": 0, "idle": 0}
    finally:
        await box.close()


def test_a_data_directory_inside_a_readable_folder_is_refused() -> None:
    with pytest.raises(SandboxError, match="data directory"):
        ToolSandbox(forbidden=(os.path.join(sys.prefix, "letta-data"),)).check()


def test_without_landlock_the_sandbox_says_what_to_do(monkeypatch: Any) -> None:
    from letta_ray.sandbox import _landlock

    monkeypatch.setattr(_landlock, "abi_version", lambda: 0)
    with pytest.raises(SandboxError, match="LETTA_RAY_TOOL_ISOLATION=process"):
        ToolSandbox().check()
