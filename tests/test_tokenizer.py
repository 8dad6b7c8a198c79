"""Tokenizer built from GGUF metadata: parity with transformers' GGUF tokenizer, special tokens, offsets."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from preheat.loader.embedded import embedded_model_path
from preheat.tokenizer.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = [
    "Hello, world!",
    "def square(x: int) -> int:\n    return x ** 2  # comment\n",
    "The year 2024 had 366 days; pi = 3.14159, e=2.71828",
    "a1b22c333 0x7fff 1,000,000",
    "你好，世界！这是一个测试。",
    "emoji 🎉🚀 and a family 👨\u200d👩\u200d👧 ok",
    "tabs\t\tand   spaces    \n\n\n  trailing  ",
    "naïve café Straße Ελληνικά русский",
    "I'm sure they'll say we'd've done it",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "x<|endoftext|>y<|im_end|><|im_start|>",
    "",
    " ",
    "\n",
]
CONVERSATION = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "Thanks! 🎉"},
]


@pytest.fixture(scope="module")
def ours() -> Tokenizer:
    return Tokenizer.from_gguf(embedded_model_path())


@pytest.fixture(scope="module")
def reference():
    path = embedded_model_path()
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_parity_with_transformers(ours, reference, text):
    expected = reference.encode(text, add_special_tokens=False)
    assert ours.encode(text) == expected
    assert ours.decode(expected, skip_special_tokens=False) == reference.decode(expected)
    assert ours.decode(expected) == reference.decode(expected, skip_special_tokens=True)


def test_smollm_splits_digits_before_byte_level(ours):
    """`smollm` isolates each digit first (SmolLM2's tokenizer.json and llama.cpp do); transformers' GGUF
    path lacks that step, which only shows when a run of spaces precedes a digit: "  4" -> "ĠĠ", "4"."""
    double_space = ours.backend.token_to_id("ĠĠ")
    assert ours.encode("a  45") == [ours.encode("a")[0], double_space, *ours.encode("4"), *ours.encode("5")]


def test_special_tokens_and_stop_ids(ours):
    assert ours.encode("<|im_start|>") == [1]
    assert (ours.bos_token_id, ours.bos_token) == (1, "<|im_start|>")
    assert ours.eos_token_id == 2
    assert ours.eos_token_ids == frozenset({2})  # <|im_end|> is both EOS and the template's end of turn
    assert ours.vocab_size == 49152
    assert ours.chat_template is not None and not ours.template_supports_tools


def test_end_of_turn_token_joins_eos_ids(ours):
    llama3_like = "{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}"
    tokenizer = Tokenizer(ours.backend, eos_token_id=0, chat_template=llama3_like)
    assert tokenizer.eos_token_ids == frozenset({0, 2})


def test_decode_incomplete_utf8_gives_replacement_char(ours):
    ids = ours.encode("🎉")
    assert len(ids) > 1
    assert ours.decode(ids[:1]) == "\ufffd"
    assert ours.decode(ids) == "🎉"


def test_encode_prompt_offsets_point_into_text(ours):
    text = "<|im_start|>user\nHello  world, 42 🎉<|im_end|>"
    ids, offsets = ours.encode_prompt(text)
    assert ids == ours.encode(text)  # SmolLM2's metadata says no BOS
    assert len(offsets) == len(ids)
    for token, (start, end) in zip(ids, offsets, strict=True):
        piece = ours.decode([token], skip_special_tokens=False)
        assert piece == text[start:end] or "\ufffd" in piece  # a byte of a multi-byte char maps to the char
    assert offsets[-1][1] == len(text)


def test_encode_prompt_bos_only_when_wanted_and_absent(ours):
    tokenizer = Tokenizer(ours.backend, eos_token_id=2, bos_token_id=1, add_bos=True)
    ids, offsets = tokenizer.encode_prompt("hi")
    assert ids[0] == 1 and offsets[0] == (0, 0) and ids[1:] == ours.encode("hi")
    assert tokenizer.encode_prompt("<|im_start|>hi")[0] == ours.encode("<|im_start|>hi")
    assert tokenizer.encode("hi") == ours.encode("hi")  # encode never adds BOS


def test_chat_template_matches_transformers(ours, reference):
    for messages in (CONVERSATION, [{"role": "system", "content": "Be brief."}, *CONVERSATION]):
        for add_generation_prompt in (True, False):
            expected = reference.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            )
            assert ours.render_chat(messages, add_generation_prompt=add_generation_prompt) == expected


def test_missing_template_falls_back_to_chatml(ours):
    tokenizer = Tokenizer(ours.backend, eos_token_id=0)
    prompt = tokenizer.render_chat([{"role": "user", "content": "hi"}])
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert 2 in tokenizer.eos_token_ids


# --- SentencePiece (tokenizer.ggml.model == "llama") ---------------------------------------------

SP = "\u2581"
# Pieces in merge-priority order (the score decreases along the list).
SP_PIECES = [
    "he",
    "ll",
    SP + "he",
    SP + "hell",
    SP + "hello",
    "or",
    SP + "w",
    SP + "wor",
    "ld",
    SP + "world",
    "th",
    SP + "th",
    SP + "the",
    "lo",
    "el",
]


def write_sentencepiece_gguf(path: Path) -> None:
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    types = [2, 3, 3] + [6] * 256
    scores = [0.0] * len(tokens)
    singles = [SP, "h", "e", "l", "o", "w", "r", "d", "t", ","]
    tokens += singles + SP_PIECES + ["<|user|>"]
    scores += [-1000.0 - i for i in range(len(singles))] + [-float(i) for i in range(len(SP_PIECES))] + [0.0]
    types += [1] * (len(singles) + len(SP_PIECES)) + [4]
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_space_prefix(True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_sentencepiece_gguf_parity_with_transformers(tmp_path):
    write_sentencepiece_gguf(tmp_path / "sp.gguf")
    ours = Tokenizer.from_gguf(tmp_path / "sp.gguf")
    reference = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="sp.gguf")
    for text in [
        "hello world",
        "the hello, world",
        "  hello   world ",
        "héllo wörld\n",
        "<|user|>hello</s>",
        "hellohello",
        "",
        "<s>the",
    ]:
        expected = reference.encode(text, add_special_tokens=False)
        assert ours.encode(text) == expected, text
        assert ours.decode(expected, skip_special_tokens=False) == reference.decode(expected), text
    assert ours.encode("hello world") == [
        ours.backend.token_to_id(SP + "hello"),
        ours.backend.token_to_id(SP + "world"),
    ]
    # llama.cpp adds BOS for SentencePiece vocabularies unless told otherwise
    assert ours.encode_prompt("hi")[0][0] == 1
    assert (
        ours.decode(ours.encode("<|user|>hi</s>")) == "<|user|>hi"
    )  # user-defined stays, control is skipped


def test_a_built_tokenizer_is_cached_by_its_vocabulary(tmp_path, monkeypatch, caplog):
    """The second load reads the first one's build; a damaged copy is rebuilt, not served."""
    from preheat.loader.gguf_file import GGUFFile
    from preheat.tokenizer.gguf_tokenizer import gguf_backend

    monkeypatch.setenv("PREHEAT_CACHE_DIR", str(tmp_path / "cache"))
    write_sentencepiece_gguf(tmp_path / "sp.gguf")
    first = gguf_backend(GGUFFile(tmp_path / "sp.gguf"))
    [cached] = (tmp_path / "cache" / "tokenizers").glob("*.json")
    texts = ["hello world", "the hello, world", "<|user|>hello</s>"]
    second = gguf_backend(GGUFFile(tmp_path / "sp.gguf"))
    assert [second.encode(t).ids for t in texts] == [first.encode(t).ids for t in texts]
    cached.write_text("{ not a tokenizer")
    rebuilt = gguf_backend(GGUFFile(tmp_path / "sp.gguf"))
    assert [rebuilt.encode(t).ids for t in texts] == [first.encode(t).ids for t in texts]
    assert "rebuilding the tokenizer" in caplog.text
