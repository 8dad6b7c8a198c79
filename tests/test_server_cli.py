"""The preheat command line: options, their PREHEAT_* environment variables, subcommands."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from preheat.cli import build_parser, engine_config, env_name


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """Options read PREHEAT_* variables: start each test without the caller's."""
    for name in [n for n in os.environ if n.startswith("PREHEAT_")]:
        monkeypatch.delenv(name)


def test_env_names_follow_the_flags():
    assert env_name("--ttl-5m-seconds") == "PREHEAT_TTL_5M_SECONDS"
    assert env_name("--kv-cache-tokens") == "PREHEAT_KV_CACHE_TOKENS"


def test_serve_defaults():
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port) == ("127.0.0.1", 8000)
    assert args.api_key == [] and args.claude_aliases is True
    assert args.min_cache_tokens == 1024 and args.ttl_5m_seconds == 300.0
    assert engine_config(args).model is None


def test_environment_sets_defaults_and_flags_win(monkeypatch):
    monkeypatch.setenv("PREHEAT_PORT", "9001")
    monkeypatch.setenv("PREHEAT_API_KEY", "a, b")
    monkeypatch.setenv("PREHEAT_CLAUDE_ALIASES", "false")
    monkeypatch.setenv("PREHEAT_KV_CACHE_TOKENS", "4096")
    monkeypatch.setenv("PREHEAT_CACHE_DIR", "/tmp/weights")
    args = build_parser().parse_args(["serve"])
    assert args.port == 9001 and args.api_key == ["a", "b"] and args.claude_aliases is False
    config = engine_config(args)
    assert config.kv_cache_tokens == 4096 and config.cache_dir == Path("/tmp/weights")
    args = build_parser().parse_args(["serve", "--port", "9002", "--api-key", "c", "--claude-aliases"])
    assert args.port == 9002 and args.api_key == ["c"] and args.claude_aliases is True


def test_every_engine_setting_is_an_option():
    args = build_parser().parse_args(["serve", "--max-running", "3", "--context-window", "2048",
                                      "--max-pinned-fraction", "0.5", "--model", "x.gguf"])
    config = engine_config(args)
    assert (config.max_running, config.context_window, config.max_pinned_fraction, config.model) == \
        (3, 2048, 0.5, "x.gguf")


def test_shutdown_grace_has_a_default_a_flag_and_a_variable(monkeypatch):
    assert build_parser().parse_args(["serve"]).shutdown_grace_seconds == 30.0
    assert build_parser().parse_args(["serve", "--shutdown-grace-seconds", "2.5"]) \
        .shutdown_grace_seconds == 2.5
    monkeypatch.setenv("PREHEAT_SHUTDOWN_GRACE_SECONDS", "90")
    assert build_parser().parse_args(["serve"]).shutdown_grace_seconds == 90.0


def test_bad_environment_value_is_reported(monkeypatch):
    monkeypatch.setenv("PREHEAT_PORT", "eighty")
    with pytest.raises(SystemExit, match="PREHEAT_PORT"):
        build_parser()


def test_generate_takes_a_prompt():
    args = build_parser().parse_args(["generate", "Hello", "--max-tokens", "8", "--temperature", "0"])
    assert (args.prompt, args.max_tokens, args.temperature) == ("Hello", 8, 0.0)
    assert args.func.__name__ == "generate"
