"""Chat templates: Jinja2 programs shipped with a model that turn messages into a prompt string.

Templates come from model files, so they run in an immutable sandbox with the same extras
Hugging Face's `apply_chat_template` provides (`raise_exception`, `strftime_now`, `tojson`).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, NoReturn

from jinja2 import TemplateError, meta
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

class ChatTemplateError(TemplateError):
    """A chat template rejected its input (via `raise_exception`) or failed to render."""


class ChatTemplate:
    """A chat template compiled once; `render` may be called any number of times."""

    def __init__(self, source: str):
        environment = _environment()
        self.source = source
        self._template = environment.from_string(source)
        self.variables = frozenset(meta.find_undeclared_variables(environment.parse(source)))

    @property
    def supports_tools(self) -> bool:
        """Whether the template reads the `tools` variable (i.e. can describe tools to the model)."""
        return "tools" in self.variables

    def render(self, **context: Any) -> str:
        """Render with the given variables (`messages`, `tools`, `add_generation_prompt`, ...)."""
        return self._template.render(**context)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.filters["tojson"] = _tojson
    return env


def _raise_exception(message: str) -> NoReturn:
    raise ChatTemplateError(f"chat template error: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
    ensure_ascii: bool = False,
) -> str:
    # Jinja's built-in tojson escapes HTML characters and non-ASCII text, which models never saw.
    return json.dumps(
        value, indent=indent, separators=separators, sort_keys=sort_keys, ensure_ascii=ensure_ascii
    )
