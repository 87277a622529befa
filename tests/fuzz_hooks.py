"""schemathesis hooks for tests/test_fuzz.py (loaded by the run's schemathesis.toml).

A query parameter that is a list of plain strings (``agent_ids`` and ``statuses`` of GET
/v1/runs/, ...) is sent as repeated keys, and every value the fuzzer makes to violate it
reads on the wire as a valid list: a string ``x``, a number ``5`` or an object ``{"x": 1}``
is sent as ``?agent_ids=x``, ``?agent_ids=5``, ``?agent_ids=x``: a list of one string; a list
of numbers is a list of strings. A server that accepts it is right, but schemathesis counts
it as accepted negative data (its own wire checks cover scalar parameters, not this). So a
generated query whose value for such a parameter is anything but a list of strings is
dropped: positive generation never makes one (it makes a list of strings or null), so no
valid request is lost.
"""

from __future__ import annotations

from typing import Any

import schemathesis


def _is_plain_string_list(schema: Any) -> bool:
    """Whether ``schema`` admits a list of any strings (itself, or one arm of an anyOf/oneOf)."""
    if not isinstance(schema, dict):
        return False
    if schema.get("type") == "array":
        items = schema.get("items")
        return isinstance(items, dict) and items.get("type") == "string" and not (
            set(items) - {"type", "title", "description"})
    return any(_is_plain_string_list(arm) for key in ("anyOf", "oneOf") for arm in schema.get(key, ()))


def wire_distinct(operation: Any, query: dict[str, Any] | None) -> bool:
    """False when a plain-string-list parameter holds a value sent exactly as a valid one."""
    if not query or operation is None:
        return True
    for name, value in query.items():
        parameter = operation.query.get(name)
        if parameter is None or not _is_plain_string_list(parameter.definition.get("schema")):
            continue
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            return False
    return True


@schemathesis.hook
def filter_query(ctx, query):
    return wire_distinct(ctx.operation, query)
