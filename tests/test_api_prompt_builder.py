"""Prompt building: Anthropic request -> ChatML prompt tokens, and where every block ends."""
from __future__ import annotations

import pytest

from preheat.loader.embedded import embedded_model_path
from preheat.server.errors import InvalidRequestError
from preheat.server.prompt_builder import TOOLS_HEADER, PromptBlock, build_prompt, continue_prompt
from preheat.server.protocol import MessagesRequest
from preheat.server.tool_format import HERMES, LLAMA3_JSON
from preheat.tokenizer.tokenizer import Tokenizer

CC = {"type": "ephemeral"}


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_gguf(embedded_model_path())


def request(**fields) -> MessagesRequest:
    return MessagesRequest.model_validate({"model": "m", "max_tokens": 5, **fields})


def text_before(tokenizer, prompt, block) -> str:
    return tokenizer.decode(prompt.token_ids[:block.end], skip_special_tokens=False)


def test_plain_conversation_renders_chatml_with_the_default_system_prompt(tokenizer):
    prompt = build_prompt(request(messages=[{"role": "user", "content": "Hello"}]), tokenizer)
    assert prompt.text.startswith("<|im_start|>system\n")
    assert prompt.text.endswith("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n")
    assert prompt.token_ids == tokenizer.encode(prompt.text)
    assert not prompt.prefill


def test_every_block_ends_right_after_its_text(tokenizer):
    prompt = build_prompt(request(
        tools=[{"name": "get_weather", "description": "Weather now", "input_schema": {"type": "object"},
                "cache_control": CC}],
        system=[{"type": "text", "text": "You are terse."},
                {"type": "text", "text": "Answer in French.", "cache_control": CC}],
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "First part."},
            {"type": "text", "text": "Second part?", "cache_control": CC}]}],
    ), tokenizer)
    sections = [b.section for b in prompt.blocks]
    assert sections == ["tools", "system", "system", "messages", "messages"]
    before = [text_before(tokenizer, prompt, b) for b in prompt.blocks]
    assert before[0].endswith('"input_schema": {"type": "object"}}')
    assert before[1].endswith("You are terse.")
    assert before[2].endswith("Answer in French.")
    assert before[3].endswith("<|im_start|>user\nFirst part.")
    assert before[4].endswith("First part.\nSecond part?")
    assert [b.end for b in prompt.blocks] == sorted(b.end for b in prompt.blocks)
    assert [b.cache_control is not None for b in prompt.blocks] == [True, False, True, False, True]


def test_tools_come_first_in_the_system_turn(tokenizer):
    prompt = build_prompt(request(
        tools=[{"name": "a", "input_schema": {}}, {"name": "b", "input_schema": {}}],
        tool_choice={"type": "tool", "name": "b"},
        system="Be kind.", messages=[{"role": "user", "content": "hi"}]), tokenizer)
    system_turn = prompt.text.split("<|im_end|>")[0]
    assert system_turn.startswith(f"<|im_start|>system\n{TOOLS_HEADER}\n")
    assert system_turn.index('"name": "a"') < system_turn.index('"name": "b"')
    assert system_turn.endswith("You must use the tool named b.\nBe kind.")
    assert prompt.tool_choice_text == "You must use the tool named b."
    assert prompt.system_text == "Be kind."


def test_template_text_is_never_mistaken_for_a_block(tokenizer):
    # "You are" also occurs in the template's default system prompt, "user" in the role header.
    for content in ("You are", "user", "system"):
        prompt = build_prompt(request(messages=[{"role": "user", "content": [
            {"type": "text", "text": content, "cache_control": CC}]}]), tokenizer)
        (block,) = prompt.blocks
        assert text_before(tokenizer, prompt, block).endswith(f"<|im_start|>user\n{content}")


def test_final_assistant_turn_is_a_prefill(tokenizer):
    prompt = build_prompt(request(messages=[
        {"role": "user", "content": "Pick a letter"},
        {"role": "assistant", "content": "The letter is"}]), tokenizer)
    assert prompt.prefill
    assert prompt.text.endswith("<|im_start|>assistant\nThe letter is")
    assert text_before(tokenizer, prompt, prompt.blocks[-1]) == prompt.text


def test_consecutive_turns_of_one_role_are_merged(tokenizer):
    prompt = build_prompt(request(messages=[
        {"role": "user", "content": "one"}, {"role": "user", "content": "two"}]), tokenizer)
    assert "<|im_start|>user\none\ntwo<|im_end|>" in prompt.text
    assert [t.content for t in prompt.turns] == ["one\ntwo"]


def test_tool_use_renders_as_the_call_the_model_writes_and_results_as_text(tokenizer):
    body = request(tools=[{"name": "weather", "input_schema": {"type": "object"}}], messages=[
        {"role": "user", "content": "weather in Oslo?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "weather",
                                           "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "is_error": True,
                                      "content": [{"type": "text", "text": "timeout"}]}]}])
    prompt = build_prompt(body, tokenizer)
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo"}}'
            '\n</tool_call><|im_end|>') in prompt.text
    assert '<tool_result tool_use_id="t1" is_error="true">timeout</tool_result>' in prompt.text
    llama3 = build_prompt(body, tokenizer, LLAMA3_JSON)
    assert '{"name": "weather", "parameters": {"city": "Oslo"}}<|im_end|>' in llama3.text
    assert '{"name": "<tool name>", "parameters": <input object>}' in llama3.text


def test_a_turn_boundary_is_a_stable_prefix_of_the_next_turn(tokenizer):
    """The breakpoint of turn one is a token prefix of turn two, so turn two can read it."""
    joke = {"type": "text", "text": "Tell me a joke.", "cache_control": CC}
    history = [{"role": "user", "content": [joke]}]
    first = build_prompt(request(messages=history), tokenizer)
    second = build_prompt(request(messages=history + [
        {"role": "assistant", "content": "Why did the chicken cross the road?"},
        {"role": "user", "content": "Why?"}]), tokenizer)
    end = first.blocks[-1].end
    assert second.token_ids[:end] == first.token_ids[:end]
    assert second.blocks[0].end == end


@pytest.mark.parametrize("messages, expected", [
    ([{"role": "user", "content": ""}],
     "messages.0: all messages must have non-empty content except for the optional final assistant message"),
    ([{"role": "user", "content": [{"type": "text", "text": "  "}]}],
     "messages.0.content.0: text content blocks must contain non-whitespace text"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure "}],
     "messages.1: final assistant content cannot end with trailing whitespace"),
])
def test_malformed_conversations_are_rejected(tokenizer, messages, expected):
    with pytest.raises(InvalidRequestError, match="^" + expected.replace(".", r"\.")):
        build_prompt(request(messages=messages), tokenizer)


def test_an_empty_final_assistant_turn_is_allowed(tokenizer):
    prompt = build_prompt(request(messages=[{"role": "user", "content": "hi"},
                                            {"role": "assistant", "content": ""}]), tokenizer)
    assert prompt.text.endswith("<|im_start|>assistant\n")


def test_whitespace_only_system_block_is_rejected(tokenizer):
    with pytest.raises(InvalidRequestError, match="^system.0: text content blocks"):
        build_prompt(request(system=[{"type": "text", "text": " "}],
                             messages=[{"role": "user", "content": "hi"}]), tokenizer)


def test_a_thread_continue_keeps_the_stored_ids_and_tokenizes_only_the_new_turn(tokenizer):
    system = "Be brief."
    first = build_prompt(request(system=system, messages=[{"role": "user", "content": "Hi"}]),
                         tokenizer)
    whole_request = request(system=system, messages=[
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"},
        {"role": "user", "content": [{"type": "text", "text": "More", "cache_control": CC}]}])
    whole = build_prompt(whole_request, tokenizer)
    # the reply as generated, one token per character: not how its text would tokenize
    generated = [tokenizer.encode(ch)[0] for ch in "Hello there"]
    history = first.token_ids + generated
    history_blocks = [*first.blocks, PromptBlock("messages", len(history), None)]
    threaded = continue_prompt(whole_request, tokenizer, HERMES, history, history_blocks)
    assert threaded.token_ids[:len(history)] == history
    assert tokenizer.decode(threaded.token_ids) == tokenizer.decode(whole.token_ids)
    assert threaded.token_ids != whole.token_ids  # the stored ids won over re-tokenizing
    new = len(whole.token_ids) - whole.blocks[-2].end  # tokens after the reply
    assert threaded.blocks[-1].end == len(history) + new - (len(whole.token_ids)
                                                            - whole.blocks[-1].end)
    assert threaded.blocks[-1].cache_control == whole.blocks[-1].cache_control
    assert len(threaded.token_ids) == len(history) + new


def test_a_thread_continue_checks_its_new_messages_not_the_stored_replies(tokenizer):
    first = build_prompt(request(messages=[{"role": "user", "content": "Hi"}]), tokenizer)
    reply = [tokenizer.encode(ch)[0] for ch in "  "]  # the model answered with whitespace
    history = first.token_ids + reply
    history_blocks = [*first.blocks, PromptBlock("messages", len(history), None)]

    def turn(new: str) -> dict:
        return request(messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "},
                                 {"role": "user", "content": new}])

    threaded = continue_prompt(turn("More"), tokenizer, HERMES, history, history_blocks)
    assert threaded.token_ids[:len(history)] == history
    with pytest.raises(InvalidRequestError, match="^messages.1.content.0: text content blocks"):
        build_prompt(turn("More"), tokenizer)  # sent whole, the same history is refused
    with pytest.raises(InvalidRequestError, match="^messages.2.content.0: text content blocks"):
        continue_prompt(turn(" "), tokenizer, HERMES, history, history_blocks)


def test_blocks_stay_right_where_a_template_trims_some_contents(tokenizer):
    import copy

    from preheat.tokenizer.chat_template import ChatTemplate
    trimming = copy.copy(tokenizer)  # Llama 3's templates trim every message's content
    trimming._template = ChatTemplate(
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | trim }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    prompt = build_prompt(request(messages=[
        {"role": "user", "content": [{"type": "text", "text": " padded ", "cache_control": CC}]},
        {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": [{"type": "text", "text": "Next", "cache_control": CC}]}]), trimming)
    padded, sure, nxt = prompt.blocks
    # the trimmed content can't be found: its block keeps the last known end (caches less);
    # the turns after it are found again
    assert text_before(trimming, prompt, sure).endswith("<|im_start|>assistant\nSure.")
    assert text_before(trimming, prompt, nxt).endswith("<|im_start|>user\nNext")
    assert padded.end <= sure.end


class CountingTokenizer:
    """The real tokenizer, counting how many characters it was asked to tokenize."""

    def __init__(self, real: Tokenizer):
        self.real, self.chars = real, 0
        self.max_token_chars = real.max_token_chars

    def encode_prompt(self, text, *, bos=True):
        self.chars += len(text)
        return self.real.encode_prompt(text, bos=bos)

    def render_chat(self, *args, **kwargs):
        return self.real.render_chat(*args, **kwargs)


def test_a_prompt_sure_to_be_over_the_limit_is_refused_before_it_is_tokenized(tokenizer):
    counting = CountingTokenizer(tokenizer)
    huge = request(messages=[{"role": "user", "content": "word " * 200_000}])
    with pytest.raises(InvalidRequestError, match="prompt is too long: at least"):
        build_prompt(huge, counting, max_tokens=2048)
    assert counting.chars == 0
    exact = build_prompt(huge, counting)  # counting tokens has no limit
    assert len(exact.token_ids) > 200_000 and counting.chars > 1_000_000
    small = request(messages=[{"role": "user", "content": "word " * 100}])
    assert build_prompt(small, counting, max_tokens=2048).token_ids == build_prompt(small, tokenizer).token_ids


def with_template(tokenizer, source: str):
    import copy

    from preheat.tokenizer.chat_template import ChatTemplate
    other = copy.copy(tokenizer)
    other._template = ChatTemplate(source)
    return other


CLAUDE_CODE_TAIL = [{"role": "user", "content": "List the files."},
                    {"role": "system", "content": [{"type": "text", "text": "Be brief.",
                                                    "cache_control": CC}]}]


def test_a_system_message_is_the_templates_system_turn_at_its_place(tokenizer):
    prompt = build_prompt(request(system="You code.", messages=CLAUDE_CODE_TAIL), tokenizer)
    assert prompt.text.endswith("<|im_start|>user\nList the files.<|im_end|>\n"
                                "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>assistant\n")
    last = prompt.blocks[-1]
    assert last.section == "messages" and last.cache_control is not None
    assert text_before(tokenizer, prompt, last).endswith("<|im_start|>system\nBe brief.")
    assert not prompt.prefill


def test_a_conversation_opening_with_a_system_message_continues_the_system_turn(tokenizer):
    prompt = build_prompt(request(system="One.", messages=[
        {"role": "system", "content": "Two."}, {"role": "user", "content": "Hi"}]), tokenizer)
    assert prompt.text.startswith("<|im_start|>system\nOne.\nTwo.<|im_end|>\n<|im_start|>user\nHi")


# Templates that take a system message first only: one drops the rest, one refuses them.
FIRST_SYSTEM_ONLY = (
    "{% for m in messages %}{% if m.role == 'system' and loop.first %}[SYS]{{ m.content }}[/SYS]"
    "{% elif m.role != 'system' %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
REFUSING = (
    "{% for m in messages %}{% if m.role == 'system' and not loop.first %}"
    "{{ raise_exception('system only first') }}{% endif %}<{{ m.role }}>{{ m.content }}"
    "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")


@pytest.mark.parametrize("source", [FIRST_SYSTEM_ONLY, REFUSING])
def test_a_template_without_system_turns_inside_gets_a_delimited_instruction(tokenizer, source):
    other = with_template(tokenizer, source)
    prompt = build_prompt(request(system="You code.", messages=CLAUDE_CODE_TAIL), other)
    assert "List the files.\n<system>\nBe brief.\n</system>" in prompt.text
    assert prompt.text.endswith("<assistant>")
    assert text_before(other, prompt, prompt.blocks[-1]).endswith("<system>\nBe brief.")


def test_a_system_message_before_an_assistant_turn_folds_into_the_next_user_turn(tokenizer):
    other = with_template(tokenizer, FIRST_SYSTEM_ONLY)
    prompt = build_prompt(request(messages=[
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
        {"role": "system", "content": "Now in French."}, {"role": "user", "content": "And?"}]),
        other)
    assert "<assistant>Hello</assistant><user><system>\nNow in French.\n</system>\nAnd?</user>" \
        in prompt.text


def test_the_billing_header_and_earlier_thinking_are_not_model_input(tokenizer):
    from preheat.server.documents import DocumentReader
    from preheat.server.model_input import model_input

    def claude_code(nonce: str) -> MessagesRequest:
        return request(system=[
            {"type": "text", "text": f"x-anthropic-billing-header: cc_version=2.1.197; cch={nonce};"},
            {"type": "text", "text": "You code.", "cache_control": CC}], messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Say hello.", "signature": "sig"},
                {"type": "redacted_thinking", "data": "opaque"}, {"type": "text", "text": "Hello"}]},
            {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "x"}]},
            {"role": "user", "content": "Bye"}])
    plain = request(system=[{"type": "text", "text": "You code.", "cache_control": CC}], messages=[
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"}])
    one, other = (build_prompt(model_input(claude_code(n), DocumentReader()), tokenizer) for n in ("a1", "b2"))
    assert one.token_ids == other.token_ids == build_prompt(plain, tokenizer).token_ids
    assert "billing" not in one.text and "Say hello" not in one.text


def test_a_billing_header_with_a_breakpoint_stays_a_block(tokenizer):
    from preheat.server.documents import DocumentReader
    from preheat.server.model_input import model_input
    body = request(system=[{"type": "text", "text": "x-anthropic-billing-header: a;",
                            "cache_control": CC}], messages=[{"role": "user", "content": "Hi"}])
    assert model_input(body, DocumentReader()) is body


def test_the_preamble_ends_where_requests_sharing_a_system_prompt_part(tokenizer):
    system = "You are terse. Answer in French."
    a, b = (build_prompt(request(system=system, messages=[{"role": "user", "content": q}]), tokenizer)
            for q in ("Where is Paris?", "How old is the Moon?"))
    (end,) = a.preamble_end()
    assert b.preamble_end() == (end,) and a.token_ids[:end] == b.token_ids[:end]
    assert text_before(tokenizer, a, a.blocks[0]).endswith(system)
    assert a.token_ids[end] != b.token_ids[end] or a.token_ids[:end + 8] != b.token_ids[:end + 8]
    bare = build_prompt(request(messages=[{"role": "user", "content": "Hi"}]), tokenizer)
    assert bare.preamble_end() == ()  # no system block of the request's own
