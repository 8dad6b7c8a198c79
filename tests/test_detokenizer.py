"""Incremental detokenization: whole characters only, stop strings across tokens."""
from preheat.engine.detokenizer import IncrementalDetokenizer
from tiny import ByteTokenizer

TOK = ByteTokenizer()


def stream(text: str, stop=()) -> tuple[list[str], IncrementalDetokenizer]:
    d = IncrementalDetokenizer(TOK.decode, [], tuple(stop))
    deltas = []
    for t in TOK.encode(text):
        deltas.append(d.push(t))
        if d.stop_sequence is not None:
            break
    else:
        deltas.append(d.flush())
    return [x for x in deltas if x], d


def test_multibyte_characters_are_never_split():
    text = "价格是 5 元 🎉 ok"
    deltas, d = stream(text)
    assert "".join(deltas) == text == d.text
    assert all("\ufffd" not in x for x in deltas)
    assert "🎉" in deltas  # released as one piece once its 4 bytes arrived


def test_stop_string_across_token_boundaries():
    deltas, d = stream("hello END world", stop=["END"])
    assert d.stop_sequence == "END"
    assert "".join(deltas) == d.text == "hello "


def test_stop_prefix_is_held_then_released():
    d = IncrementalDetokenizer(TOK.decode, [], ("ENDX",))
    out = [d.push(t) for t in TOK.encode("aEN")]
    assert "".join(out) == "a"  # "EN" may become the stop string
    out = [d.push(t) for t in TOK.encode("Dz")]
    assert "".join(out) == "ENDz"
    assert d.stop_sequence is None


def test_earliest_of_several_stops_wins():
    _, d = stream("one two three", stop=["three", "two"])
    assert d.stop_sequence == "two" and d.text == "one "
