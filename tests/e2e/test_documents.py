"""Documents, search results and images through the real server and the SDK: a PDF's text
is cached like any block, and an image is a 400 by default or a note with
``--images placeholder``."""
from __future__ import annotations

import base64
import sys
from pathlib import Path

import anthropic
import openai
import pytest
from e2e_helpers import GREEDY, KEY_A, document, start_server, total_input

sys.path.insert(0, str(Path(__file__).parents[1]))
from pdf_files import pdf_with_pages  # noqa: E402

PNG = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}


def pdf_document(text: str) -> dict:
    """A PDF of two pages holding ``text``'s lines, with a breakpoint."""
    lines = text.split("\n")
    data = base64.b64encode(pdf_with_pages(lines[:1] + [" ".join(lines[1:])])).decode()
    return {"type": "document", "title": "The licence",
            "source": {"type": "base64", "media_type": "application/pdf", "data": data},
            "cache_control": {"type": "ephemeral"}}


def test_a_pdf_is_read_and_cached_and_a_hit_answers_as_the_cold_run(client):
    content = [pdf_document(document(150)), {"type": "text", "text": "Who wrote this licence?"}]
    ask = dict(model="claude-sonnet-4-6", max_tokens=8, extra_body=GREEDY,
               messages=[{"role": "user", "content": content}])
    cold = client.messages.create(**ask)
    hit = client.messages.create(**ask)
    assert cold.usage.cache_creation_input_tokens > 128
    assert hit.usage.cache_read_input_tokens == cold.usage.cache_creation_input_tokens
    assert [b.text for b in hit.content] == [b.text for b in cold.content]
    counted = client.messages.count_tokens(model=ask["model"], messages=ask["messages"])
    assert counted.input_tokens == total_input(hit.usage)


def test_search_results_and_text_documents_inside_tool_results_are_answered(client):
    tool = {"name": "search", "input_schema": {"type": "object", "properties": {
        "query": {"type": "string"}}, "required": ["query"]}}
    messages = [
        {"role": "user", "content": "What does the handbook say about holidays?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "search",
                                           "input": {"query": "holidays"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [
            {"type": "search_result", "source": "https://intranet/handbook#leave",
             "title": "Leave", "content": [{"type": "text", "text": "Staff get 25 days."}],
             "citations": {"enabled": True}},
            {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                            "data": "Public holidays are extra."}}]}]}]
    reply = client.messages.create(model="claude-sonnet-4-6", max_tokens=8, tools=[tool],
                                   messages=messages, extra_body=GREEDY)
    assert reply.stop_reason in ("end_turn", "max_tokens", "tool_use")
    plain = [{"role": "user", "content": "x"}]
    assert client.messages.count_tokens(model="claude-sonnet-4-6", tools=[tool],
                                        messages=messages).input_tokens > \
        client.messages.count_tokens(model="claude-sonnet-4-6", tools=[tool],
                                     messages=plain).input_tokens + 10


def test_an_image_is_a_400_naming_it_and_the_server_serves_on(client):
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model="claude-sonnet-4-6", max_tokens=4, messages=[
            {"role": "user", "content": [{"type": "text", "text": "What is in it?"},
                                         {"type": "image", "source": PNG}]}])
    assert err.value.body["error"]["type"] == "invalid_request_error"
    assert err.value.body["error"]["message"].startswith(
        "messages.0.content.1: image blocks are not supported")
    reply = client.messages.create(model="claude-sonnet-4-6", max_tokens=2,
                                   messages=[{"role": "user", "content": "Hello"}])
    assert reply.usage.output_tokens > 0


@pytest.fixture(scope="module")
def placeholder_server(server_logs):
    srv = start_server(server_logs, "images-placeholder",
                       ["--images", "placeholder", "--context-window", "1024"])
    yield srv
    srv.stop()


def test_with_placeholders_a_screenshot_in_a_tool_result_does_not_stop_the_session(
        placeholder_server):
    client = anthropic.Anthropic(base_url=placeholder_server.base_url, api_key=KEY_A,
                                 max_retries=0, timeout=120)
    tool = {"name": "screenshot", "input_schema": {"type": "object", "properties": {}}}
    messages = [
        {"role": "user", "content": "Take a screenshot and tell me what you see."},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1",
                                           "name": "screenshot", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": [{"type": "image", "source": PNG}]}]}]
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=8, tools=[tool],
                                messages=messages, extra_body=GREEDY) as stream:
        final = stream.get_final_message()
    assert final.usage.input_tokens > 0 and final.stop_reason is not None
    chat = openai.OpenAI(base_url=f"{placeholder_server.base_url}/v1", api_key=KEY_A,
                         max_retries=0, timeout=120)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    completion = chat.chat.completions.create(
        model="claude-sonnet-4-6", max_tokens=4, temperature=0,
        messages=[{"role": "user", "content": [{"type": "text", "text": "Describe:"}, image]}])
    assert completion.choices[0].finish_reason in ("stop", "length")
