"""Tool environments on Ray: pip_requirements installed once by Ray's runtime_env, and a
requirement that cannot be installed is a clear error when the tool is created."""

from __future__ import annotations

import time
from typing import Any

import pytest

from letta_ray.errors import ToolDefinitionError

pytestmark = pytest.mark.ray

FORMAT = '''
def format_number(n: int) -> str:
    """Write a number with thousands separators.

    Args:
        n: the number
    """
    import humanize

    return humanize.intcomma(n)
'''


def test_a_tools_pip_requirements_are_installed_for_it_and_only_for_it(client: Any, fake_llm_server: Any) -> None:
    tool = client.create_tool(FORMAT, pip_requirements=[{"name": "humanize", "version": "4.17.0"}])
    assert [str(r) for r in tool.pip_requirements] == ["humanize==4.17.0"]
    agent = client.create_agent("formatter", model="fake-model", model_endpoint=fake_llm_server.url,
                                tools=["format_number"])
    assert agent.run_tool("format_number", {"n": 1234567}).message == "1,234,567"
    # the same source without the requirement runs in the base environment, which lacks it
    bare = client.run_tool_from_source(FORMAT, {"n": 1})
    assert not bare.ok and "No module named 'humanize'" in bare.message
    names = {client.runtime.tools.name_of(tool.pip_requirements, "n"), client.runtime.tools.name_of([], "n")}
    assert len(names) == 2


def test_a_requirement_that_cannot_be_installed_fails_the_tools_creation_clearly(client: Any) -> None:
    started = time.monotonic()
    with pytest.raises(ToolDefinitionError, match=r"letta-ray-no-such-package-xyz") as failure:
        client.create_tool(FORMAT.replace("format_number", "format_other"),
                           pip_requirements=["letta-ray-no-such-package-xyz==1.0"])
    assert "No matching distribution" in str(failure.value) or "Could not find" in str(failure.value)
    assert time.monotonic() - started < 300
    assert "format_other" not in [t.name for t in client.list_tools(limit=None)]
    with pytest.raises(ToolDefinitionError, match="cannot install"):  # remembered: no second install attempt
        client.run_tool_from_source(FORMAT, {"n": 1}, pip_requirements=["letta-ray-no-such-package-xyz==1.0"])
