"""Generated text -> content blocks, whatever pieces the text arrives in."""
import json
import random

import pytest

from preheat.server.reply_parser import BlockStart, BlockStop, JsonPiece, ReplyParser, TextPiece
from preheat.server.tool_format import HERMES, LLAMA3_JSON

CALLS = [("weather", {"city": "Oslo \"Norway\" {x}"}), ("lookup", {"q": ["a", {"b": "}"}]})]
REPLY = "I'll check both.\n" + "\n".join(HERMES.render(n, a) for n, a in CALLS)


def parse(pieces: list[str], tool_calls: bool = True, form=HERMES):
    parser = ReplyParser(tool_calls=tool_calls, form=form)
    events = parser.begin()
    for piece in pieces:
        events += parser.feed(piece)
    return parser, events + parser.finish()


def chunked(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, len(text) // 3)))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


def blocks_from_events(events) -> list[dict]:
    """What a streaming client assembles from the events alone."""
    blocks, open_ = [], set()
    for ev in events:
        if isinstance(ev, BlockStart):
            assert ev.index == len(blocks) and not open_
            blocks.append({**ev.block, "json": ""})
            open_.add(ev.index)
        elif isinstance(ev, TextPiece):
            assert ev.index in open_
            blocks[ev.index]["text"] += ev.text
        elif isinstance(ev, JsonPiece):
            assert ev.index in open_
            blocks[ev.index]["json"] += ev.partial_json
        else:
            assert isinstance(ev, BlockStop)
            open_.remove(ev.index)
    assert not open_
    for block in blocks:
        if block["type"] == "tool_use":
            block["input"] = json.loads(block["json"])
        del block["json"]
    return blocks


@pytest.mark.parametrize("form", [HERMES, LLAMA3_JSON], ids=["hermes", "llama3"])
@pytest.mark.parametrize("seed", range(20))
def test_any_chunking_gives_the_same_blocks_streamed_and_whole(seed, form):
    reply = "I'll check both.\n" + "\n".join(form.render(n, a) for n, a in CALLS)
    parser, events = parse(chunked(reply, seed), form=form)
    content = parser.content()
    assert [b["type"] for b in content] == ["text", "tool_use", "tool_use"]
    assert content[0]["text"] == "I'll check both."
    assert [(b["name"], b["input"]) for b in content[1:]] == CALLS
    streamed = blocks_from_events(events)
    assert [{k: v for k, v in b.items() if k != "id"} for b in streamed] == [
        {k: v for k, v in b.items() if k != "id"} for b in content]
    assert parser.has_tool_use


def test_text_that_only_looks_like_a_call_is_released():
    parser, events = parse(["a <tool", "_cal", "l is not <b>here</b>  "])
    assert parser.content() == [{"type": "text", "text": "a <tool_cal"
                                                         "l is not <b>here</b>  "}]
    assert not parser.has_tool_use


def test_a_plain_reply_opens_its_block_before_any_text():
    parser = ReplyParser(tool_calls=False)
    assert parser.begin() == [BlockStart(0, {"type": "text", "text": ""})]
    assert parser.feed("<tool_call>") == [TextPiece(0, "<tool_call>")]
    assert parser.finish() == [BlockStop(0)]


def test_an_empty_reply_is_one_empty_text_block():
    parser, _ = parse([])
    assert parser.content() == [{"type": "text", "text": ""}]


def test_a_call_cut_short_before_its_arguments_is_dropped():
    parser, events = parse([REPLY[:REPLY.index('"arguments"')]])
    assert [b["type"] for b in parser.content()] == ["text"]
    assert blocks_from_events(events) == parser.content()


def test_tool_use_ids_are_unique():
    parser, _ = parse([REPLY])
    ids = [b["id"] for b in parser.content() if b["type"] == "tool_use"]
    assert len(set(ids)) == 2 and all(i.startswith("toolu_") for i in ids)


def test_text_that_starts_like_a_llama3_call_but_is_not_one_stays_text():
    reply = 'Here: {"name": "Ada", "age": 36} and {"name": "x"'
    for seed in range(5):
        parser, events = parse(chunked(reply, seed), form=LLAMA3_JSON)
        assert parser.content() == [{"type": "text", "text": reply}] or parser.content() == [
            {"type": "text", "text": reply[:reply.rindex("{")].rstrip()}]
        assert blocks_from_events(events) == parser.content()
