"""The tool sandbox: user-defined tools run here, never in an agent host.

``ToolSandbox`` keeps warm worker processes, each shut in (its own user and PID
namespaces, Linux Landlock, resource limits, an environment holding only what the call
carries) before it runs any user code; see ``runner`` and ``worker``.
"""

from .runner import Isolation, SandboxError, SandboxLimits, SandboxResult, ToolSandbox, tool_key

__all__ = ["Isolation", "SandboxError", "SandboxLimits", "SandboxResult", "ToolSandbox", "tool_key"]
