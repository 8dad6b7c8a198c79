"""The repeat guard: a reply ends before a segment (a tool call) it already wrote."""
import pytest

from preheat.engine.detokenizer import IncrementalDetokenizer
from preheat.engine.repeat_guard import RepeatGuard
from preheat.engine.request import DistinctSegments
from preheat.server.tool_format import HERMES, LLAMA3_JSON
from tiny import ByteTokenizer

HERMES_RULE = DistinctSegments(HERMES.trigger, HERMES.separator)
LLAMA_RULE = DistinctSegments(LLAMA3_JSON.trigger, LLAMA3_JSON.separator)


def call(form, city: str, unit: str = "celsius") -> str:
    return form.render("get_weather", {"city": city, "unit": unit})


def stream(rule: DistinctSegments, text: str, piece: int = 1, stop: tuple[str, ...] = ()):
    """Push ``text`` a ``piece`` of bytes at a time; returns (released pieces, detokenizer)."""
    tok = ByteTokenizer()
    detok = IncrementalDetokenizer(tok.decode, [], stop, RepeatGuard(rule))
    ids, out = tok.encode(text), []
    for i in range(0, len(ids)):
        out.append(detok.push(ids[i]))
        if detok.repeated or detok.stop_sequence:
            break
    if not detok.repeated:
        out.append(detok.flush())
    return out, detok


@pytest.mark.parametrize("form, rule", [(HERMES, HERMES_RULE), (LLAMA3_JSON, LLAMA_RULE)])
def test_the_same_call_again_ends_the_reply_before_it(form, rule):
    first, second = call(form, "Paris"), call(form, "Paris", "fahrenheit")
    text = "Let me look.\n" + first + form.separator + second + form.separator + first + form.separator + second
    out, detok = stream(rule, text)
    assert detok.repeated and detok.text == "Let me look.\n" + first + form.separator + second
    assert "".join(out) == detok.text
    assert detok.kept_tokens == len(detok.text.encode())  # one byte a token here


@pytest.mark.parametrize("form, rule", [(HERMES, HERMES_RULE), (LLAMA3_JSON, LLAMA_RULE)])
def test_distinct_calls_all_pass_and_stream(form, rule):
    calls = [call(form, c) for c in ("Paris", "Lyon", "Paris, TX")]  # the third starts like the first
    text = form.separator.join(calls)
    out, detok = stream(rule, text)
    assert not detok.repeated and detok.text == text and "".join(out) == text
    # the first call is never held back: it streams as it comes
    assert "".join(out[:len(calls[0])]) == calls[0]


def test_a_call_is_held_back_only_while_it_could_be_a_repeat():
    first, second = call(HERMES, "Paris"), call(HERMES, "Pau")
    shared = len('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa')
    assert first[:shared] == second[:shared] != first[:shared + 1]
    text = first + "\n" + second
    out, _ = stream(HERMES_RULE, text)
    released = ["".join(out[:i + 1]) for i in range(len(text))]
    assert released[len(first) + shared] == first  # "\n" + the first call's start: held
    assert released[len(first) + shared + 1] == text[:len(first) + shared + 2]  # "u": released
    assert "".join(out) == text


def test_nested_openings_inside_a_llama_call_are_no_boundary():
    nested = LLAMA3_JSON.render("lookup", {"user": {"name": "Bob"}})
    other = LLAMA3_JSON.render("lookup", {"user": {"name": "Ann"}})
    text = nested + "\n" + other + "\n" + nested
    out, detok = stream(LLAMA_RULE, text)
    assert detok.repeated and detok.text == nested + "\n" + other


def test_with_a_stop_sequence_too():
    first = call(HERMES, "Paris")
    out, detok = stream(HERMES_RULE, first + "\n" + first, stop=("STOP",))
    assert detok.repeated and detok.text == first
    out, detok = stream(HERMES_RULE, first + "\nSTOP", stop=("STOP",))
    assert detok.stop_sequence == "STOP" and detok.text == first + "\n"


def test_text_without_calls_is_untouched():
    text = "Paris is sunny.\nParis is sunny.\nParis is sunny."
    out, detok = stream(HERMES_RULE, text, piece=3)
    assert not detok.repeated and "".join(out) == text


@pytest.mark.parametrize("form, rule", [(HERMES, HERMES_RULE), (LLAMA3_JSON, LLAMA_RULE)])
def test_a_repeat_cut_short_by_the_token_limit_is_dropped_not_released(form, rule):
    # max_tokens ends the reply while the second call is still the first one's start
    first = call(form, "Paris")
    for cut in (len(form.separator) + len(form.trigger), len(first) - 3):
        out, detok = stream(rule, first + form.separator + first[:cut])
        assert detok.repeated and detok.text == first == "".join(out)
        assert detok.kept_tokens == len(first.encode())


def test_a_different_call_cut_short_is_released_as_it_came():
    first, second = call(HERMES, "Paris"), call(HERMES, "Lyon")
    text = first + "\n" + second[:-5]
    out, detok = stream(HERMES_RULE, text)
    assert not detok.repeated and detok.text == text == "".join(out)
