"""Core memory: the agent's labelled blocks, their edits, and how they render.

Edits fail with a ``ToolError`` worded for the model (it is the model that edits its
memory); the same checks raise typed errors when a caller edits through the API.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from letta_ray.errors import ToolError
from letta_ray.schemas import Block, OpenFile, utcnow

_LINE_NUMBER_PREFIX = re.compile(r"^\s*\d+→ ", re.MULTILINE)


class Memory:
    """The blocks of one agent during a step, with edit tracking."""

    def __init__(self, blocks: list[Block]) -> None:
        self._blocks: dict[str, Block] = {b.label: b for b in blocks}
        self.edited: list[str] = []

    @property
    def blocks(self) -> list[Block]:
        return list(self._blocks.values())

    def labels(self) -> list[str]:
        return list(self._blocks)

    def get(self, label: str) -> Block:
        block = self._blocks.get(label)
        if block is None:
            available = ", ".join(self._blocks) or "(none)"
            raise ToolError(f"There is no memory block labelled {label!r}. Existing blocks: {available}.")
        return block

    def value(self, label: str) -> str:
        return self.get(label).value

    def set(self, label: str, value: str) -> Block:
        """Replace a block's value, enforcing read-only and the character limit."""
        block = self.get(label)
        if block.read_only:
            raise ToolError(f"The memory block {label!r} is read-only; you cannot edit it.")
        if len(value) > block.limit:
            raise ToolError(
                f"Edit failed: the block {label!r} would hold {len(value)} characters, over its "
                f"limit of {block.limit}. Shorten the text, or summarise what the block already "
                f"holds (e.g. with memory_rethink), then try again."
            )
        updated = block.model_copy(update={"value": value, "updated_at": utcnow()})
        self._blocks[label] = updated
        if label not in self.edited:
            self.edited.append(label)
        return updated

    def replace_block(self, block: Block) -> None:
        """Take a newer copy of a block from outside (a shared block edited elsewhere)."""
        self._blocks[block.label] = block

    def refresh(self, blocks: list[Block]) -> None:
        """Take the newer of each given block and this memory's copy (same label)."""
        for block in blocks:
            current = self._blocks.get(block.label)
            if current is not None and current.id == block.id and block.updated_at > current.updated_at:
                self._blocks[block.label] = block

    def adopt(self, block: Block) -> None:
        """Take the result of an edit made at the block's owner, as this agent's own edit."""
        self._blocks[block.label] = block
        if block.label not in self.edited:
            self.edited.append(block.label)

    def last_modified(self) -> datetime | None:
        return max((b.updated_at for b in self._blocks.values()), default=None)

    # ------------------------------------------------------------------ edit operations

    def append(self, label: str, content: str) -> Block:
        current = self.value(label)
        return self.set(label, f"{current}\n{content}" if current else content)

    def replace_all(self, label: str, old: str, new: str) -> Block:
        """Replace every occurrence of ``old`` (core_memory_replace semantics)."""
        current = self.value(label)
        if not old:
            raise ToolError("old_content must not be empty; to add text use core_memory_append.")
        if old not in current:
            raise ToolError(f"Could not find {old!r} in the memory block {label!r}. "
                            f"Copy the exact text from the block and try again.")
        return self.set(label, current.replace(old, new))

    def replace_unique(self, label: str, old: str, new: str) -> Block:
        """Replace ``old``, which must occur exactly once (memory_replace semantics)."""
        _reject_line_numbers(old, "old_str")
        _reject_line_numbers(new, "new_str")
        current = self.value(label)
        if not old:
            raise ToolError("old_str must not be empty; to add text use memory_insert.")
        count = current.count(old)
        if count == 0:
            raise ToolError(f"No replacement was made: {old!r} does not appear verbatim in the "
                            f"memory block {label!r}.")
        if count > 1:
            lines = [i + 1 for i, line in enumerate(current.split("\n")) if old in line]
            raise ToolError(f"No replacement was made: {old!r} appears {count} times in block "
                            f"{label!r} (lines {lines}). Include more surrounding text so it is unique.")
        return self.set(label, current.replace(old, new, 1))

    def insert(self, label: str, new: str, insert_line: int = -1) -> Block:
        """Insert text after line ``insert_line`` (0 = at the top, -1 = at the end)."""
        _reject_line_numbers(new, "new_str")
        current = self.value(label)
        lines = current.split("\n") if current else []
        if insert_line == -1:
            insert_line = len(lines)
        if insert_line < 0 or insert_line > len(lines):
            raise ToolError(f"insert_line {insert_line} is out of range: block {label!r} has "
                            f"{len(lines)} lines; use 0..{len(lines)} or -1 for the end.")
        lines[insert_line:insert_line] = new.split("\n")
        return self.set(label, "\n".join(lines))

    def rethink(self, label: str, new_memory: str) -> Block:
        _reject_line_numbers(new_memory, "new_memory")
        return self.set(label, new_memory)


EDIT_OPERATIONS = frozenset({"append", "replace_all", "replace_unique", "insert", "rethink"})


def apply_edit(block: Block, op: str, args: dict[str, object]) -> Block:
    """One memory edit applied to ``block`` alone: how a block's owner applies an agent's edit.

    Same checks and the same model-worded ToolErrors as editing an agent's Memory.
    """
    if op not in EDIT_OPERATIONS:
        raise ValueError(f"unknown memory edit {op!r}")
    memory = Memory([block])
    return getattr(memory, op)(block.label, **args)


def _reject_line_numbers(text: str, arg: str) -> None:
    if _LINE_NUMBER_PREFIX.search(text):
        raise ToolError(f"{arg} contains line-number prefixes like '3→ '. Those are only shown to "
                        f"help you find lines; leave them out of your edit.")


# --------------------------------------------------------------------------- rendering


@dataclass
class MemoryStats:
    """Counts shown to the model about memory it cannot see directly."""

    recall_messages: int = 0
    archival_passages: int = 0
    last_modified: datetime | None = None


def render_block(block: Block, *, line_numbers: bool = False) -> str:
    value = block.value
    if line_numbers and value:
        value = "\n".join(f"{i}→ {line}" for i, line in enumerate(value.split("\n"), start=1))
    meta = [f"- chars_current={len(block.value)}", f"- chars_limit={block.limit}"]
    if block.read_only:
        meta.insert(0, "- read_only=true")
    parts = [f"<{block.label}>"]
    if block.description:
        parts += ["<description>", block.description, "</description>"]
    parts += ["<metadata>", *meta, "</metadata>", "<value>", value, "</value>", f"</{block.label}>"]
    return "\n".join(parts)


def render_memory(blocks: list[Block], *, line_numbers: bool = False) -> str:
    """Core memory as it appears inside the system prompt."""
    if not blocks:
        return "<memory_blocks>\n(no memory blocks)\n</memory_blocks>"
    body = "\n\n".join(render_block(b, line_numbers=line_numbers) for b in blocks)
    return (
        "<memory_blocks>\nThese memory blocks are your core memory; they are always in view.\n\n"
        f"{body}\n</memory_blocks>"
    )


def render_metadata(stats: MemoryStats) -> str:
    edited = stats.last_modified.strftime("%Y-%m-%d %H:%M:%S %Z") if stats.last_modified else "never"
    return (
        "<memory_metadata>\n"
        f"- Memory blocks last modified: {edited}\n"
        f"- {stats.recall_messages} earlier messages are in recall memory "
        "(search them with conversation_search)\n"
        f"- {stats.archival_passages} passages are in archival memory "
        "(search them with archival_memory_search)\n"
        "</memory_metadata>"
    )


def render_files(files: Sequence[OpenFile]) -> str:
    """The files an agent has open, as they appear after its memory blocks."""
    shown = "\n\n".join(f'<file name="{f.file_name}" lines="{f.first_line}-{f.last_line}">\n{f.view}\n</file>'
                        for f in files)
    return ("<open_files>\nFiles you opened (close them when done; grep_files and semantic_search_files search "
            f"all your files):\n\n{shown}\n</open_files>")


def system_prompt_parts(system: str, blocks: list[Block], stats: MemoryStats,
                        *, line_numbers: bool = False, files: Sequence[OpenFile] = ()) -> tuple[str, str]:
    """The system message in two parts: instructions and core memory, which change only
    when memory is edited, and the memory metadata, which changes every turn."""
    stable = f"{system.rstrip()}\n\n{render_memory(blocks, line_numbers=line_numbers)}"
    if files:
        stable += "\n\n" + render_files(files)
    return stable, render_metadata(stats)


def compile_system_prompt(system: str, blocks: list[Block], stats: MemoryStats,
                          *, line_numbers: bool = False) -> str:
    """The system message: instructions, then core memory, then memory metadata."""
    return join_system_prompt(*system_prompt_parts(system, blocks, stats, line_numbers=line_numbers))


def join_system_prompt(stable: str, metadata: str) -> str:
    return f"{stable}\n\n{metadata}"
