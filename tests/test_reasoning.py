"""Reasoning models' thinking: the format read from a chat template, the reply split into
a thinking block and the answer, and signatures that verify (server/reasoning.py,
server/thinking_parser.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from preheat.server.reasoning import PLAIN, ReasoningFormat, ThinkingSigner, thinking_text
from preheat.server.reply_parser import (BlockStart, BlockStop, JsonPiece, ReplyParser,
                                         SignaturePiece, TextPiece, ThinkingPiece)
from preheat.server.thinking_parser import ThinkingReplyParser
from preheat.server.tool_format import HERMES

SIGNER = ThinkingSigner(b"k" * 32)


def parser(tool_calls=False, opened=False, show=True) -> ThinkingReplyParser:
    return ThinkingReplyParser(ReplyParser(tool_calls=tool_calls), SIGNER, opened=opened,
                               show=show)


def run(p: ThinkingReplyParser, *pieces: str) -> list:
    events = p.begin()
    for piece in pieces:
        events += p.feed(piece)
    return events + p.finish()


def streamed(events, kind, attr) -> dict[int, str]:
    out: dict[int, str] = {}
    for e in events:
        if isinstance(e, kind):
            out[e.index] = out.get(e.index, "") + getattr(e, attr)
    return out


# ---- replies ---------------------------------------------------------------------------


@pytest.mark.parametrize("pieces", [
    ["<think>\nThe sky scatters blue light.\n</think>\n\nBlue."],
    ["<th", "ink>", "\n", "The sky scatters ", "blue light.", "\n", "</th", "ink>", "\n\n", "Blue."],
    ["  <think>The sky scatters blue light. \n</think>Blue."],
])
def test_a_think_section_is_a_signed_thinking_block_and_the_rest_is_the_answer(pieces):
    p = parser()
    events = run(p, *pieces)
    assert p.content() == [
        {"type": "thinking", "thinking": "The sky scatters blue light.",
         "signature": SIGNER.sign("The sky scatters blue light.")},
        {"type": "text", "text": "Blue."}]
    # what streams adds up to the blocks, in Anthropic's order
    assert streamed(events, ThinkingPiece, "thinking") == {0: "The sky scatters blue light."}
    assert streamed(events, TextPiece, "text") == {1: "Blue."}
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "BlockStart" and kinds.index("SignaturePiece") < kinds.index("BlockStop")
    assert [e.index for e in events if isinstance(e, (BlockStart, BlockStop))] == [0, 0, 1, 1]


def test_whitespace_inside_the_thinking_streams_once_more_thought_follows():
    p = parser()
    events = run(p, "<think>a", "\n\n", "b", "\n", "</think>x")
    assert streamed(events, ThinkingPiece, "thinking") == {0: "a\n\nb"}


def test_a_reply_without_a_think_section_is_all_answer():
    p = parser()
    run(p, "Just ", "blue.")
    assert p.content() == [{"type": "text", "text": "Just blue."}]


def test_when_the_prompt_opened_the_thinking_the_reply_starts_inside_it():
    p = parser(opened=True)
    events = run(p, "Rayleigh.", "</think>", "Blue.")
    assert [b["type"] for b in p.content()] == ["thinking", "text"]
    assert isinstance(events[0], BlockStart) and events[0].block["type"] == "thinking"


def test_a_reply_cut_off_while_thinking_is_one_signed_thinking_block():
    p = parser(opened=True)
    run(p, "still thinking ")
    assert p.content() == [{"type": "thinking", "thinking": "still thinking",
                            "signature": SIGNER.sign("still thinking")}]


def test_omitted_display_streams_no_thinking_and_the_signature_still_carries_it():
    p = parser(show=False)
    events = run(p, "<think>secret plan</think>Done.")
    assert not any(isinstance(e, ThinkingPiece) for e in events)
    thinking, text = p.content()
    assert thinking["thinking"] == "" and SIGNER.read(thinking["signature"]) == "secret plan"
    assert text == {"type": "text", "text": "Done."}


def test_tool_calls_after_the_thinking_are_read_as_calls():
    p = parser(tool_calls=True)
    call = HERMES.render("weather", {"city": "Oslo"})
    events = run(p, "<think>Need weather.</think>\n", call)
    assert [b["type"] for b in p.content()] == ["thinking", "tool_use"]
    assert p.has_tool_use and p.content()[1]["input"] == {"city": "Oslo"}
    assert all(e.index == 1 for e in events if isinstance(e, JsonPiece))


# ---- signatures --------------------------------------------------------------------------


def test_a_signature_reads_back_its_thinking_and_nothing_else_verifies():
    signature = SIGNER.sign("step one")
    assert SIGNER.read(signature) == "step one"
    assert ThinkingSigner(b"x" * 32).read(signature) is None  # another server's key
    tampered = signature[:-4] + ("AAAA" if signature[-4:] != "AAAA" else "BBBB")
    assert SIGNER.read(tampered) is None
    assert SIGNER.read("not base64 at all!") is None
    assert SIGNER.read("") is None


def test_the_key_is_kept_so_signatures_survive_a_restart(tmp_path: Path):
    key = tmp_path / "keys" / "thinking.key"
    signature = ThinkingSigner.from_file(key).sign("kept")
    assert key.stat().st_mode & 0o777 == 0o600
    assert ThinkingSigner.from_file(key).read(signature) == "kept"


# ---- formats -----------------------------------------------------------------------------


class Template:
    def __init__(self, source: str, generation: str):
        self.chat_template, self.generation = source, generation

    def render_chat(self, messages, *, tools=None, add_generation_prompt=True, **_):
        return "<user>?</user>" + self.generation


QWEN3_LIKE = "{% if enable_thinking is defined %}<think>\n\n</think>{% endif %} ... </think>"
R1_LIKE = "{{ '<assistant><think>\\n' }} ... </think>"


def test_formats_are_read_from_the_chat_template():
    assert ReasoningFormat.of(Template("{{ messages }}", "<assistant>")) is None
    qwen = ReasoningFormat.of(Template(QWEN3_LIKE, "<assistant>"))
    assert qwen == ReasoningFormat(switchable=True, opened_by_prompt=False)
    r1 = ReasoningFormat.of(Template(R1_LIKE, "<assistant><think>\n"))
    assert r1 == ReasoningFormat(switchable=False, opened_by_prompt=True)


def test_how_a_prompt_ends_with_and_without_thinking():
    qwen = ReasoningFormat(switchable=True, opened_by_prompt=False)
    assert qwen.generation(True).template_vars == {"enable_thinking": True}
    assert qwen.generation(False).template_vars == {"enable_thinking": False}
    r1 = ReasoningFormat(switchable=False, opened_by_prompt=True)
    assert r1.generation(True).opened and r1.generation(True).suffix == ""
    assert r1.generation(False).suffix == "</think>\n\n"  # an empty thinking, closed
    plain = ReasoningFormat(switchable=False, opened_by_prompt=False)
    assert plain.generation(False).suffix == "<think>\n\n</think>\n\n"
    assert PLAIN.suffix == "" and thinking_text("t") == "<think>\nt\n</think>\n"


def test_a_whole_reply_fed_at_once_without_begin_starts_inside_an_opened_thinking():
    p = parser(opened=True)
    p.feed("Rayleigh.</think>Blue.")
    p.finish()
    assert [b["type"] for b in p.content()] == ["thinking", "text"]
