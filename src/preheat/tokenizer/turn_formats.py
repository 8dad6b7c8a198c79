"""Each family's turn format, for model files that ship no chat template (base models, many
conversions); ``--chat-template FILE`` overrides a file's template and these alike.

Written from the families' own documentation of their prompt formats.
"""
from __future__ import annotations

from pathlib import Path

from preheat.models import registry

# ChatML (Qwen, SmolLM2 and others): <|im_start|>role\ntext<|im_end|>\n per message.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Gemma: <start_of_turn>user|model\ntext<end_of_turn>\n; there is no system role, so a system
# prompt opens the first user turn, separated from it by a blank line.
GEMMA = (
    "{{ bos_token }}"
    "{% set system = namespace(text='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% set system.text = system.text + message['content'] + '\n\n' %}"
    "{% else %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else 'user') + '\n' }}"
    "{% if message['role'] == 'user' %}{{ system.text }}{% set system.text = '' %}{% endif %}"
    "{{ message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

FORMATS = {"chatml": CHATML, "gemma": GEMMA}


def family_template(info: registry.FamilyInfo | None) -> str:
    """The turn format of a family (ChatML when the family is unknown)."""
    return FORMATS[info.turn_format] if info is not None else CHATML


def for_gguf(architecture: str | None) -> str:
    try:
        return family_template(registry.for_gguf(architecture or ""))
    except registry.UnknownArchitecture:
        return CHATML


def for_hf(config: dict) -> str:
    try:
        return family_template(registry.for_hf(config))
    except registry.UnknownArchitecture:
        return CHATML


def read_template_file(path: str | Path) -> str:
    """A ``--chat-template`` file's Jinja source."""
    return Path(path).read_text(encoding="utf-8")
