"""Tool rules: which tools the model may call next, and what a call means for the turn.

The rules are Letta's: ``run_first``, ``constrain_child_tools``, ``parent_last_tool``,
``conditional`` (on the last tool's output), ``max_count_per_step``, ``exit_loop``,
``continue_loop``, ``required_before_exit`` and ``requires_approval``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from letta_ray.schemas import (
    ChildToolRule,
    ConditionalToolRule,
    ContinueToolRule,
    InitToolRule,
    MaxCountPerStepToolRule,
    ParentToolRule,
    RequiredBeforeExitToolRule,
    RequiresApprovalToolRule,
    TerminalToolRule,
    ToolRule,
)


@dataclass
class ToolRuleSolver:
    """Tracks the tool calls of one turn against the agent's tool rules."""

    rules: list[ToolRule]
    called: list[str] = field(default_factory=list)
    last_output: str | None = None  # what the last tool answered (its result's message)

    def allowed(self, available: list[str]) -> list[str]:
        """The tools the model may call at the next step, in ``available`` order."""
        allowed = list(available)
        last = self.called[-1] if self.called else None
        if last is None:
            first = [r.tool_name for r in self.rules if isinstance(r, InitToolRule)]
            if first:
                allowed = [t for t in allowed if t in first]
        else:
            children = [r.children for r in self.rules if isinstance(r, ChildToolRule) and r.tool_name == last]
            if children:
                permitted = {c for group in children for c in group}
                allowed = [t for t in allowed if t in permitted]
            for rule in self.rules:
                if isinstance(rule, ConditionalToolRule) and rule.tool_name == last:
                    allowed = [t for t in allowed if t in self._conditional_children(rule, allowed)]
        for rule in self.rules:
            if isinstance(rule, ParentToolRule):
                if last == rule.tool_name:
                    allowed = [t for t in allowed if t in rule.children]
                else:
                    allowed = [t for t in allowed if t not in rule.children]
            if isinstance(rule, MaxCountPerStepToolRule) and self.called.count(rule.tool_name) >= rule.max_count_limit:
                allowed = [t for t in allowed if t != rule.tool_name]
        return allowed

    def _conditional_children(self, rule: ConditionalToolRule, available: list[str]) -> set[str]:
        output = (self.last_output or "").strip()
        for key, child in rule.child_output_mapping.items():
            if output == key or (output.lower() == key.lower() and key.lower() in ("true", "false")):
                return {child}
        if rule.require_output_mapping:
            return set()
        return {rule.default_child} if rule.default_child else set(available)

    def constrained(self) -> bool:
        """Whether a rule says the next step must call a tool (a child, parent, conditional
        or run-first rule is in force): the LLM is then asked for a tool call."""
        last = self.called[-1] if self.called else None
        if last is None:
            return any(isinstance(r, InitToolRule) for r in self.rules)
        return any(isinstance(r, ChildToolRule | ConditionalToolRule | ParentToolRule) and r.tool_name == last
                   for r in self.rules)

    def required_tool(self) -> str | None:
        """A tool that must be the very next call (a run-first rule with one tool)."""
        if self.called:
            return None
        first = [r.tool_name for r in self.rules if isinstance(r, InitToolRule)]
        return first[0] if len(first) == 1 else None

    def record(self, tool_name: str) -> None:
        self.called.append(tool_name)
        self.last_output = None

    def record_output(self, output: str) -> None:
        """The result of the call just recorded (conditional rules read it)."""
        self.last_output = output

    def is_terminal(self, tool_name: str) -> bool:
        return any(isinstance(r, TerminalToolRule) and r.tool_name == tool_name for r in self.rules)

    def forces_continue(self, tool_name: str) -> bool:
        return any(isinstance(r, ContinueToolRule) and r.tool_name == tool_name for r in self.rules)

    def requires_approval(self, tool_name: str) -> bool:
        return any(isinstance(r, RequiresApprovalToolRule) and r.tool_name == tool_name for r in self.rules)

    def missing_before_exit(self) -> list[str]:
        """Tools that must be called before the turn may end and were not."""
        return [
            r.tool_name
            for r in self.rules
            if isinstance(r, RequiredBeforeExitToolRule) and r.tool_name not in self.called
        ]
