"""GBNF grammars for tool calls: checked by matching JSON against them (no llama.cpp needed).

``matches`` turns a grammar into a Python regex (the GBNF we emit uses only literals,
character classes, groups, ``|``, ``?`` and ``{m,n}``, which mean the same in both;
recursive rules are unrolled a few levels), so the tests assert which calls a grammar
accepts, not how its text looks. With the local-llm extra, llama.cpp parses them too.
"""

from __future__ import annotations

import json
import re
from importlib.util import find_spec
from typing import Any

import pytest

from letta_ray.base_tools import BASE_TOOLS
from letta_ray.local_llm.grammar import choice_grammar, gbnf_literal, schema_grammar
from letta_ray.tools import openai_schema

_TOKEN = re.compile(r'\s*("(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]|\{\d+,\d+\}|[()|?*+]|[a-zA-Z0-9-]+)')


def _rules(grammar: str) -> dict[str, str]:
    rules = {}
    for line in grammar.strip().splitlines():
        name, _, body = line.partition(" ::= ")
        rules[name.strip()] = body
    return rules


def _regex(rules: dict[str, str], name: str, depth: int = 0) -> str:
    if depth > 9:
        return "(?!)"  # deeper than any test value: matches nothing
    out = []
    for token in _TOKEN.findall(rules[name]):
        if token.startswith('"'):
            out.append(re.escape(json.loads(token)))
        elif token.startswith("["):
            out.append(token)
        elif token in "()|?*+" or token.startswith("{"):
            out.append(token.replace("(", "(?:") if token == "(" else token)
        else:
            out.append(f"(?:{_regex(rules, token, depth + 1)})")
    return "".join(out)


def matches(grammar: str, text: str) -> bool:
    return re.fullmatch(_regex(_rules(grammar), "root"), text, re.DOTALL) is not None


def tool_parameters(name: str, *, heartbeat: bool = True) -> dict[str, Any]:
    return openai_schema(BASE_TOOLS[name].tool, with_heartbeat=heartbeat)["function"]["parameters"]


def test_literal_escapes_quotes_backslashes_and_newlines() -> None:
    assert gbnf_literal('say "hi"\\\n') == r'"say \"hi\"\\\n"'
    assert json.loads(gbnf_literal('a "b" \\ c\n')) == 'a "b" \\ c\n'


def test_choice_grammar_accepts_exactly_the_options() -> None:
    grammar = choice_grammar(["send_message", "memory_insert", "memory_replace"])
    assert matches(grammar, "memory_insert")
    assert matches(grammar, "send_message")
    assert not matches(grammar, "memory_ins")
    assert not matches(grammar, "send_message ")
    assert matches(choice_grammar(["a"], suffix='"'), 'a"')
    with pytest.raises(ValueError):
        choice_grammar([])


def test_memory_insert_grammar_accepts_a_valid_call_with_required_fields_in_order() -> None:
    grammar = schema_grammar(tool_parameters("memory_insert"))
    good = json.dumps({"label": "human", "new_str": 'Name: "Ada"\nLives in Lisbon', "request_heartbeat": True})
    assert matches(grammar, good)
    assert json.loads(good)["new_str"].startswith('Name: "Ada"')
    # optional insert_line is left to its default; missing, reordered or mistyped fields are not sentences
    assert not matches(grammar, '{"label": "human", "new_str": "x", "insert_line": 0, "request_heartbeat": true}')
    assert not matches(grammar, '{"label": "human", "request_heartbeat": true}')
    assert not matches(grammar, '{"new_str": "x", "label": "human", "request_heartbeat": true}')
    assert not matches(grammar, '{"label": "human", "new_str": "x", "request_heartbeat": "yes"}')
    assert not matches(grammar, '{"label": "human", "new_str": "raw\nnewline", "request_heartbeat": true}')


def test_strings_are_bounded_and_min_string_rules_out_empty_ones() -> None:
    schema = {"type": "object", "properties": {"s": {"type": "string"}}, "required": ["s"]}
    assert matches(schema_grammar(schema, max_string=5), '{"s": "abcde"}')
    assert not matches(schema_grammar(schema, max_string=5), '{"s": "abcdef"}')
    assert matches(schema_grammar(schema), '{"s": ""}')
    assert not matches(schema_grammar(schema, min_string=1), '{"s": ""}')


def test_enums_consts_unions_arrays_numbers_and_refs() -> None:
    schema = {
        "type": "object",
        "$defs": {"Mode": {"enum": ["any", "all"]}},
        "properties": {
            "mode": {"$ref": "#/$defs/Mode"},
            "kind": {"const": "note"},
            "tags": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}]},
            "n": {"type": "integer"},
            "x": {"type": "number"},
            "optional": {"type": "string"},
        },
        "required": ["mode", "kind", "tags", "n", "x"],
    }
    grammar = schema_grammar(schema, max_items=3)
    assert matches(grammar, '{"mode": "all", "kind": "note", "tags": ["a", "b"], "n": -12, "x": 3.5e2}')
    assert matches(grammar, '{"mode": "any", "kind": "note", "tags": null, "n": 0, "x": 1}')
    assert matches(grammar, '{"mode": "any", "kind": "note", "tags": [], "n": 7, "x": 0.25}')
    assert not matches(grammar, '{"mode": "some", "kind": "note", "tags": null, "n": 0, "x": 1}')
    assert not matches(grammar, '{"mode": "any", "kind": "todo", "tags": null, "n": 0, "x": 1}')
    assert not matches(grammar, '{"mode": "any", "kind": "note", "tags": ["a", "b", "c", "d"], "n": 0, "x": 1}')
    assert not matches(grammar, '{"mode": "any", "kind": "note", "tags": null, "n": 1.5, "x": 1}')
    assert not matches(grammar, '{"mode": "any", "kind": "note", "tags": null, "n": 01, "x": 1}')


def test_a_schema_it_cannot_read_allows_any_json_value() -> None:
    grammar = schema_grammar({"type": "object", "properties": {"data": {}}, "required": ["data"]})
    assert matches(grammar, '{"data": {"a": [1, "two", null, true]}}')
    assert matches(grammar, '{"data": "text"}')
    assert not matches(grammar, '{"data": }')
    assert matches(schema_grammar({"type": "object"}), '{"free": "form"}')
    assert matches(schema_grammar({"type": "object", "properties": {"a": {"type": "string"}}}), "{}")


@pytest.mark.parametrize("name", sorted(BASE_TOOLS))
def test_every_base_tool_has_a_grammar_its_sample_call_matches(name: str) -> None:
    params = tool_parameters(name)
    grammar = schema_grammar(params)
    sample = {}
    for prop in params.get("required", []):
        spec = params["properties"][prop]
        kind = spec.get("type") or next((s.get("type") for s in spec.get("anyOf", []) if s.get("type") != "null"), None)
        sample[prop] = {"string": "x", "integer": 1, "boolean": True, "number": 1,
                        "array": ["x"]}.get(kind, spec.get("enum", ["x"])[0])
    assert matches(grammar, json.dumps(sample)), (name, grammar)


@pytest.mark.local_llm
@pytest.mark.skipif(find_spec("llama_cpp") is None, reason="needs the local-llm extra (llama.cpp)")
@pytest.mark.parametrize("name", sorted(BASE_TOOLS))
def test_llama_cpp_parses_every_base_tool_grammar(name: str) -> None:
    from llama_cpp import LlamaGrammar

    assert LlamaGrammar.from_string(schema_grammar(tool_parameters(name)), verbose=False) is not None
    assert LlamaGrammar.from_string(choice_grammar(sorted(BASE_TOOLS)), verbose=False) is not None
