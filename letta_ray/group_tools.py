"""The tool of a supervisor group's manager: fan a message out to the workers.

The manager's ``metadata["group_id"]`` names its group; the workers carry the tag
``group:<group_id>``. Both are set when the group is created.
"""

from __future__ import annotations

from letta_ray.errors import ToolError
from letta_ray.group_schema import group_tag
from letta_ray.tools import ToolContext


async def send_message_to_all_agents_in_group(ctx: ToolContext, message: str) -> str:
    """Send a message to every worker agent in the group you supervise, and collect their replies.

    The workers answer at the same time; each reply comes back labelled with the
    worker's id. Use their replies to write your own answer.

    Args:
        message: The message every worker receives. They see that it comes from you.
    """
    group_id = ctx.agent.metadata.get("group_id")
    if not group_id:
        raise ToolError("You do not supervise a group, so there is no one to send this to.")
    if not message.strip():
        raise ToolError("message is empty; write what the workers should answer.")
    messenger = ctx.deps.messenger
    if messenger is None:
        raise ToolError("Messaging other agents is not available to this agent.")
    replies = await messenger.broadcast(ctx.agent_id, message, [group_tag(str(group_id))], [])
    if not replies:
        return "Your group has no workers to send to."
    return "\n".join(f"{agent_id}: {reply}" for agent_id, reply in replies)


GROUP_TOOL_FUNCTIONS = [send_message_to_all_agents_in_group]
