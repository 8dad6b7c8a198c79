"""Cache diagnostics: ``diagnostics.previous_message_id`` explains a prompt-cache miss."""
from __future__ import annotations

from e2e_helpers import ALIAS, cached_system, document

QUESTION = [{"role": "user", "content": [
    {"type": "text", "text": "Which license is this?", "cache_control": {"type": "ephemeral"}}]}]


def ask(client, previous: str | None, **fields):
    fields.setdefault("messages", QUESTION)
    return client.messages.create(model=ALIAS, max_tokens=2, diagnostics={"previous_message_id": previous},
                                  **fields)


def reason(message) -> dict | None:
    if message.diagnostics is None:
        return None
    return message.diagnostics.cache_miss_reason.model_dump(exclude_none=True)


def test_first_turn_and_appended_turns_report_nothing(client):
    system = cached_system(document())
    first = ask(client, None, system=system)
    assert first.diagnostics is None
    follow_up = QUESTION + [{"role": "assistant", "content": "The GPL."},
                            {"role": "user", "content": "Which version?"}]
    second = ask(client, first.id, system=system, messages=follow_up)
    assert second.diagnostics is None
    assert second.usage.cache_read_input_tokens > 0


def test_changed_system_prompt(client):
    first = ask(client, None, system=cached_system(document()))
    second = ask(client, first.id, system=cached_system(document()))
    assert reason(second) == {"type": "system_changed",
                              "cache_missed_input_tokens": first.usage.cache_creation_input_tokens}


def test_changed_tools(client):
    system = cached_system(document())
    first = ask(client, None, system=system)
    second = ask(client, first.id, system=system, tools=[{"name": "t", "input_schema": {"type": "object"}}])
    assert reason(second)["type"] == "tools_changed"


def test_changed_earlier_message(client):
    system = document()
    history = [{"role": "user", "content": "Summarise the preamble."},
               {"role": "assistant", "content": "Freedom to share."},
               {"role": "user", "content": "And section 2?"}]
    first = ask(client, None, system=system, messages=history, cache_control={"type": "ephemeral"})
    edited = [{"role": "user", "content": "Summarise section 1."}] + history[1:]
    second = ask(client, first.id, system=system, messages=edited, cache_control={"type": "ephemeral"})
    missed = first.usage.cache_creation_input_tokens - second.usage.cache_read_input_tokens
    assert reason(second) == {"type": "messages_changed", "cache_missed_input_tokens": missed}


def test_unknown_and_foreign_message_ids_are_not_found(client, client_b):
    system = cached_system(document())
    assert reason(ask(client, "msg_does_not_exist", system=system)) == {"type": "previous_message_not_found"}
    mine = ask(client, None, system=system)
    # another tenant learns nothing about this key's requests
    assert reason(ask(client_b, mine.id, system=system)) == {"type": "previous_message_not_found"}


def test_streaming_reports_diagnostics_in_message_start(client):
    first = ask(client, None, system=cached_system(document()))
    with client.messages.stream(model=ALIAS, max_tokens=2, messages=QUESTION,
                                system=cached_system(document()),
                                diagnostics={"previous_message_id": first.id}) as stream:
        final = stream.get_final_message()
    assert reason(final)["type"] == "system_changed"
