"""A model that thinks, through the real server and the SDK: a random-weight model from
``bench/random_model.py`` whose chat template opens a ``<think>`` section in its generation
prompt (as DeepSeek-R1 distills' do), so all it writes is thinking until ``</think>``.
Its thinking streams as a thinking block, signed; sent back it is accepted as it was, and
a tampered one is a 400."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anthropic
import pytest
from e2e_helpers import GREEDY, KEY_A, start_server, total_input

RANDOM_MODEL = Path(__file__).parents[2] / "bench" / "random_model.py"
# opens the thinking for the reply; earlier replies are shown as they were written
R1_STYLE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n"
            "{% endif %}{# a reply ends its thinking with </think> #}")


@pytest.fixture(scope="module")
def thinking_server(server_logs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("thinking-model")
    (folder / "template.jinja").write_text(R1_STYLE)
    subprocess.run([sys.executable, str(RANDOM_MODEL), str(folder / "model"), "--shape", "tiny",
                    "--chat-template", str(folder / "template.jinja")],
                   check=True, capture_output=True)
    srv = start_server(server_logs, "thinking", [
        "--model", str(folder / "model"), "--kv-cache-tokens", "16384",
        "--thinking-key-file", str(folder / "thinking.key")])
    yield srv
    srv.stop()


@pytest.fixture
def client(thinking_server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=thinking_server.base_url, api_key=KEY_A, max_retries=0,
                               timeout=120)


ASK = [{"role": "user", "content": "What color is the sky?"}]


def test_a_reply_streams_its_thinking_as_a_signed_thinking_block(client):
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=12, messages=ASK,
                                thinking={"type": "adaptive"}, extra_body=GREEDY) as stream:
        kinds = [event.delta.type for event in stream if event.type == "content_block_delta"]
        final = stream.get_final_message()
    assert "thinking_delta" in kinds and kinds[-1] == "signature_delta"
    [block] = final.content  # cut off by max_tokens while thinking: the block is closed, signed
    assert block.type == "thinking" and block.thinking and block.signature
    assert final.stop_reason == "max_tokens"
    counted = client.messages.count_tokens(model="claude-sonnet-4-6", messages=ASK,
                                           thinking={"type": "adaptive"})
    assert counted.input_tokens == total_input(final.usage)


def follow_up(thinking: str, signature: str) -> list[dict]:
    return [*ASK, {"role": "assistant", "content": [
        {"type": "thinking", "thinking": thinking, "signature": signature},
        {"type": "text", "text": "Blue."}]}, {"role": "user", "content": "Why?"}]


def test_thinking_sent_back_is_accepted_and_a_tampered_one_is_a_400(client):
    first = client.messages.create(model="claude-sonnet-4-6", max_tokens=8, messages=ASK,
                                   thinking={"type": "adaptive"}, extra_body=GREEDY)
    [block] = first.content
    again = client.messages.create(model="claude-sonnet-4-6", max_tokens=4,
                                   messages=follow_up(block.thinking, block.signature),
                                   thinking={"type": "adaptive"}, extra_body=GREEDY)
    assert again.content[0].type == "thinking"
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model="claude-sonnet-4-6", max_tokens=4,
                               messages=follow_up(block.thinking + " (edited)", block.signature),
                               thinking={"type": "adaptive"})
    assert err.value.body["error"]["message"].startswith(
        "messages.1.content.0: Invalid `signature` in `thinking` block")


def test_omitted_display_sends_no_thinking_text_and_its_signature_carries_it_back(client):
    shown = client.messages.create(model="claude-sonnet-4-6", max_tokens=8, messages=ASK,
                                   thinking={"type": "adaptive"}, extra_body=GREEDY)
    omitted = client.messages.create(model="claude-sonnet-4-6", max_tokens=8, messages=ASK,
                                     thinking={"type": "adaptive", "display": "omitted"},
                                     extra_body=GREEDY)
    assert omitted.content[0].thinking == "" and omitted.content[0].signature
    with_text = client.messages.count_tokens(
        model="claude-sonnet-4-6", messages=follow_up(shown.content[0].thinking,
                                                      shown.content[0].signature))
    without = client.messages.count_tokens(
        model="claude-sonnet-4-6", messages=follow_up("", omitted.content[0].signature))
    assert with_text.input_tokens == without.input_tokens  # greedy: the same thinking


def test_without_thinking_the_reply_answers_at_once(client):
    reply = client.messages.create(model="claude-sonnet-4-6", max_tokens=4, messages=ASK,
                                   extra_body=GREEDY)
    assert [b.type for b in reply.content] == ["text"]
