"""A thinking model through the message service: the prompt switches its thinking on or
off, the reply's think section is a signed thinking block on the wire, and thinking sent
back is checked, restored and rendered (a chat template of its own stands in for Qwen3's)."""
from __future__ import annotations

import json

import pytest

from preheat.engine.output import CacheUsage, Finished, Started, StopReason, TextDelta
from preheat.loader.embedded import embedded_model_path
from preheat.server.cache_policy import CachePolicy
from preheat.server.diagnostics import DiagnosticsStore
from preheat.server.errors import InvalidRequestError
from preheat.server.message_sse import message_sse
from preheat.server.messages import MessageService
from preheat.server.model_registry import ModelRegistry
from preheat.server.protocol import MessagesRequest
from preheat.server.reasoning import ReasoningFormat, ThinkingSigner, ThinkingSupport
from preheat.server.whole_reply import whole_reply
from preheat.tokenizer.tokenizer import Tokenizer
from scripted_stream import ScriptedEngine, ScriptedStream

# ChatML whose generation prompt closes an empty thinking section when thinking is off
THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
    "{% endif %}{% endif %}")
USAGE = CacheUsage(prompt_tokens=30, cache_read_tokens=0, cache_write_tokens=0)
SIGNER = ThinkingSigner(b"s" * 32)
ASK = [{"role": "user", "content": "Sky colour?"}]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    embedded = Tokenizer.from_gguf(embedded_model_path())
    return Tokenizer(embedded.backend, eos_token_id=embedded.eos_token_id,
                     bos_token_id=embedded.bos_token_id, chat_template=THINKING_TEMPLATE)


def service(tokenizer, *events, thinking=True) -> MessageService:
    support = ThinkingSupport(ReasoningFormat.of(tokenizer), SIGNER) if thinking else None
    return MessageService(engine=ScriptedEngine(ScriptedStream(*events), tokenizer),
                          registry=ModelRegistry("smol", 8192),
                          policy=CachePolicy(1024, 300.0, 3600.0), diagnostics=DiagnosticsStore(8),
                          ping_interval=60, thinking=support)


def body(**fields) -> MessagesRequest:
    return MessagesRequest.model_validate({"model": "smol", "max_tokens": 64, "messages": ASK,
                                           **fields})


def reply_events(text: str):
    return (Started(USAGE), TextDelta(text, 5), Finished(StopReason.EOS, None, USAGE, 5, [], text))


async def prompt_text(tokenizer, **fields) -> str:
    prepared = await service(tokenizer).prepare(body(**fields), "ns", "req")
    return tokenizer.decode(prepared.prompt.token_ids, skip_special_tokens=False)


def test_the_template_is_read_as_a_switchable_reasoning_format(tokenizer):
    assert ReasoningFormat.of(tokenizer) == ReasoningFormat(switchable=True, opened_by_prompt=False)


async def test_thinking_is_switched_on_only_when_asked(tokenizer):
    assert (await prompt_text(tokenizer, thinking={"type": "adaptive"})).endswith(
        "<|im_start|>assistant\n")
    for off in ({}, {"thinking": {"type": "disabled"}}):
        assert (await prompt_text(tokenizer, **off)).endswith("<think>\n\n</think>\n\n")


async def test_a_streamed_reply_thinks_in_a_signed_thinking_block_then_answers(tokenizer):
    svc = service(tokenizer, *reply_events("<think>\nShort waves scatter.\n</think>\n\nBlue."))
    prepared = await svc.prepare(body(stream=True, thinking={"type": "adaptive"}), "ns", "req")
    frames = [f.decode() async for f in message_sse(await svc.run(prepared), "req")]
    events = [(f.split("\n")[0][7:], json.loads(f.split("\n")[1][6:])) for f in frames]
    deltas = [(e["index"], e["delta"]["type"]) for name, e in events
              if name == "content_block_delta"]
    assert deltas[0] == (0, "thinking_delta") and (0, "signature_delta") in deltas
    assert deltas[-1] == (1, "text_delta")
    starts = [e["content_block"]["type"] for name, e in events if name == "content_block_start"]
    assert starts == ["thinking", "text"]
    thinking = "".join(e["delta"]["thinking"] for name, e in events
                       if name == "content_block_delta" and e["delta"]["type"] == "thinking_delta")
    signature = next(e["delta"]["signature"] for name, e in events
                     if name == "content_block_delta" and e["delta"]["type"] == "signature_delta")
    assert thinking == "Short waves scatter." and SIGNER.read(signature) == thinking


async def test_a_whole_reply_holds_the_thinking_block_first(tokenizer):
    svc = service(tokenizer, *reply_events("<think>plan</think>Blue."))
    prepared = await svc.prepare(body(thinking={"type": "enabled", "budget_tokens": 1024},
                                      max_tokens=2000), "ns", "req")
    message = (await whole_reply(await svc.run(prepared), lambda: _connected())).message
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "plan" and message.content[1].text == "Blue."


async def _connected() -> bool:
    return True


def history(thinking: str, signature: str) -> list[dict]:
    return [*ASK, {"role": "assistant", "content": [
        {"type": "thinking", "thinking": thinking, "signature": signature},
        {"type": "text", "text": "Blue."}]}, {"role": "user", "content": "Why?"}]


async def test_thinking_sent_back_is_checked_and_rendered_where_it_was(tokenizer):
    signature = SIGNER.sign("Short waves scatter.")
    text = await prompt_text(tokenizer, messages=history("Short waves scatter.", signature))
    assert "<|im_start|>assistant\n<think>\nShort waves scatter.\n</think>\n\nBlue.<|im_end|>" in text
    # display "omitted" sent it back empty: the signature holds it
    assert await prompt_text(tokenizer, messages=history("", signature)) == text


@pytest.mark.parametrize("thinking, signature", [
    ("Long waves scatter.", SIGNER.sign("Short waves scatter.")),  # the text was changed
    ("Short waves scatter.", ThinkingSigner(b"o" * 32).sign("Short waves scatter.")),  # not ours
    ("Short waves scatter.", "EqQBCkYICBABGAIiQL"),  # another API's signature
])
async def test_a_thinking_block_this_server_did_not_sign_is_a_400(tokenizer, thinking, signature):
    with pytest.raises(InvalidRequestError, match=r"^messages\.1\.content\.0: Invalid `signature`"):
        await prompt_text(tokenizer, messages=history(thinking, signature))


async def test_a_model_without_a_reasoning_format_leaves_thinking_out_unchecked(tokenizer):
    svc = service(tokenizer, thinking=False)
    prepared = await svc.prepare(body(messages=history("anything", "EqQB")), "ns", "req")
    text = tokenizer.decode(prepared.prompt.token_ids, skip_special_tokens=False)
    assert "anything" not in text and prepared.thinking is None


@pytest.mark.parametrize("fields, message", [
    ({"tool_choice": {"type": "any"},
      "tools": [{"name": "t", "input_schema": {"type": "object"}}]},
     "thinking may not be enabled when tool_choice forces tool use"),
    ({"messages": [*ASK, {"role": "assistant", "content": "It is"}]},
     "cannot be combined with thinking"),
    ({"output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}},
     "thinking cannot be combined with output_config.format"),
])
async def test_what_thinking_cannot_be_combined_with_is_a_400(tokenizer, fields, message):
    with pytest.raises(InvalidRequestError, match=message):
        await service(tokenizer).prepare(body(thinking={"type": "adaptive"}, **fields), "ns", "r")


@pytest.mark.parametrize("thinks", [True, False])
async def test_max_tokens_must_exceed_the_thinking_budget_as_on_anthropic(tokenizer, thinks):
    with pytest.raises(InvalidRequestError, match="max_tokens must be greater than"):
        await service(tokenizer, thinking=thinks).prepare(
            body(max_tokens=1024, thinking={"type": "enabled", "budget_tokens": 1024}), "ns", "r")
