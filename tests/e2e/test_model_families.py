"""A user's own model: the real Gemma 3 270M served as `preheat serve --model FILE`, through the
real SDKs; and the one-line errors of files preheat cannot run, from real processes."""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anthropic
import gguf
import numpy as np
import openai
import pytest
import torch
from e2e_helpers import GREEDY, KEY_A, Server, _preheat_command, cached_system, start_server

sys.path.insert(0, str(Path(__file__).parents[1]))
from gemma_file import gemma_file  # noqa: E402

# Past the 512-token window of Gemma 3's local layers: a prefix cached beyond it must
# serve them exactly as a cold run does.
DOCUMENT = " ".join(Path("/usr/share/common-licenses/GPL-3").read_text().split()[:900])


@pytest.fixture(scope="module")
def gemma(server_logs) -> Iterator[Server]:
    srv = start_server(server_logs, "gemma", ["--model", str(gemma_file()), "--api-key", KEY_A,
                                              "--kv-cache-tokens", "16384", "--min-cache-tokens", "128"])
    yield srv
    srv.stop()


@pytest.fixture
def claude(gemma) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gemma.base_url, api_key=KEY_A, max_retries=0, timeout=300)


def test_a_cached_prefix_past_the_sliding_window_answers_as_a_cold_one(claude, gemma):
    ask = dict(model="claude-sonnet-4-6", max_tokens=24, extra_body=GREEDY,
               messages=[{"role": "user", "content": "Who may copy this program?"}])
    first = claude.messages.create(system=cached_system(DOCUMENT), **ask)
    assert first.usage.cache_creation_input_tokens > 1000 and first.usage.cache_read_input_tokens == 0
    second = claude.messages.create(system=cached_system(DOCUMENT), **ask)
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert second.content[0].text == first.content[0].text
    # the same prompt without a breakpoint shares nothing cached: a cold run
    cold = claude.messages.create(system=DOCUMENT + " ", **ask)
    assert cold.usage.cache_read_input_tokens == 0
    assert gemma.health()["status"] == "ok"


def test_streaming_gives_the_whole_reply(claude):
    kwargs = dict(model="claude-sonnet-4-6", max_tokens=20, extra_body=GREEDY,
                  messages=[{"role": "user", "content": "Name three colors."}])
    whole = claude.messages.create(**kwargs).content[0].text
    with claude.messages.stream(**kwargs) as stream:
        streamed = "".join(stream.text_stream)
    assert streamed == whole


def test_raw_completions_give_the_in_process_engine_tokens(gemma):
    """The same file, the same raw prompt: the server's greedy tokens are the engine's."""
    from engine_driver import run_one
    from preheat.config import EngineConfig
    from preheat.engine.llm_engine import build_engine
    from preheat.engine.request import SamplingParams
    from preheat.loader.model_loader import load_model

    client = openai.OpenAI(base_url=f"{gemma.base_url}/v1", api_key=KEY_A, max_retries=0, timeout=300)
    prompt = "The three primary colors are"
    served = client.models.list().data[0].id
    reply = client.completions.create(model=served, prompt=prompt, max_tokens=16, temperature=0,
                                      logprobs=3)
    loaded = load_model(gemma_file())
    engine = build_engine(EngineConfig(kv_disk_bytes=0, kv_cache_tokens=2048), loaded=loaded)[0]
    ids = loaded.tokenizer.encode_prompt(prompt)[0]
    want = run_one(engine, ids, SamplingParams(max_tokens=16, temperature=0, ignore_eos=True))
    assert reply.choices[0].text == loaded.tokenizer.decode(want.output_ids)
    assert len(reply.choices[0].logprobs.top_logprobs[0]) == 3


# ---- files preheat cannot run: one line, status 2, from serve and generate -------------------

def _tiny_gguf(path: Path, arch: str, tensors: dict[str, tuple[np.ndarray, gguf.GGMLQuantizationType]]) -> Path:
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(1)
    for name, (data, qtype) in tensors.items():
        writer.add_tensor(name, data, raw_dtype=qtype if data.dtype == np.uint8 else None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    root = tmp_path_factory.mktemp("bad")
    real = gemma_file().read_bytes()
    (root / "truncated.gguf").write_bytes(real[: len(real) // 3])
    (root / "junk.gguf").write_bytes(b"not a model at all " * 50)
    no_weights = root / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    other = root / "gpt2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    q2k = np.zeros((4, 84), dtype=np.uint8)  # one Q2_K block a row
    return {
        "architecture": (_tiny_gguf(root / "phi.gguf", "phi3", {"token_embd.weight": (
            np.zeros((4, 32), np.float32), gguf.GGMLQuantizationType.F32)}), "architecture 'phi3'"),
        "tensor type": (_tiny_gguf(root / "q2k.gguf", "llama", {"token_embd.weight": (
            q2k, gguf.GGMLQuantizationType.Q2_K)}), "Q2_K, a type preheat does not run"),
        "truncated": (root / "truncated.gguf", "truncated"),
        "corrupted": (root / "junk.gguf", "not a GGUF file"),
        "no weights": (no_weights, "no *.safetensors"),
        "folder architecture": (other, "model_type 'gpt2'"),
        "missing tensors": (_tiny_gguf(root / "half.gguf", "gemma3", {"token_embd.weight": (
            np.zeros((8, 32), np.float32), gguf.GGMLQuantizationType.F32)}), ""),
    }


@pytest.mark.parametrize("command", ["serve", "generate"])
@pytest.mark.parametrize("case", ["architecture", "tensor type", "truncated", "corrupted", "no weights",
                                  "folder architecture"])
def test_a_model_preheat_cannot_run_is_one_clear_line(bad_models, command, case):
    path, said = bad_models[case]
    args = ["--port", "0"] if command == "serve" else ["hello"]
    done = subprocess.run([*_preheat_command(), command, "--model", str(path), *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert said in lines[0] and path.name in lines[0]


def test_a_file_missing_what_its_family_needs_fails_in_the_engine_with_one_line(bad_models, tmp_path):
    """It passes the quick check (a known architecture, known types); the engine process finds
    the gap and the server still exits with one line and status 2."""
    path, _ = bad_models["missing tensors"]
    done = subprocess.run([*_preheat_command(), "serve", "--model", str(path), "--port", "0",
                           "--kv-disk-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert f"preheat: " in done.stderr and path.name in done.stderr.strip().splitlines()[-1]
