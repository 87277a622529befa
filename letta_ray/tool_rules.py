"""Tool rules: which tools the model may call next, and what a call means for the turn."""

from __future__ import annotations

from dataclasses import dataclass, field

from letta_ray.schemas import (
    ChildToolRule,
    ContinueToolRule,
    InitToolRule,
    MaxCountPerStepToolRule,
    RequiredBeforeExitToolRule,
    TerminalToolRule,
    ToolRule,
)


@dataclass
class ToolRuleSolver:
    """Tracks the tool calls of one turn against the agent's tool rules."""

    rules: list[ToolRule]
    called: list[str] = field(default_factory=list)

    def allowed(self, available: list[str]) -> list[str]:
        """The tools the model may call at the next step, in ``available`` order."""
        allowed = list(available)
        if not self.called:
            first = [r.tool_name for r in self.rules if isinstance(r, InitToolRule)]
            if first:
                allowed = [t for t in allowed if t in first]
        else:
            last = self.called[-1]
            children = [r.children for r in self.rules if isinstance(r, ChildToolRule) and r.tool_name == last]
            if children:
                permitted = {c for group in children for c in group}
                allowed = [t for t in allowed if t in permitted]
        for rule in self.rules:
            if isinstance(rule, MaxCountPerStepToolRule) and self.called.count(rule.tool_name) >= rule.max_count_limit:
                allowed = [t for t in allowed if t != rule.tool_name]
        return allowed

    def required_tool(self) -> str | None:
        """A tool that must be the very next call (a run-first rule with one tool)."""
        if self.called:
            return None
        first = [r.tool_name for r in self.rules if isinstance(r, InitToolRule)]
        return first[0] if len(first) == 1 else None

    def record(self, tool_name: str) -> None:
        self.called.append(tool_name)

    def is_terminal(self, tool_name: str) -> bool:
        return any(isinstance(r, TerminalToolRule) and r.tool_name == tool_name for r in self.rules)

    def forces_continue(self, tool_name: str) -> bool:
        return any(isinstance(r, ContinueToolRule) and r.tool_name == tool_name for r in self.rules)

    def missing_before_exit(self) -> list[str]:
        """Tools that must be called before the turn may end and were not."""
        return [
            r.tool_name
            for r in self.rules
            if isinstance(r, RequiredBeforeExitToolRule) and r.tool_name not in self.called
        ]
