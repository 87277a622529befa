"""The built-in tools every agent can have: replying, editing memory, searching memory.

Each docstring is the description the model reads, so it is written for the model.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, time
from typing import Any, Literal

from letta_ray.deps import Files, Messenger
from letta_ray.documents import grep, window
from letta_ray.errors import AgentBusyTimeout, AgentCycleError, InvalidInputError, NotFoundError, ToolError
from letta_ray.group_tools import GROUP_TOOL_FUNCTIONS
from letta_ray.schemas import Block, FileMetadata, OpenFile
from letta_ray.tools import ToolContext, ToolFunction, Toolset, build_tool


async def edit_block(ctx: ToolContext, label: str, op: str, **args: Any) -> Block:
    """Apply a memory edit: at the block's owner if the block is shared, else locally."""
    block = ctx.memory.get(label)  # ToolError naming the existing labels if unknown
    if ctx.deps.blocks is not None:
        if block.read_only:
            raise ToolError(f"The memory block {label!r} is read-only; you cannot edit it.")
        shared = await ctx.deps.blocks.apply(block, op, args)
        if shared is not None:
            ctx.memory.adopt(shared)
            return shared
    return getattr(ctx.memory, op)(label, **args)


def send_message(message: str) -> str:
    """Send a message to the user. This is how you reply; it ends your turn.

    Args:
        message: The message text the user will read. Markdown is allowed.
    """
    if not message.strip():
        raise ToolError("message is empty; write what the user should read.")
    return "Sent message successfully."


async def core_memory_append(ctx: ToolContext, label: str, content: str) -> str | None:
    """Append text to the end of one of your memory blocks.

    Args:
        label: The label of the memory block to append to, e.g. "human" or "persona".
        content: The text to append. It is added on a new line.
    """
    await edit_block(ctx, label, "append", content=content)
    return None


async def core_memory_replace(ctx: ToolContext, label: str, old_content: str, new_content: str) -> str | None:
    """Replace text in one of your memory blocks. Every occurrence of old_content is replaced.

    Args:
        label: The label of the memory block to edit.
        old_content: The exact text to find in the block.
        new_content: The text to put in its place. Use an empty string to delete old_content.
    """
    await edit_block(ctx, label, "replace_all", old=old_content, new=new_content)
    return None


async def memory_replace(ctx: ToolContext, label: str, old_str: str, new_str: str) -> str:
    """Replace one exact, unique piece of text in a memory block.

    old_str must appear exactly once in the block; copy it verbatim and leave out the
    line-number prefixes ("3→ ") shown in your memory view.

    Args:
        label: The label of the memory block to edit.
        old_str: The exact text to replace; it must occur exactly once.
        new_str: The replacement text. Use an empty string to delete old_str.
    """
    block = await edit_block(ctx, label, "replace_unique", old=old_str, new=new_str)
    return f"The memory block {label!r} was edited; it now holds {len(block.value)} characters."


async def memory_insert(ctx: ToolContext, label: str, new_str: str, insert_line: int = -1) -> str:
    """Insert text into a memory block at a given line.

    Args:
        label: The label of the memory block to edit.
        new_str: The text to insert (may span several lines).
        insert_line: The line after which to insert: 0 puts it at the top, -1 (the default)
            at the end.
    """
    block = await edit_block(ctx, label, "insert", new=new_str, insert_line=insert_line)
    return f"The memory block {label!r} was edited; it now holds {len(block.value)} characters."


async def memory_rethink(ctx: ToolContext, label: str, new_memory: str) -> str:
    """Rewrite a whole memory block, e.g. to reorganise or condense it.

    Args:
        label: The label of the memory block to rewrite.
        new_memory: The complete new content of the block. It replaces everything.
    """
    block = await edit_block(ctx, label, "rethink", new_memory=new_memory)
    return f"The memory block {label!r} was rewritten; it now holds {len(block.value)} characters."


async def archival_memory_insert(ctx: ToolContext, content: str, tags: list[str] | None = None) -> str:
    """Store a passage in your archival memory, a long-term store you search later.

    Store self-contained facts, not fragments of chat. Tags make passages easier to find.

    Args:
        content: The text to store.
        tags: Optional tags to file the passage under, e.g. ["family", "travel"].
    """
    if not content.strip():
        raise ToolError("content is empty; nothing was stored.")
    archive = ctx.deps.archive
    if archive is None:
        raise ToolError("Archival memory is not available to this agent.")
    passage = await archive.insert(ctx.agent.insert_owner, content, tags or [])
    ctx.state["archival_inserted"] = ctx.state.get("archival_inserted", 0) + 1
    return f"Stored in archival memory as {passage.id}."


def _parse_when(value: str | None, arg: str, *, end_of_day: bool = False) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ToolError(f"{arg} {value!r} is not an ISO date or datetime like 2024-05-01 or "
                        f"2024-05-01T14:30:00.") from exc
    if end_of_day and len(value.strip()) == 10:
        parsed = datetime.combine(parsed.date(), time.max)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


async def archival_memory_search(
    ctx: ToolContext,
    query: str,
    tags: list[str] | None = None,
    tag_match_mode: Literal["any", "all"] = "any",
    top_k: int | None = None,
    start_datetime: str | None = None,
    end_datetime: str | None = None,
) -> str:
    """Search your archival memory by meaning and keywords.

    Args:
        query: What you are looking for, in words.
        tags: Only return passages with these tags.
        tag_match_mode: "any" to match passages with at least one of the tags, "all" to
            require every tag.
        top_k: How many passages to return at most (default 5).
        start_datetime: Only passages stored at or after this ISO date/datetime.
        end_datetime: Only passages stored at or before this ISO date/datetime.
    """
    archive = ctx.deps.archive
    if archive is None:
        raise ToolError("Archival memory is not available to this agent.")
    if top_k is not None and not 1 <= top_k <= 100:
        raise ToolError("top_k must be between 1 and 100.")
    passages = await archive.search(
        ctx.agent.archive_owners,
        query,
        tags=tags,
        tag_match_mode=tag_match_mode,
        top_k=top_k or 5,
        start=_parse_when(start_datetime, "start_datetime"),
        end=_parse_when(end_datetime, "end_datetime", end_of_day=True),
    )
    if not passages:
        return "No archival memories matched."
    return "\n".join(
        f"[{p.created_at:%Y-%m-%d %H:%M}] ({', '.join(p.tags) or 'no tags'}) {p.text}" for p in passages
    )


async def conversation_search(
    ctx: ToolContext,
    query: str,
    roles: list[Literal["user", "assistant", "tool"]] | None = None,
    limit: int | None = None,
    start_date: str | None = None,
    end_date: str | None = None,
) -> str:
    """Search the whole history of your conversation, including messages no longer in view.

    Args:
        query: Words to look for.
        roles: Only messages from these roles ("user", "assistant", "tool").
        limit: How many messages to return at most (default 10).
        start_date: Only messages on or after this ISO date/datetime.
        end_date: Only messages on or before this ISO date/datetime.
    """
    recall = ctx.deps.recall
    if recall is None:
        raise ToolError("Conversation history search is not available to this agent.")
    if limit is not None and not 1 <= limit <= 100:
        raise ToolError("limit must be between 1 and 100.")
    found = await recall.search_messages(
        ctx.agent_id,
        query,
        roles=list(roles) if roles else None,
        limit=limit or 10,
        start=_parse_when(start_date, "start_date"),
        end=_parse_when(end_date, "end_date", end_of_day=True),
    )
    if not found:
        return "No messages matched."
    lines = []
    for m in found:
        text = m.content or " ".join(f"{c.name}({c.arguments})" for c in m.tool_calls)
        lines.append(f"[{m.created_at:%Y-%m-%d %H:%M}] {m.role}: {text}")
    return "\n".join(lines)


def memory_finish_edits() -> str:
    """Call this when you have finished reorganising memory. It ends your run."""
    return "Memory edits finished."


def _messenger(ctx: ToolContext) -> Messenger:
    if ctx.deps.messenger is None:
        raise ToolError("Messaging other agents is not available to this agent.")
    return ctx.deps.messenger


async def send_message_to_agent_and_wait_for_reply(ctx: ToolContext, message: str, other_agent_id: str) -> str:
    """Send a message to another agent and wait for its reply.

    Args:
        message: The message to send. The other agent sees that it comes from you.
        other_agent_id: The id of the agent to message (e.g. "agent-1234...").
    """
    if other_agent_id == ctx.agent_id:
        raise ToolError("You cannot message yourself.")
    try:
        reply = await _messenger(ctx).send_and_wait(ctx.agent_id, other_agent_id, message)
    except NotFoundError as exc:
        raise ToolError(f"There is no agent {other_agent_id!r}.") from exc
    except AgentCycleError as exc:
        raise ToolError(f"Not sent: {other_agent_id} is itself waiting on you ({exc}); waiting for its reply "
                        "would never end. Answer without it, or message it asynchronously.") from exc
    except AgentBusyTimeout as exc:
        raise ToolError(f"{other_agent_id} did not reply in time ({exc}). Go on without its reply.") from exc
    return reply or "(the agent finished its turn without a reply)"


async def send_message_to_agent_async(ctx: ToolContext, message: str, other_agent_id: str) -> str:
    """Send a message to another agent without waiting for a reply.

    Args:
        message: The message to send. The other agent sees that it comes from you.
        other_agent_id: The id of the agent to message.
    """
    if other_agent_id == ctx.agent_id:
        raise ToolError("You cannot message yourself.")
    try:
        await _messenger(ctx).send_async(ctx.agent_id, other_agent_id, message)
    except NotFoundError as exc:
        raise ToolError(f"There is no agent {other_agent_id!r}.") from exc
    return f"Sent to {other_agent_id}; its reply, if any, will not come back here."


async def send_message_to_agents_matching_tags(
    ctx: ToolContext, message: str, match_all: list[str], match_some: list[str]
) -> str:
    """Send a message to every agent whose tags match, and collect their replies.

    Args:
        message: The message to send.
        match_all: Tags an agent must all have (may be empty).
        match_some: Tags of which an agent must have at least one (may be empty).
    """
    if not match_all and not match_some:
        raise ToolError("Give at least one tag in match_all or match_some.")
    replies = await _messenger(ctx).broadcast(ctx.agent_id, message, match_all, match_some)
    if not replies:
        return "No agent matched those tags."
    return "\n".join(f"{agent_id}: {reply}" for agent_id, reply in replies)


MULTI_AGENT_TOOLS = [
    "send_message_to_agent_and_wait_for_reply",
    "send_message_to_agent_async",
    "send_message_to_agents_matching_tags",
]

# --------------------------------------------------------------------------- files

FILE_TOOLS = ["open_files", "grep_files", "semantic_search_files"]
"""The tools an agent gets with its first folder (and loses with its last)."""

# Matches grep_files shows per call.
GREP_PAGE = 20


def open_file_view(file: FileMetadata, folder_name: str, text: str, offset: int = 0,
                   length: int | None = None) -> OpenFile:
    """The window of ``file`` an agent sees once it opened lines ``offset``.. (0-based)."""
    view, first, last = window(text, offset, length)
    return OpenFile(file_id=file.id, file_name=f"{folder_name}/{file.file_name}", offset=offset, length=length,
                    view=view, first_line=first, last_line=last)


def _files_dep(ctx: ToolContext) -> Files:
    if ctx.deps.files is None or not ctx.agent.folder_ids:
        raise ToolError("You have no folders of files.")
    return ctx.deps.files


async def open_files(ctx: ToolContext, file_requests: list[dict[str, Any]], close_all_others: bool = False) -> str:
    """Open files of your folders: their text (or the lines you ask for) stays in view in your
    context until you close it. At most 5 files are open at once; opening more closes the
    ones opened longest ago.

    Args:
        file_requests: The files to open, each {"file_name": "<folder>/<file>", "offset": first line
            to show counting from 0 (optional), "length": how many lines (optional, default: all)}.
        close_all_others: Close every other open file first.
    """
    files = _files_dep(ctx)
    if not file_requests:
        raise ToolError("file_requests is empty: name at least one file to open.")
    known = await files.list_files(ctx.agent.folder_ids)
    opened = [] if close_all_others else list(ctx.state.get("open_files", ctx.agent.open_files))
    notes = []
    for request in file_requests:
        name = str(request.get("file_name", ""))
        match = [(f, folder) for f, folder in known if name in (f"{folder}/{f.file_name}", f.file_name)]
        if not match:
            names = ", ".join(f"{folder}/{f.file_name}" for f, folder in known) or "none"
            raise ToolError(f"No file named {name!r}. Your files: {names}.")
        file, folder = match[0]
        try:
            view = open_file_view(file, folder, await files.read(file.id), int(request.get("offset") or 0),
                                  int(request["length"]) if request.get("length") else None)
        except InvalidInputError as exc:
            raise ToolError(str(exc)) from None
        opened = [o for o in opened if o.file_id != file.id] + [view]
        notes.append(f"{view.file_name} (lines {view.first_line}-{view.last_line})")
    closed = [o.file_name for o in opened[:-ctx.agent.max_files_open]]
    ctx.state["open_files"] = opened[-ctx.agent.max_files_open:]
    return f"Opened {', '.join(notes)}." + (f" Closed {', '.join(closed)} to make room." if closed else "")


async def grep_files(ctx: ToolContext, pattern: str, include: str | None = None, context_lines: int = 1,
                     offset: int = 0) -> str:
    """Search the text of your files for a pattern, like grep: each matching line with the lines
    around it. Shows 20 matches a call; the answer says the offset of the next page.

    Args:
        pattern: A word or regular expression to look for (case-insensitive).
        include: Only files whose name matches this word or regular expression.
        context_lines: Lines to show before and after each match (default 1).
        offset: How many matches to skip (for the next page).
    """
    files = _files_dep(ctx)
    try:
        only = re.compile(include, re.IGNORECASE) if include else None
    except re.error as exc:
        raise ToolError(f"include {include!r} is not a valid regular expression: {exc}") from None
    hits: list[str] = []
    per_file: dict[str, int] = {}
    for file, folder in await files.list_files(ctx.agent.folder_ids):
        name = f"{folder}/{file.file_name}"
        if file.processing_status != "completed" or (only is not None and not only.search(name)):
            continue
        try:
            found = grep(await files.read(file.id), pattern, context_lines=max(0, min(context_lines, 10)))
        except InvalidInputError as exc:
            raise ToolError(str(exc)) from None
        if found:
            per_file[name] = len(found)
            hits += [f"{name}:{m.line}\n{m.context}" for m in found]
    if not hits:
        return f"No matches for {pattern!r}."
    page = hits[offset:offset + GREP_PAGE]
    summary = ", ".join(f"{name} ({n})" for name, n in per_file.items())
    more = (f"\nMore matches: call again with offset={offset + GREP_PAGE}."
            if offset + GREP_PAGE < len(hits) else "")
    return (f"{len(hits)} matches in {len(per_file)} files: {summary}.\n"
            f"Matches {offset + 1}-{offset + len(page)}:\n\n" + "\n\n".join(page) + more)


async def semantic_search_files(ctx: ToolContext, query: str, limit: int = 5) -> str:
    """Search your files by meaning: the passages closest to what you describe, with the file
    and lines they come from.

    Args:
        query: What you are looking for, in words.
        limit: How many passages to return at most (default 5).
    """
    files = _files_dep(ctx)
    if not 1 <= limit <= 50:
        raise ToolError("limit must be between 1 and 50.")
    known = {f.id: f"{folder}/{f.file_name}" for f, folder in await files.list_files(ctx.agent.folder_ids)}
    found = await files.search(list(known), query, limit)
    if not found:
        return "No passages of your files matched."
    return "\n\n".join(f"{known.get(p.agent_id, p.agent_id)} ({', '.join(p.tags)}):\n{p.text}" for p in found)


BASE_TOOL_FUNCTIONS = [
    send_message,
    core_memory_append,
    core_memory_replace,
    memory_replace,
    memory_insert,
    memory_rethink,
    archival_memory_insert,
    archival_memory_search,
    conversation_search,
    send_message_to_agent_and_wait_for_reply,
    send_message_to_agent_async,
    send_message_to_agents_matching_tags,
    memory_finish_edits,
    open_files,
    grep_files,
    semantic_search_files,
    *GROUP_TOOL_FUNCTIONS,
]

BASE_TOOLS: dict[str, ToolFunction] = {
    fn.__name__: build_tool(fn, tool_type="letta_core", tags=["letta_core"]) for fn in BASE_TOOL_FUNCTIONS
}

# Tools that end a turn, and tools that never take request_heartbeat.
TERMINAL_TOOLS = frozenset({"send_message", "memory_finish_edits"})

DEFAULT_TOOLS: dict[str, list[str]] = {
    "memgpt_v2_agent": ["send_message", "memory_replace", "memory_insert", "archival_memory_insert",
                        "archival_memory_search", "conversation_search"],
    "memgpt_agent": ["send_message", "core_memory_append", "core_memory_replace",
                     "archival_memory_insert", "archival_memory_search", "conversation_search"],
    "letta_v1_agent": ["memory_replace", "memory_insert", "archival_memory_insert",
                       "archival_memory_search", "conversation_search"],
    "sleeptime_agent": ["memory_replace", "memory_insert", "memory_rethink", "memory_finish_edits"],
}


def base_toolset(names: list[str] | None = None) -> Toolset:
    """A toolset of built-in tools by name (all of them when ``names`` is None)."""
    chosen = names if names is not None else list(BASE_TOOLS)
    return Toolset([BASE_TOOLS[n] for n in chosen if n in BASE_TOOLS])


DEFAULT_SYSTEM_PROMPTS: dict[str, str] = {
    "memgpt_v2_agent": (
        "You are a helpful assistant with a persistent memory, running on letta_ray.\n"
        "You talk with a user by calling the send_message function: text you write outside it "
        "is your private reasoning and the user never sees it. send_message ends your turn.\n"
        "Every other function takes request_heartbeat: set it to true when you need another "
        "step afterwards (to call another function or to reply).\n"
        "Your memory has tiers. Core memory (the blocks below) is always in view; keep what "
        "matters about the user and yourself there, editing it with memory_replace and "
        "memory_insert. Older conversation is in recall memory (conversation_search). "
        "Archival memory is your long-term store (archival_memory_insert / "
        "archival_memory_search).\n"
        "When you learn something lasting about the user, record it in core memory right away."
    ),
    "letta_v1_agent": (
        "You are a helpful assistant with a persistent memory, running on letta_ray.\n"
        "Reply to the user in plain text; a reply without a function call ends your turn. "
        "Call functions whenever you need them, and keep calling them until the task is done.\n"
        "Core memory (the blocks below) is always in view; keep what matters about the user and "
        "yourself there, editing it with memory_replace and memory_insert. Older conversation is "
        "in recall memory (conversation_search); archival memory is your long-term store "
        "(archival_memory_insert / archival_memory_search)."
    ),
    "sleeptime_agent": (
        "You are the sleep-time memory agent of another agent. You read the transcript of its "
        "recent conversation and reorganise the memory blocks you share with it: record new "
        "facts, merge duplicates, remove what is stale, keep each block within its limit. Use "
        "memory_replace, memory_insert and memory_rethink; call memory_finish_edits when done."
    ),
}
DEFAULT_SYSTEM_PROMPTS["memgpt_agent"] = DEFAULT_SYSTEM_PROMPTS["memgpt_v2_agent"]
