"""The pure pieces of `preheat chat` and `preheat bench`: cost arithmetic, where cache
breakpoints go, the chat footer, cutting a document to a token budget, the CLI wiring."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from anthropic._data import DEPRECATED_MODELS

from preheat.cli import build_parser
from preheat.client.arguments import DEFAULT_MODEL
from preheat.client.bench.document import fit_document
from preheat.client.bench.pricing import PriceTable
from preheat.client.cache_breakpoints import MAX_BREAKPOINTS, with_breakpoints
from preheat.client.chat.footer import format_footer
from preheat.client.timed_reply import TimedReply
from preheat.client.token_usage import TokenUsage, total_usage


# ---- token usage and cost ---------------------------------------------------------------

def sdk_usage(input_tokens=0, read=0, written=0, one_hour=None, output=0) -> SimpleNamespace:
    creation = None if one_hour is None else SimpleNamespace(
        ephemeral_5m_input_tokens=written - one_hour, ephemeral_1h_input_tokens=one_hour)
    return SimpleNamespace(input_tokens=input_tokens, cache_read_input_tokens=read,
                           cache_creation_input_tokens=written, cache_creation=creation,
                           output_tokens=output)


def test_usage_from_the_sdk_splits_writes_by_ttl():
    usage = TokenUsage.from_sdk(sdk_usage(10, read=100, written=50, one_hour=20, output=7))
    assert (usage.cache_write_5m_tokens, usage.cache_write_1h_tokens) == (30, 20)
    assert usage.cache_creation_input_tokens == 50 and usage.prompt_tokens == 160
    assert usage.cached_share == pytest.approx(100 / 160)


def test_usage_without_a_breakdown_or_cache_fields():
    usage = TokenUsage.from_sdk(SimpleNamespace(input_tokens=5, output_tokens=1,
                                                cache_read_input_tokens=None,
                                                cache_creation_input_tokens=None,
                                                cache_creation=None))
    assert usage == TokenUsage(input_tokens=5, output_tokens=1)
    assert TokenUsage().cached_share == 0.0


def test_usages_add_up():
    a = TokenUsage(1, 2, 3, 4, 5)
    assert total_usage([a, a, a]) == TokenUsage(3, 6, 9, 12, 15)
    assert a.as_dict()["cache_creation"] == {"ephemeral_5m_input_tokens": 3,
                                             "ephemeral_1h_input_tokens": 4}


def test_cost_applies_anthropics_multipliers():
    prices = PriceTable(input_per_mtok=3.0, output_per_mtok=15.0)
    million = 1_000_000
    assert prices.cost(TokenUsage(input_tokens=million)) == pytest.approx(3.0)
    assert prices.cost(TokenUsage(output_tokens=million)) == pytest.approx(15.0)
    assert prices.cost(TokenUsage(cache_write_5m_tokens=million)) == pytest.approx(3.75)
    assert prices.cost(TokenUsage(cache_write_1h_tokens=million)) == pytest.approx(6.0)
    assert prices.cost(TokenUsage(cache_read_input_tokens=million)) == pytest.approx(0.3)


def test_cost_without_cache_prices_every_prompt_token_as_input():
    prices = PriceTable(input_per_mtok=5.0, output_per_mtok=25.0)
    usage = TokenUsage(input_tokens=100, cache_read_input_tokens=900, cache_write_5m_tokens=50,
                       output_tokens=10)
    assert prices.cost_without_cache(usage) == pytest.approx((1050 * 5 + 10 * 25) / 1e6)
    assert prices.cost(usage) == pytest.approx((100 + 900 * 0.1 + 50 * 1.25) * 5e-6 + 250e-6)


def test_caching_pays_off_from_the_second_read():
    """One write and one read of a document cost less than sending it twice uncached."""
    prices = PriceTable()
    doc = 10_000
    uncached = prices.cost(TokenUsage(input_tokens=2 * doc))
    cached = prices.cost(TokenUsage(cache_write_5m_tokens=doc, cache_read_input_tokens=doc))
    assert cached < uncached
    write_once = prices.cost(TokenUsage(cache_write_5m_tokens=doc))
    assert write_once > prices.cost(TokenUsage(input_tokens=doc))  # a write alone costs more


# ---- cache breakpoints ------------------------------------------------------------------

def marked(blocks) -> list[str]:
    return [b["text"] for b in blocks if "cache_control" in b]


def conversation(user_turns: int) -> list[dict[str, str]]:
    history = []
    for i in range(1, user_turns + 1):
        history.append({"role": "user", "content": f"q{i}"})
        if i < user_turns:
            history.append({"role": "assistant", "content": f"a{i}"})
    return history


def test_the_system_prompt_and_the_last_two_user_turns_are_marked():
    system, messages = with_breakpoints("doc", conversation(4))
    assert marked(system) == ["doc"]
    assert marked(b for m in messages for b in m["content"]) == ["q3", "q4"]
    assert [m["role"] for m in messages] == ["user", "assistant"] * 3 + ["user"]


@pytest.mark.parametrize("turns", [1, 2, 3, 10])
def test_never_more_breakpoints_than_anthropic_allows(turns):
    system, messages = with_breakpoints("doc", conversation(turns))
    count = len(marked(system)) + len(marked(b for m in messages for b in m["content"]))
    assert count == 1 + min(turns, 2) <= MAX_BREAKPOINTS


def test_no_system_prompt_and_a_ttl():
    system, messages = with_breakpoints(None, conversation(1), ttl="1h")
    assert system is None
    assert messages[0]["content"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}


def test_history_is_left_as_it_was():
    history = conversation(2)
    with_breakpoints("doc", history)
    assert history == conversation(2)


# ---- the chat footer --------------------------------------------------------------------

def test_footer_shows_tokens_share_ttft_and_speed():
    reply = TimedReply(started=10.0, first_text_at=10.25, finished_at=11.25, text="hi",
                       usage=TokenUsage(input_tokens=20, cache_read_input_tokens=300,
                                        cache_write_5m_tokens=80, output_tokens=51))
    assert format_footer(reply) == ("in 20 | cache read 300 | cache write 80 | out 51 | "
                                    "75% cached | TTFT 0.25 s | 50.0 tok/s")


def test_footer_without_a_measurable_speed():
    reply = TimedReply(started=0.0, first_text_at=0.5, finished_at=0.5, text="x",
                       usage=TokenUsage(input_tokens=4, output_tokens=1))
    assert format_footer(reply).endswith("0% cached | TTFT 0.50 s | - tok/s")


def test_footer_of_a_stopped_reply():
    reply = TimedReply(started=0.0, first_text_at=1.0, text="partial")
    assert format_footer(reply).startswith("stopped | TTFT 1.00 s")


# ---- cutting a document ------------------------------------------------------------------

def words(text: str) -> int:
    return len(text.split())


def test_a_short_document_is_kept_whole():
    assert fit_document("a b c", 10, words) == "a b c"


@pytest.mark.parametrize("budget", [1, 7, 50, 99])
def test_a_long_document_is_cut_at_a_word_to_the_budget(budget):
    text = " ".join(f"word{i}" for i in range(100))
    cut = fit_document(text, budget, words)
    assert words(cut) <= budget and text.startswith(cut)
    assert cut.split()[-1] in text.split()  # no partial word
    assert words(cut) >= budget * 0.8  # close to the budget, not far below it


def test_a_budget_nothing_fits_gives_an_empty_document():
    assert fit_document("abcdefgh", 0, lambda text: len(text)) == ""


# ---- the command line -------------------------------------------------------------------

def test_chat_options(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    args = build_parser().parse_args(["chat", "--system", "be brief", "--temperature", "0"])
    assert (args.base_url, args.api_key, args.system, args.temperature) == \
        ("http://127.0.0.1:8000", "preheat", "be brief", 0.0)
    assert args.model.startswith("claude-") and args.func.__name__ == "chat"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["chat", "--system", "x", "--system-file", "y"])


def test_the_default_model_id_is_one_the_sdk_does_not_warn_about():
    assert DEFAULT_MODEL.startswith("claude-") and DEFAULT_MODEL not in DEPRECATED_MODELS


def test_chat_takes_the_sdks_api_key_variable(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    assert build_parser().parse_args(["chat"]).api_key == "sk-test"


def test_bench_options():
    args = build_parser().parse_args(["bench", "--quick", "--json", "--price-input", "5",
                                      "--serve-arg=--max-running", "--serve-arg", "4"])
    assert args.base_url is None and args.quick and args.json and args.price_input == 5.0
    assert args.serve_arg == ["--max-running", "4"] and args.func.__name__ == "bench"
    for bad in (["--users", "0"], ["--price-output", "-1"], ["--cache-ttl", "10m"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["bench", *bad])


def test_bench_says_what_plot_needs(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    args = build_parser().parse_args(["bench", "--plot", str(tmp_path / "x.png")])
    with pytest.raises(SystemExit, match=r"pip install 'preheat\[plot\]'"):
        args.func(args)
