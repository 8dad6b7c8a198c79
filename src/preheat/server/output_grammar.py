"""What shape a reply must have: tools, ``tool_choice`` and ``output_config.format`` ->
an llguidance grammar the engine decodes under.

The model chooses the content; the grammar guarantees the shape: every tool call
is in the model's tool-call form (``tool_format``) with arguments valid against its tool's
``input_schema``, and a structured-output reply is JSON valid against its schema.
Schemas are checked here, before anything runs: an invalid schema is a 400 naming
where it is wrong. Keywords the grammar cannot enforce (``propertyNames``, say) are a 400
naming them for a structured-output reply and a ``strict: true`` tool, whose validity is
promised; a plain tool's schema is enforced without them (Claude Code's tools use some,
and Anthropic holds a plain tool's calls to no schema at all).
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jsonschema.exceptions import SchemaError
from jsonschema.validators import Draft202012Validator, validator_for

from preheat.engine import DistinctSegments, check_grammar
from preheat.server.errors import InvalidRequestError
from preheat.server.protocol import PromptRequest, Tool
from preheat.server.tool_format import HERMES, ITEM_SEPARATOR, KEY_SEPARATOR, ToolCallForm

# How generated JSON is spaced: exactly as tool_format renders it back into prompts.
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ITEM_SEPARATOR,
                 "key_separator": KEY_SEPARATOR}
# Anthropic's marker for "a string, no particular format" (the SDK adds it); not JSON Schema.
_PLAIN_TEXT_FORMAT = "text"


@dataclass(frozen=True)
class OutputPlan:
    """How the reply is constrained and read back."""

    grammar: str | None  # None: free text
    tool_calls: bool  # the reply may hold calls in the model's tool-call form (parse them out)
    calls_only: bool  # tool_choice any/tool: the reply is calls and nothing else
    # several calls may come: each must differ from the others (the engine ends the reply
    # before a repeat, so a turn of calls closes instead of writing the same call again)
    distinct_calls: DistinctSegments | None = None


FREE_TEXT = OutputPlan(grammar=None, tool_calls=False, calls_only=False)


def plan_output(request: PromptRequest, form: ToolCallForm = HERMES) -> OutputPlan:
    """The grammar for this request's reply, calls in ``form``; a 400 for schemas that
    can't be enforced."""
    choice = request.tool_choice.type if request.tool_choice else "auto"
    tools = request.tools if choice != "none" else []
    if choice == "tool":
        tools = [t for t in tools if t.name == request.tool_choice.name]
        if not tools:
            raise InvalidRequestError(
                f"tool_choice.name: no tool named {request.tool_choice.name!r} in tools")
    elif choice == "any" and not tools:
        raise InvalidRequestError("tool_choice: 'any' needs at least one tool in tools")
    fmt = request.output_config.format if request.output_config else None
    reply_schema = _reply_schema(fmt) if fmt is not None else None
    if not tools:
        if reply_schema is None:
            return FREE_TEXT
        return OutputPlan(f"start: {_json_rule(reply_schema)}\n", tool_calls=False,
                          calls_only=False)
    parallel = not (request.tool_choice and request.tool_choice.disable_parallel_tool_use)
    calls_only = choice in ("any", "tool")
    return OutputPlan(_calls_grammar([_tool_schema(i, t) for i, t in enumerate(tools)], tools,
                                     form, parallel, calls_only, reply_schema),
                      tool_calls=True, calls_only=calls_only,
                      distinct_calls=DistinctSegments(form.trigger, form.separator) if parallel else None)


def _calls_grammar(schemas: list[dict], tools: list[Tool], form: ToolCallForm, parallel: bool,
                   calls_only: bool, reply_schema: dict | None) -> str:
    """Calls in ``form``; with ``auto``, free text (or the reply schema) may lead."""
    more = f'("{_lark(form.separator)}" call)*' if parallel else ""
    rules = [f"call: {' | '.join(f'call_{i}' for i in range(len(tools)))}"]
    for i, (tool, schema) in enumerate(zip(tools, schemas, strict=True)):
        rest = form.head(tool.name).removeprefix(form.trigger)
        rules.append(f'call_{i}: "{_lark(form.trigger)}" call_{i}_rest')
        rules.append(f'call_{i}_rest: "{_lark(rest)}" {_json_rule(schema)} '
                     f'"{_lark(form.tail)}"')
    if calls_only:
        start = [f"start: call {more}"]
    elif reply_schema is not None:
        # a structured reply, or calls; a call's "<" can't start the JSON, so they don't overlap
        start = [f"start: {_json_rule(reply_schema)} | call {more}"]
    else:
        # free text, or text that turns into calls where a call starts: a lazy lexeme ends
        # the text at the form's trigger, and from then on the call grammar holds
        opened = " | ".join(f"call_{i}_rest" for i in range(len(tools)))
        start = ["%llguidance {}", f"start: TEXT | text_then_calls",
                 f"text_then_calls: opening ({opened}) {more}",
                 f'opening[lazy]: TEXT "{_lark(form.trigger)}"',
                 r"TEXT: /(.|\n)*/"]
    return "\n".join(start + rules) + "\n"


def _json_rule(schema: dict) -> str:
    return "%json " + json.dumps({**schema, "x-guidance": _JSON_OPTIONS}, ensure_ascii=False)


def _lark(text: str) -> str:
    """``text`` as the inside of a Lark string literal."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


# ---- schemas ------------------------------------------------------------------------


def _tool_schema(index: int, tool: Tool) -> dict:
    where = f"tools.{index}.input_schema"
    if tool.input_schema.get("type") != "object":
        raise InvalidRequestError(f"{where}.type: Input should be 'object'")
    return _checked_schema(tool.input_schema, where, loosen=tool.strict is not True)


def _reply_schema(fmt: dict[str, Any]) -> dict:
    if fmt.get("type") != "json_schema":
        raise InvalidRequestError(
            "output_config.format.type: Input should be 'json_schema'")
    unknown = sorted(set(fmt) - {"type", "schema"})
    if unknown:
        raise InvalidRequestError(f"output_config.format.{unknown[0]}: Extra inputs are not "
                                  "permitted")
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        raise InvalidRequestError("output_config.format.schema: Input should be a JSON object")
    return _checked_schema(schema, "output_config.format.schema")


def _checked_schema(schema: dict, where: str, loosen: bool = False) -> dict:
    """A valid JSON Schema the grammar can enforce, as the grammar will get it; with
    ``loosen``, without the keywords it can't enforce."""
    cls = validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as err:
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.path)
        raise InvalidRequestError(f"{where}{path}: invalid JSON schema: {err.message}") from None
    schema = _closed_objects(_without_text_format(schema))
    schema, problem = _enforceable(schema)
    while loosen and problem and (keys := _unimplemented_keys(problem)):
        schema, problem = _enforceable(_without_keys(schema, keys))
    if problem:
        raise InvalidRequestError(f"{where}: this JSON schema uses features that constrained "
                                  f"decoding cannot enforce: {_first_line(problem)}")
    return schema


def _enforceable(schema: dict) -> tuple[dict, str | None]:
    """``schema`` with default number bounds where they compile, and why the grammar
    can't take it (None: it can)."""
    bounded = _bounded_numbers(schema)
    if not check_grammar(f"start: {_json_rule(bounded)}\n"):
        return bounded, None
    # maybe the schema's own numbers are beyond what the bounds combine with
    return schema, check_grammar(f"start: {_json_rule(schema)}\n")


_UNIMPLEMENTED = re.compile(r"Unimplemented keys: (\[[^\]]*\])")


def _unimplemented_keys(problem: str) -> set[str]:
    """The keywords llguidance says it does not implement, from its message."""
    found = _UNIMPLEMENTED.search(problem)
    try:
        keys = json.loads(found.group(1)) if found else []
    except json.JSONDecodeError:
        return set()
    return {k for k in keys if isinstance(k, str)}


def _without_keys(node: Any, keys: set[str]) -> Any:
    """A schema without the keywords ``keys`` at any depth; the names in ``properties``
    (and the other name maps) are names, not keywords, and stay."""
    if isinstance(node, list):
        return [_without_keys(v, keys) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in keys:
            continue
        if key in _SUBSCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: _without_keys(sub, keys) for name, sub in value.items()}
        else:
            out[key] = _without_keys(value, keys)
    return out


# Keywords whose value is a subschema, a list of them, or a name -> subschema map.
_SUBSCHEMA = ("items", "additionalProperties", "not", "if", "then", "else", "contains",
              "propertyNames", "unevaluatedProperties", "unevaluatedItems")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions",
                   "dependentSchemas")


def _subschemas_mapped(schema: dict, fn: Callable[[Any, str], Any]) -> dict:
    """A copy of ``schema`` with ``fn(subschema, keyword)`` applied to each direct subschema."""
    out = dict(schema)
    for key in _SUBSCHEMA:
        if key in out:
            out[key] = fn(out[key], key)
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [fn(s, key) for s in out[key]]
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: fn(s, key) for name, s in out[key].items()}
    return out


def _closed_objects(schema: Any, close: bool = True) -> Any:
    """Objects with ``properties`` and nothing said about other keys get no other keys.

    JSON Schema allows unlisted keys by default, and small models fill them with
    noise; a reply without them is still valid against the schema (xgrammar's
    strict mode makes the same choice). Say ``additionalProperties`` to allow them.
    The branches of an ``allOf`` stay open: each lists only part of the keys.
    """
    if not isinstance(schema, dict):
        return schema
    out = _subschemas_mapped(schema, lambda s, key: _closed_objects(s, close=key != "allOf"))
    open_keys = ("additionalProperties", "patternProperties", "unevaluatedProperties", "allOf")
    if close and "properties" in out and not any(k in out for k in open_keys):
        out["additionalProperties"] = False
    return out


# Bounds for numbers whose schema sets none: every literal then ends. An integer fits an
# int64 (18 digits; llguidance builds no range regex for the full int64 range); a number
# stays within 1e15 with at most 10 decimals, both well inside what a float64 holds.
INTEGER_BOUND = 10**18 - 1
NUMBER_BOUND = 1e15
NUMBER_STEP = 1e-10


def _bounded_numbers(schema: Any) -> Any:
    """Integers and numbers get the bounds above where the schema says nothing.

    Unbounded, a greedy small model writes ``"population": 11111111…`` until
    ``max_tokens`` (llguidance allows any length of digits). A schema's own
    ``minimum``/``maximum``/``multipleOf`` always win; a reply within these bounds is
    still valid against the schema as given.
    """
    if not isinstance(schema, dict):
        return schema
    # under "not" or "if" a bound would widen what the schema allows, not narrow it
    out = _subschemas_mapped(schema, lambda s, key: s if key in ("not", "if") else _bounded_numbers(s))
    types = out.get("type")
    types = set(types) if isinstance(types, list) else {types}
    if "number" in types:
        _default_bounds(out, NUMBER_BOUND)
        if "integer" not in types:
            out.setdefault("multipleOf", NUMBER_STEP)
    elif "integer" in types:
        _default_bounds(out, INTEGER_BOUND)
    return out


def _default_bounds(schema: dict, bound: float) -> None:
    """Add the missing side(s); none where the schema's own side lies beyond ``bound``
    (its number is then as long as it says)."""
    low, high = schema.get("minimum", schema.get("exclusiveMinimum")), schema.get(
        "maximum", schema.get("exclusiveMaximum"))
    if _is_number(low) and not -bound <= low <= bound or _is_number(high) and not -bound <= high <= bound:
        return
    if not _is_number(low):
        schema["minimum"] = -bound
    if not _is_number(high):
        schema["maximum"] = bound


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _without_text_format(node: Any) -> Any:
    """Drop ``"format": "text"`` wherever it appears in a schema (it means no format)."""
    if isinstance(node, dict):
        return {k: _without_text_format(v) for k, v in node.items()
                if not (k == "format" and v == _PLAIN_TEXT_FORMAT)}
    if isinstance(node, list):
        return [_without_text_format(v) for v in node]
    return node


def _first_line(message: str) -> str:
    line = message.strip().splitlines()[0]
    return line.split("failed to compile JSON schema: ", 1)[-1]
