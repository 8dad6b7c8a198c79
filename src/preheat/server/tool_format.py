"""The text form of a tool call, as the model writes it and as history shows it.

A model family trained on a form of its own gets that form, told apart by its
chat template; every other model gets the documented default, the form Hermes-
and Qwen-style chat models are trained on:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

Llama 3.x writes ``{"name": "get_weather", "parameters": {"city": "Paris"}}``.
Several calls are separated by one newline. The grammar (see ``output_grammar``)
holds generated calls to exactly their form, with JSON spaced the way
``json.dumps`` spaces it, so a call rendered back into a later prompt has the
same text the model produced.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# How JSON inside a call is spaced: json.dumps' defaults, which models saw most.
ITEM_SEPARATOR = ", "
KEY_SEPARATOR = ": "


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(ITEM_SEPARATOR, KEY_SEPARATOR))


@dataclass(frozen=True)
class ToolCallForm:
    """``{opening}{"name": <name>, "<arguments_key>": <arguments>}{closing}``, calls joined
    by ``separator``; a call starts at ``opening``, or at its JSON when that is empty."""

    opening: str
    arguments_key: str
    closing: str
    separator: str = "\n"

    @property
    def before_name(self) -> str:
        return self.opening + '{"name": '

    @property
    def after_name(self) -> str:
        return f", {dumps(self.arguments_key)}: "

    @property
    def trigger(self) -> str:
        """The text every call starts with: where free text turns into a call."""
        return self.opening or self.before_name

    def head(self, name: str) -> str:
        """Everything a call holds before its arguments."""
        return self.before_name + dumps(name) + self.after_name

    @property
    def tail(self) -> str:
        """Everything a call holds after its arguments."""
        return "}" + self.closing

    def render(self, name: str, arguments: dict[str, Any]) -> str:
        return self.head(name) + dumps(arguments) + self.tail

    @property
    def instructions(self) -> str:
        """How to call a tool, for the system text that lists the tools."""
        example = self.head("<tool name>") + "<input object>" + self.tail
        return f"To call a tool, reply with a call in this form, one per tool use:\n{example}"


HERMES = ToolCallForm(opening="<tool_call>\n", arguments_key="arguments", closing="\n</tool_call>")
LLAMA3_JSON = ToolCallForm(opening="", arguments_key="parameters", closing="")


def form_for_template(template: str | None) -> ToolCallForm:
    """The form a chat template's model family was trained on; else the default."""
    if template and '"parameters": ' in template and "<|eot_id|>" in template:
        return LLAMA3_JSON
    return HERMES
