"""GBNF grammars (llama.cpp's grammar format) that constrain decoding to valid tool calls.

A local model picks a tool in two constrained steps: first its name
(``choice_grammar`` over the tool names), then its arguments (``schema_grammar`` of that
tool's JSON schema), so whatever it samples parses and validates. Pure text building:
no llama.cpp here, so it is tested without it.

What ``schema_grammar`` emits, on purpose narrower than JSON Schema allows:

- objects list their *required* properties, in schema order, with fixed spacing
  (``{"a": 1, "b": "x"}``); optional properties are left out and take their defaults,
  so a small model has fewer ways to go wrong;
- strings, arrays and integers are bounded (``max_string`` characters, ``max_items``
  items, 15 digits), so a call always finishes within a known number of tokens;
- a schema it cannot read (``$ref`` it cannot resolve, an object with no properties)
  becomes any JSON value.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["choice_grammar", "gbnf_literal", "schema_grammar"]

_STRING_CHAR = r'[^"\\\x7F\x00-\x1F] | "\\" ["\\/bfnrt]'
_PRIMITIVES = {
    "boolean": '"true" | "false"',
    "null": '"null"',
    "integer": '"-"? ([0-9] | [1-9] [0-9]{1,15})',
    "number": '"-"? ([0-9] | [1-9] [0-9]{1,15}) ("." [0-9]{1,15})? ([eE] [-+]? [0-9]{1,3})?',
}
_ANY_JSON = {
    "json-value": "json-object | json-array | json-string | integer | boolean | null",
    "json-object": '"{" ( json-string ": " json-value ( ", " json-string ": " json-value ){0,15} )? "}"',
    "json-array": '"[" ( json-value ( ", " json-value ){0,15} )? "]"',
}


def gbnf_literal(text: str) -> str:
    """``text`` as a GBNF string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    escaped = escaped.replace("\t", "\\t")
    return f'"{escaped}"'


def choice_grammar(options: list[str], *, suffix: str = "") -> str:
    """Exactly one of ``options`` (then ``suffix``): how the tool is chosen before its arguments."""
    if not options:
        raise ValueError("choice_grammar needs at least one option")
    # Longest first: the order does not change the language, only keeps it readable.
    alternatives = " | ".join(gbnf_literal(o) for o in sorted(dict.fromkeys(options), key=lambda o: (-len(o), o)))
    tail = f" {gbnf_literal(suffix)}" if suffix else ""
    return f"root ::= ({alternatives}){tail}\n"


def schema_grammar(schema: dict[str, Any], *, min_string: int = 0, max_string: int = 300, max_items: int = 8) -> str:
    """A GBNF grammar whose every sentence is a JSON value valid against ``schema``.

    ``min_string`` > 0 rules out empty strings (a small model otherwise "fills" an argument with nothing).
    """
    builder = _Builder(schema, min_string=min_string, max_string=max_string, max_items=max_items)
    body = builder.visit(schema, "root", depth=0)
    if body in builder.rules and not any(body in rule.split() for rule in builder.rules.values()):
        body = builder.rules.pop(body)  # the top object's rule becomes root itself
    builder.rules["root"] = body
    return builder.render()


class _Builder:
    def __init__(self, schema: dict[str, Any], *, min_string: int, max_string: int, max_items: int) -> None:
        self.definitions: dict[str, Any] = {**schema.get("definitions", {}), **schema.get("$defs", {})}
        self.min_string = min(min_string, max_string)
        self.max_string = max_string
        self.max_items = max_items
        self.rules: dict[str, str] = {}

    def render(self) -> str:
        ordered = {"root": self.rules.pop("root"), **self.rules}
        return "".join(f"{name} ::= {body}\n" for name, body in ordered.items())

    def _use(self, name: str, body: str) -> str:
        self.rules.setdefault(name, body)
        return name

    def _rule(self, hint: str, body: str) -> str:
        """A named rule for ``body`` (reused when an identical rule exists)."""
        for name, existing in self.rules.items():
            if existing == body:
                return name
        base = re.sub(r"[^a-zA-Z0-9]+", "-", hint).strip("-").lower() or "r"
        name, n = base, 1
        while name in self.rules or name == "root":
            n += 1
            name = f"{base}-{n}"
        self.rules[name] = body
        return name

    def _string(self) -> str:
        self._use("char", _STRING_CHAR)
        return self._use("string", f'"\\"" char{{{self.min_string},{self.max_string}}} "\\""')

    def _any(self) -> str:
        self._string()
        self._use("json-string", "string")
        for name in ("integer", "boolean", "null"):
            self._use(name, _PRIMITIVES[name])
        for name, body in _ANY_JSON.items():
            self._use(name, body)
        return "json-value"

    def visit(self, schema: Any, hint: str, depth: int) -> str:
        """A GBNF expression for ``schema`` (rules it needs are added on the way)."""
        if depth > 12 or not isinstance(schema, dict):
            return self._any()
        if "$ref" in schema:
            target = self.definitions.get(str(schema["$ref"]).rsplit("/", 1)[-1])
            return self.visit(target, hint, depth + 1) if target is not None else self._any()
        if "const" in schema:
            return gbnf_literal(json.dumps(schema["const"], ensure_ascii=False))
        if "enum" in schema:
            values = [gbnf_literal(json.dumps(v, ensure_ascii=False)) for v in schema["enum"]]
            return "(" + " | ".join(values) + ")" if values else self._any()
        for key in ("anyOf", "oneOf"):
            if key in schema:
                options = [self.visit(s, f"{hint}-{i}", depth + 1) for i, s in enumerate(schema[key])]
                return "(" + " | ".join(dict.fromkeys(options)) + ")"
        if "allOf" in schema and len(schema["allOf"]) == 1:
            return self.visit(schema["allOf"][0], hint, depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            return "(" + " | ".join(self.visit({**schema, "type": k}, hint, depth + 1) for k in kind) + ")"
        if kind == "string":
            return self._string()
        if kind in _PRIMITIVES:
            return self._use(kind, _PRIMITIVES[kind])
        if kind == "array":
            item = self.visit(schema.get("items", {}), f"{hint}-item", depth + 1)
            low = min(int(schema.get("minItems", 0)), self.max_items)
            high = max(low, min(int(schema.get("maxItems", self.max_items)), self.max_items))
            if high == 0:
                return '"[]"'
            rest = f'( ", " {item} ){{{max(low - 1, 0)},{high - 1}}}'
            body = f'"[" {item} {rest} "]"'
            return self._rule(hint, body if low > 0 else f'"[" ( {item} {rest} )? "]"')
        if kind == "object" or "properties" in schema:
            return self._object(schema, hint, depth)
        return self._any()

    def _object(self, schema: dict[str, Any], hint: str, depth: int) -> str:
        properties: dict[str, Any] = schema.get("properties") or {}
        required = [name for name in properties if name in set(schema.get("required", []))]
        if not properties:
            return self._any()
        if not required:
            return '"{}"'
        parts = []
        for i, name in enumerate(required):
            key = gbnf_literal(("" if i == 0 else ", ") + json.dumps(name, ensure_ascii=False) + ": ")
            parts.append(f"{key} {self.visit(properties[name], f'{hint}-{name}', depth + 1)}")
        return self._rule(hint, '"{" ' + " ".join(parts) + ' "}"')
