"""ChatTemplate: sandboxed Jinja with the Hugging Face extras chat templates rely on."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from jinja2.exceptions import SecurityError

from preheat.tokenizer.chat_template import ChatTemplate, ChatTemplateError
from preheat.tokenizer.turn_formats import CHATML as CHATML_TEMPLATE

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
]


def test_chatml_fallback_renders_conversation():
    prompt = ChatTemplate(CHATML_TEMPLATE).render(messages=MESSAGES, add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_trim_and_lstrip_blocks():
    source = (
        "{% for m in messages %}\n"
        "    {% if m.role == 'user' %}\n[{{ m.content }}]\n    {% endif %}\n"
        "{% endfor %}"
    )
    assert ChatTemplate(source).render(messages=MESSAGES) == "[Hi]\n"


def test_loop_controls():
    source = (
        "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
        "{{ m.content }}{% break %}{% endfor %}"
    )
    assert ChatTemplate(source).render(messages=MESSAGES) == "Hi"


def test_raise_exception_is_a_clear_error():
    source = (
        "{% if messages[0].role != 'user' %}"
        "{{ raise_exception('Conversation must start with user') }}{% endif %}"
    )
    with pytest.raises(ChatTemplateError, match="Conversation must start with user"):
        ChatTemplate(source).render(messages=MESSAGES)


def test_tojson_keeps_unicode_and_supports_indent():
    tools = [{"name": "météo", "description": "天气 ☀"}]
    template = ChatTemplate("{{ tools | tojson }}|{{ tools[0] | tojson(indent=2) }}")
    compact, indented = template.render(tools=tools).split("|")
    assert compact == json.dumps(tools, ensure_ascii=False)
    assert indented == json.dumps(tools[0], ensure_ascii=False, indent=2)


def test_tojson_does_not_html_escape():
    assert ChatTemplate("{{ x | tojson }}").render(x="<b>&") == '"<b>&"'


def test_strftime_now():
    rendered = ChatTemplate("{{ strftime_now('%Y') }}").render()
    assert rendered == str(datetime.now().year)


def test_supports_tools_detects_references():
    assert ChatTemplate("{% if tools %}{{ tools | length }}{% endif %}").supports_tools
    assert not ChatTemplate(CHATML_TEMPLATE).supports_tools


def test_sandbox_blocks_mutation_and_internals():
    with pytest.raises(SecurityError):
        ChatTemplate("{{ messages.append(1) }}").render(messages=[])
    with pytest.raises(SecurityError):
        ChatTemplate("{{ ''.__class__.__mro__[1].__subclasses__() }}").render()


def test_compiled_once_and_reusable():
    template = ChatTemplate(CHATML_TEMPLATE)
    compiled = template._template
    first = template.render(messages=MESSAGES[1:], add_generation_prompt=False)
    assert template.render(messages=MESSAGES[1:], add_generation_prompt=False) == first
    assert template._template is compiled
