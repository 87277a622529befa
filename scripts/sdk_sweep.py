"""Drive a running server with Letta's own SDK, broadly: one line per call, OK or what failed.

    python scripts/sdk_sweep.py --url http://127.0.0.1:8283 --model fake-model --model-endpoint http://...

The calls are the everyday ones of a Letta user (agents, messages, memory, archives, folders,
runs and steps, conversations, tools, tags, MCP, agent files). Exits non-zero if any failed.
Needs a model that answers (the fake LLM server, ``python -m letta_ray.fake_llm_server``, will do).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any


def main() -> int:
    from letta_client import Letta

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8283")
    parser.add_argument("--model", default=None, help="model of the agents (default: the server's)")
    parser.add_argument("--model-endpoint", default=None, help="OpenAI-compatible endpoint of --model")
    args = parser.parse_args()
    sdk = Letta(base_url=args.url, max_retries=0, timeout=120)
    results: list[tuple[str, str | None]] = []

    def check(name: str, call: Callable[[], Any]) -> Any:
        try:
            value = call()
        except Exception as exc:  # a sweep reports every failure and goes on
            results.append((name, f"{type(exc).__name__}: {exc}".splitlines()[0][:200]))
            if "-v" in sys.argv:
                traceback.print_exc()
            return None
        results.append((name, None))
        return value

    tag = uuid.uuid4().hex[:6]
    llm = ({"llm_config": {"model": args.model, "model_endpoint_type": "openai", "model_endpoint": args.model_endpoint,
                           "context_window": 32000}} if args.model_endpoint else
           {"model": args.model} if args.model else {})
    agent = check("agents.create", lambda: sdk.agents.create(
        name=f"sweep-{tag}", tags=[f"sweep-{tag}"], memory_blocks=[{"label": "human", "value": "Name: Ada"},
                                                                   {"label": "persona", "value": "I help."}], **llm))
    if agent is None:
        print(results[-1])
        return 1
    a = agent.id
    user = [{"role": "user", "content": "hello"}]
    check("agents.retrieve", lambda: sdk.agents.retrieve(a))
    check("agents.list", lambda: sdk.agents.list(tags=[f"sweep-{tag}"]).items)
    check("agents.update", lambda: sdk.agents.update(a, description="swept"))
    reply = check("agents.messages.create", lambda: sdk.agents.messages.create(a, messages=user))
    check("agents.messages.create(streaming)", lambda: list(sdk.agents.messages.create(a, messages=user,
                                                                                      streaming=True)))
    check("agents.messages.stream", lambda: list(sdk.agents.messages.stream(a, messages=user)))
    check("agents.messages.list", lambda: sdk.agents.messages.list(a).items)
    check("agents.messages.create_async", lambda: sdk.agents.messages.create_async(a, messages=user))
    check("agents.messages.compact", lambda: sdk.agents.messages.compact(a))
    check("agents.recompile", lambda: sdk.agents.recompile(a))
    check("agents.blocks.list", lambda: sdk.agents.blocks.list(a))
    check("agents.blocks.retrieve", lambda: sdk.agents.blocks.retrieve("human", agent_id=a))
    check("agents.blocks.update", lambda: sdk.agents.blocks.update("human", agent_id=a, value="Name: Ada L."))
    check("agents.passages.create", lambda: sdk.agents.passages.create(a, text="Ada likes tea", tags=["t"]))
    check("agents.passages.list", lambda: sdk.agents.passages.list(a))
    check("agents.passages.search", lambda: sdk.agents.passages.search(a, query="tea"))
    check("agents.tools.list", lambda: sdk.agents.tools.list(a))
    check("agents.export_file", lambda: sdk.agents.export_file(a))
    check("agents.messages.reset", lambda: sdk.agents.messages.reset(a, add_default_initial_messages=True))
    check("agents.messages.cancel (nothing running: 400)", lambda: _expect_status(
        lambda: sdk.agents.messages.cancel(a), 400))

    run_id = reply.usage.run_ids[0] if reply and reply.usage.run_ids else None
    if run_id:
        check("runs.retrieve", lambda: sdk.runs.retrieve(run_id))
        check("runs.list", lambda: sdk.runs.list(agent_id=a).items)
        check("runs.messages.list", lambda: sdk.runs.messages.list(run_id).items)
        check("runs.steps.list", lambda: sdk.runs.steps.list(run_id).items)
        check("runs.usage.retrieve", lambda: sdk.runs.usage.retrieve(run_id))
        steps = check("steps.list", lambda: sdk.steps.list(agent_id=a).items) or []
        if steps:
            check("steps.retrieve", lambda: sdk.steps.retrieve(steps[0].id))
            check("steps.metrics.retrieve", lambda: sdk.steps.metrics.retrieve(steps[0].id))
            check("steps.messages.list", lambda: sdk.steps.messages.list(steps[0].id).items)
            check("steps.feedback.create", lambda: sdk.steps.feedback.create(steps[0].id, feedback="positive"))
    check("messages.list", lambda: sdk.messages.list(limit=5))
    check("messages.search", lambda: sdk.messages.search(query="hello", agent_id=a))

    block = check("blocks.create", lambda: sdk.blocks.create(label=f"shared-{tag}", value="team notes"))
    if block:
        check("blocks.list", lambda: sdk.blocks.list(label=f"shared-{tag}").items)
        check("agents.blocks.attach", lambda: sdk.agents.blocks.attach(block.id, agent_id=a))
        check("agents.blocks.detach", lambda: sdk.agents.blocks.detach(block.id, agent_id=a))
        check("blocks.delete", lambda: sdk.blocks.delete(block.id))

    archive = check("archives.create", lambda: sdk.archives.create(name=f"arch-{tag}"))
    if archive:
        check("archives.passages.create", lambda: sdk.archives.passages.create(archive.id, text="Refunds: 5 days"))
        check("agents.archives.attach", lambda: sdk.agents.archives.attach(archive.id, agent_id=a))
        check("passages.search", lambda: sdk.passages.search(agent_id=a, query="refunds"))
        check("archives.list", lambda: sdk.archives.list(agent_id=a).items)
        check("archives.delete", lambda: sdk.archives.delete(archive.id))

    folder = check("folders.create", lambda: sdk.folders.create(name=f"docs-{tag}"))
    if folder:
        path = Path(tempfile.mkdtemp()) / "guide.md"
        path.write_text("# Guide\nPress start.\n")
        with open(path, "rb") as f:
            file = check("folders.files.upload", lambda: sdk.folders.files.upload(folder.id, file=f))
        if file:
            check("folders.files.retrieve (processed)", lambda: _wait_file(sdk, folder.id, file.id))
            check("folders.files.list", lambda: sdk.folders.files.list(folder.id).items)
            check("agents.folders.attach", lambda: sdk.agents.folders.attach(folder.id, agent_id=a))
            check("agents.files.list", lambda: sdk.agents.files.list(a).files)
            check("agents.files.open", lambda: sdk.agents.files.open(file.id, agent_id=a))
            check("agents.files.close_all", lambda: sdk.agents.files.close_all(a))
        check("folders.list", lambda: sdk.folders.list().items)
        check("folders.delete", lambda: sdk.folders.delete(folder.id))

    conversation = check("conversations.create", lambda: sdk.conversations.create(agent_id=a))
    if conversation:
        c = conversation.id
        check("conversations.messages.create", lambda: list(sdk.conversations.messages.create(c, messages=user)))
        check("conversations.messages.list", lambda: sdk.conversations.messages.list(c).items)
        check("conversations.list", lambda: sdk.conversations.list(agent_id=a))
        check("conversations.fork", lambda: sdk.conversations.fork(c))
        check("conversations.messages.compact", lambda: sdk.conversations.messages.compact(c))
        check("conversations.delete", lambda: sdk.conversations.delete(c))

    tool = check("tools.create", lambda: sdk.tools.create(source_code=(
        f"def roll_{tag}(sides: int) -> int:\n    \"\"\"Roll a die.\n\n    Args:\n        sides: faces\n    \"\"\"\n"
        "    return sides\n")))
    if tool:
        check("tools.update", lambda: sdk.tools.update(tool.id, description="Roll a die fairly."))
        check("tools.search", lambda: sdk.tools.search(query="die"))
        check("agents.tools.attach", lambda: sdk.agents.tools.attach(tool.id, agent_id=a))
        check("agents.tools.run", lambda: sdk.agents.tools.run(tool.name, agent_id=a, args={"sides": 6}))
        check("tools.delete", lambda: sdk.tools.delete(tool.id))
    check("tools.list", lambda: sdk.tools.list().items)
    check("tags.list", lambda: sdk.tags.list())
    check("mcp_servers.list", lambda: sdk.mcp_servers.list())
    check("models.list", lambda: sdk.models.list())
    exported = check("agents.export_file (for import)", lambda: sdk.agents.export_file(a))
    if exported:
        document = exported if isinstance(exported, str) else json.dumps(exported)
        imported = check("agents.import_file", lambda: sdk.agents.import_file(
            file=("agent.af", document.encode()), append_copy_suffix=True))
        if imported:
            check("agents.delete (imported)", lambda: [sdk.agents.delete(i) for i in imported.agent_ids])
    check("agents.delete", lambda: sdk.agents.delete(a))

    failed = [(n, e) for n, e in results if e]
    for name, error in results:
        print(f"{'OK  ' if error is None else 'FAIL'} {name}{'' if error is None else ': ' + error}")
    print(f"\n{len(results) - len(failed)} of {len(results)} calls worked")
    return 1 if failed else 0


def _expect_status(call: Callable[[], Any], status: int) -> None:
    from letta_client import APIStatusError

    try:
        call()
    except APIStatusError as exc:
        if exc.status_code == status:
            return
        raise
    raise AssertionError(f"expected HTTP {status}")


def _wait_file(sdk: Any, folder_id: str, file_id: str) -> Any:
    deadline = time.monotonic() + 120
    while (file := sdk.folders.files.retrieve(file_id, folder_id=folder_id)).processing_status not in (
            "completed", "error"):
        if time.monotonic() > deadline:
            raise TimeoutError(file.processing_status)
        time.sleep(0.2)
    if file.processing_status == "error":
        raise RuntimeError(file.error_message)
    return file


if __name__ == "__main__":
    sys.exit(main())
