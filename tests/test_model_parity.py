"""Our Llama forward against Hugging Face transformers on the same tiny random weights."""
import pytest
import torch
import transformers

from engine_driver import last_logits, run_one
from preheat.engine.request import SamplingParams
from tiny import tiny_config, tiny_engine, tiny_weights

VARIANTS = {
    "gqa": {},
    "mha_tied": {"num_kv_heads": 4, "tie_word_embeddings": True},
    "qwen2_bias": {"attention_bias": True},
    "llama3_rope": {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 64}},
}


def hf_model(cfg, weights):
    common = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                  intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
                  num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
                  max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.rms_norm_eps,
                  rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_word_embeddings)
    if cfg.attention_bias:
        hf_cfg = transformers.Qwen2Config(**common)
        model = transformers.Qwen2ForCausalLM(hf_cfg)
    else:
        hf_cfg = transformers.LlamaConfig(head_dim=cfg.head_dim, rope_scaling=cfg.rope_scaling, **common)
        model = transformers.LlamaForCausalLM(hf_cfg)
    model.load_state_dict(weights, strict=not cfg.tie_word_embeddings)
    return model.eval()


def prompt(n: int, seed: int) -> list[int]:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("variant", VARIANTS)
def test_last_token_logits_match_transformers(variant):
    cfg = tiny_config(**VARIANTS[variant])
    ref = hf_model(cfg, tiny_weights(cfg))
    engine = tiny_engine(cfg=cfg, max_step_tokens=40)  # 100 tokens: three chunks
    for seed in range(3):
        ids = prompt(100, seed)
        with torch.no_grad():
            want = ref(torch.tensor([ids])).logits[0, -1]
        torch.testing.assert_close(last_logits(engine, ids), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", ["gqa", "llama3_rope"])
def test_greedy_tokens_match_transformers(variant):
    cfg = tiny_config(**VARIANTS[variant])
    ref = hf_model(cfg, tiny_weights(cfg))
    engine = tiny_engine(cfg=cfg)
    for seed in range(3):
        ids = prompt(20 + 7 * seed, seed)
        with torch.no_grad():
            want = ref.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False,
                                min_new_tokens=32)[0, len(ids):].tolist()
        got = run_one(engine, ids, params=SamplingParams(max_tokens=32, temperature=0, ignore_eos=True))
        assert got.output_ids == want
