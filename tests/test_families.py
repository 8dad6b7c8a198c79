"""Qwen3 and Gemma 3 against transformers on tiny random configs, from a Hugging Face folder
and from a GGUF file of the same weights; Gemma's sliding windows across the prompt cache,
preemption and the disk tier."""
from __future__ import annotations

import gguf
import pytest
import torch

from engine_driver import ids, last_logits, run, run_one
from family_models import WINDOW, folder_weights, gguf_weights_of, hf_model, save_folder, write_gguf
from preheat.engine.request import CacheBreakpoint, GenerationRequest, SamplingParams
from preheat.kernels.quant_matmul import load_quant_kernel
from preheat.models.gemma3 import Gemma3Config
from tiny import tiny_engine

FAMILIES = ["qwen3", "gemma3"]
GREEDY_40 = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
Q = gguf.GGMLQuantizationType


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    """(name, transformers model, its folder, its GGUF in F32)."""
    name = request.param
    model = hf_model(name)
    root = tmp_path_factory.mktemp(name)
    folder = save_folder(model, root / "folder")
    write_gguf(root / "f32.gguf", name, model)
    return name, model, folder, root / "f32.gguf"


def reference_logits(model, prompt: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([prompt])).logits[0, -1]


def test_config_from_folder_and_gguf_agree(family):
    name, model, folder, gguf_path = family
    from_folder, _ = folder_weights(folder)
    from_gguf, _ = gguf_weights_of(gguf_path)
    assert from_folder.family == from_gguf.family == name
    for field in ("num_layers", "num_heads", "num_kv_heads", "head_dim", "hidden_size", "vocab_size",
                  "tie_word_embeddings", "rope_theta"):
        assert getattr(from_folder, field) == getattr(from_gguf, field), field
    if name == "gemma3":
        assert isinstance(from_gguf, Gemma3Config)
        assert from_folder.global_layers == from_gguf.global_layers == (False, True, False, True)
        assert from_folder.sliding_window == from_gguf.sliding_window == WINDOW
        assert (from_folder.norm_offset, from_gguf.norm_offset) == (1.0, 0.0)


def test_last_token_logits_match_transformers(family):
    """1e-4: float32 on both sides; the sums run in different orders (chunked prefill,
    preheat's attention kernel), nothing else differs."""
    name, model, folder, _ = family
    cfg, weights = folder_weights(folder)
    engine = tiny_engine(cfg=cfg, weights=weights, max_step_tokens=24)  # 70 tokens: three chunks
    for seed in range(3):
        prompt = ids(70, seed)  # past Gemma's 16-token window
        torch.testing.assert_close(last_logits(engine, prompt), reference_logits(model, prompt),
                                   atol=1e-4, rtol=1e-4)


def test_greedy_tokens_match_transformers(family):
    name, model, folder, _ = family
    cfg, weights = folder_weights(folder)
    engine = tiny_engine(cfg=cfg, weights=weights)
    for seed in range(2):
        prompt = ids(12 + 9 * seed, seed)
        with torch.no_grad():
            want = model.generate(torch.tensor([prompt]), max_new_tokens=40, min_new_tokens=40,
                                  do_sample=False)[0, len(prompt):].tolist()
        assert run_one(engine, prompt, GREEDY_40).output_ids == want


def test_the_same_weights_from_gguf_and_from_the_folder_give_identical_logits(family):
    name, model, folder, gguf_path = family
    from_folder = tiny_engine(cfg=folder_weights(folder)[0], weights=folder_weights(folder)[1])
    cfg, weights = gguf_weights_of(gguf_path)
    from_gguf = tiny_engine(cfg=cfg, weights=weights)
    for seed in range(2):
        prompt = ids(40, 10 + seed)
        assert torch.equal(last_logits(from_gguf, prompt), last_logits(from_folder, prompt))


@pytest.mark.skipif(not load_quant_kernel(), reason="needs preheat's quantized matmul kernel (AVX-512 VNNI or AVX2, a compiler)")
def test_quantized_gguf_runs_its_own_weights_and_follows_the_dequantized_model(family, tmp_path):
    """The default path keeps each tensor's blocks (no re-quantization); ``dense`` runs the
    same values in float32. They differ only by the kernel's int16 activations and the
    float16 KV cache of quantized weights."""
    name, model, _, _ = family
    path = tmp_path / "q.gguf"
    write_gguf(path, name, model, {"attn_q": Q.Q8_0, "attn_k": Q.Q5_0, "attn_v": Q.Q4_0,
                                   "attn_output": Q.Q5_1, "ffn_gate": Q.Q4_1, "ffn_up": Q.Q4_0,
                                   "ffn_down": Q.Q8_0, "token_embd": Q.Q8_0})
    cfg, weights = gguf_weights_of(path)
    native = tiny_engine(cfg=cfg, weights=weights, weight_format="auto")
    dense = tiny_engine(cfg=cfg, weights=weights, weight_format="dense")
    assert native.model.weight_format == "native" and dense.model.weight_format == "dense"
    for seed in range(3):
        prompt = ids(50, 20 + seed)
        a, b = last_logits(native, prompt), last_logits(dense, prompt)
        assert a.argmax() == b.argmax()
        torch.testing.assert_close(a, b, atol=3e-2, rtol=0)


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    model = hf_model("gemma3", seed=3)
    return folder_weights(save_folder(model, tmp_path_factory.mktemp("gemma") / "folder"))


@pytest.mark.parametrize("shared, mark", [(40, "breakpoint"), (43, "breakpoint"), (17, "breakpoint"),
                                         (43, "resume point")])
def test_a_prefix_cached_at_a_breakpoint_past_the_window_gives_the_cold_tokens(gemma, shared, mark):
    """The tree keeps the local layers' window before a breakpoint (or a resume point, the
    API's end of a system prompt): the next request resumes there."""
    cfg, weights = gemma
    kept = ({"breakpoints": (CacheBreakpoint(shared, 300.0),)} if mark == "breakpoint"
            else {"resume_points": (shared,)})
    base = ids(60, 1)
    first, second = base[:shared] + ids(10, 2), base[:shared] + ids(25, 3)
    want_logits = last_logits(tiny_engine(cfg=cfg, weights=weights), second)
    want = run_one(tiny_engine(cfg=cfg, weights=weights), second, GREEDY_40)
    warm = tiny_engine(cfg=cfg, weights=weights)
    run_one(warm, first, **kept)
    assert len(warm.radix.match("", second)) * 4 == shared - shared % 4 > 0
    torch.testing.assert_close(last_logits(warm, second), want_logits, atol=1e-5, rtol=1e-5)
    assert run_one(warm, second, GREEDY_40).output_ids == want.output_ids


def test_without_a_breakpoint_a_prefix_resumes_where_a_window_was_kept(gemma):
    """Mid-prompt the local KV is gone (the second request recomputes, and answers as a cold
    run); the first prompt asked again, and a thread's next turn, resume at its end."""
    cfg, weights = gemma
    base = ids(60, 1)
    first, second = base[:40] + ids(10, 2), base[:40] + ids(25, 3)
    want = run_one(tiny_engine(cfg=cfg, weights=weights), second, GREEDY_40).output_ids
    warm = tiny_engine(cfg=cfg, weights=weights)
    turn = run_one(warm, first, GREEDY_40, hold_seconds=60.0)
    assert warm.radix.cached_len("", second) == 0  # every block of 0..40 has a window slot freed
    assert run_one(warm, second, GREEDY_40).output_ids == want
    assert len(warm.radix.match("", first[:-1])) * 4 == 48  # the prompt's end
    history = first + turn.output_ids
    again = history + ids(7, 4)
    cold = run_one(tiny_engine(cfg=cfg, weights=weights), again, GREEDY_40).output_ids
    seq = warm.prepare(GenerationRequest(again, GREEDY_40))
    warm.enqueue(seq)
    outputs = []
    while warm.has_work:
        outputs += [ev for _, ev in warm.step() if hasattr(ev, "output_ids")]
    assert seq.reused_prompt_tokens == len(history) - 1  # all but the last token computed
    assert outputs[0].output_ids == cold


def test_local_layers_hold_only_the_window_a_long_sequence_still_reads(gemma):
    cfg, weights = gemma
    engine = tiny_engine(cfg=cfg, weights=weights, max_step_tokens=24)
    assert engine.slots is not None and engine.runner.window_cache.shape[0] == 2  # two local layers
    seq = engine.prepare(GenerationRequest(ids(300, 7), GREEDY_40))
    engine.enqueue(seq)
    most = 0
    while engine.has_work:
        engine.step()
        most = max(most, engine.slots.num_slots - engine.slots.num_free)
    used = engine.pool.num_blocks - engine.pool.num_free  # the tree keeps every block
    assert used == (300 + 40 - 1) // 4  # the last token has no KV yet
    # a sequence's window (5 blocks), a step's chunk (6), one block ahead and one behind, and
    # the window kept at the prompt's end (5): not the 85 blocks it has written
    assert most <= 18
    assert engine.slots.num_slots - engine.slots.num_free <= 2 * 5  # the prompt's end, its own end


def test_concurrent_and_preempted_gemma_equals_sequential(gemma):
    cfg, weights = gemma
    prompts = [ids(20 + 7 * i, 40 + i) for i in range(6)]
    want = [run_one(tiny_engine(cfg=cfg, weights=weights), p, GREEDY_40).output_ids for p in prompts]
    small = tiny_engine(cfg=cfg, weights=weights, kv_cache_tokens=160)
    got = run(small, [GenerationRequest(p, GREEDY_40) for p in prompts])
    assert small.scheduler.num_preemptions > 0
    assert [g.output_ids for g in got] == want


def test_a_pool_sized_by_memory_short_of_window_slots_still_gives_the_sequential_tokens(gemma):
    """A pool sized in bytes has fewer window slots than blocks (a pool sized in tokens has
    one a block): running sequences and pinned windows then wait, preempt and release pins
    for slots, and every answer stays that of a lone run."""
    cfg, weights = gemma
    prompts = [ids(30 + 5 * i, 60 + i) for i in range(6)]
    want = [run_one(tiny_engine(cfg=cfg, weights=weights), p, GREEDY_40).output_ids for p in prompts]
    per_block = 2 * 4 * 1 * 32 * 4  # a layer's block of K and V: 4 tokens, 1 head of 32, float32
    small = tiny_engine(cfg=cfg, weights=weights, kv_cache_bytes=64 * (2 * per_block + 2 * per_block // 4))
    assert small.pool.num_blocks == 64 and small.slots.num_slots == (16 + 64) // 4 + 4
    requests = [GenerationRequest(p, GREEDY_40, breakpoints=(CacheBreakpoint(24, 300.0),)) for p in prompts]
    got = run(small, requests)
    assert small.scheduler.num_preemptions > 0
    assert [g.output_ids for g in got] == want
    kept = {b for w in small.radix._windows.values() for b in w.blocks}  # no slot leaks
    assert small.slots.num_slots - small.slots.num_free == len(kept) > 0


def test_a_pinned_prefix_read_back_from_disk_gives_the_cold_tokens(gemma, tmp_path):
    cfg, weights = gemma
    docs = [ids(36, seed) for seed in range(4)]

    def ask(engine, doc, tail):
        req = GenerationRequest(doc + ids(5, tail), GREEDY_40, breakpoints=(CacheBreakpoint(len(doc), 300.0),))
        return run(engine, [req])[0]

    settings = dict(model_digest="gemma", kv_cache_tokens=160, max_pinned_fraction=0.5,
                    kv_disk_dir=tmp_path, kv_disk_bytes=1 << 30)
    first = tiny_engine(cfg=cfg, weights=weights, **settings)
    for doc in docs:
        ask(first, doc, 1)
    first.close()
    restarted = tiny_engine(cfg=cfg, weights=weights, **settings)
    for doc in docs:
        cold = run_one(tiny_engine(cfg=cfg, weights=weights), doc + ids(5, 2), GREEDY_40).output_ids
        hit = ask(restarted, doc, 2)
        assert hit.usage.cache_read_tokens == 36 and hit.output_ids == cold
    assert restarted.offload.num_reads == 4


def test_softcapped_logits_match_transformers(tmp_path):
    model = hf_model("gemma3", final_logit_softcapping=3.0)
    cfg, weights = folder_weights(save_folder(model, tmp_path / "capped"))
    engine = tiny_engine(cfg=cfg, weights=weights)
    prompt = ids(30, 5)
    got = last_logits(engine, prompt)
    assert got.abs().max() < 3.0
    torch.testing.assert_close(got, reference_logits(model, prompt), atol=1e-4, rtol=1e-4)


def test_gemma_on_the_gathered_attention_path_matches_transformers(tmp_path, monkeypatch):
    """GPUs and CPUs without AVX-512 window their attention with SDPA masks instead."""
    from preheat.kernels import paged_attention as kernel

    monkeypatch.setattr(kernel, "supports", lambda kv_cache: False)
    model = hf_model("gemma3", seed=4)
    cfg, weights = folder_weights(save_folder(model, tmp_path / "gemma"))
    engine = tiny_engine(cfg=cfg, weights=weights, max_step_tokens=24)
    prompt = ids(70, 9)
    torch.testing.assert_close(last_logits(engine, prompt), reference_logits(model, prompt), atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        want = model.generate(torch.tensor([prompt[:20]]), max_new_tokens=40, min_new_tokens=40,
                              do_sample=False)[0, 20:].tolist()
    assert run_one(engine, prompt[:20], GREEDY_40).output_ids == want
