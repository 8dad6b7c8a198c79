"""The C++ decode stack against the Python layer loop it replaces: bitwise equal logits."""
from __future__ import annotations

import pytest
import torch

from engine_driver import run
from preheat.engine.request import GenerationRequest, SamplingParams
from preheat.kernels.decode_stack import load_decode_stack_kernel
from tiny import tiny_config, tiny_engine, tiny_weights

pytestmark = pytest.mark.skipif(not load_decode_stack_kernel(), reason="needs preheat's VNNI and attention kernels")

GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)


def recorded(engine) -> tuple[list[torch.Tensor], list[bool]]:
    """Wrap the runner and the model: every step's logits, and whether the step ran fused."""
    logits, fused = [], []
    run_step, is_fused = engine.runner.run, engine.model._fused

    def run_and_record(batch, sample_from, stop=None):
        out = run_step(batch, sample_from, stop)
        logits.append(out.clone())
        return out

    def fused_and_record(kv):
        fused.append(is_fused(kv))
        return fused[-1]

    engine.runner.run = run_and_record
    engine.model._fused = fused_and_record
    return logits, fused


@pytest.mark.parametrize("bias", [False, True])
def test_fused_decode_equals_the_python_loop(bias):
    cfg = tiny_config(attention_bias=bias, num_layers=3)
    weights = tiny_weights(cfg, seed=3)
    prompts = [[(7 * i + j) % 250 for j in range(n)] for i, n in enumerate((3, 9, 17, 30))]
    results = []
    for use_stack in (True, False):
        engine = tiny_engine(cfg=cfg, weights=weights, weight_format="int4")
        assert engine.model.decode_stack is not None
        if not use_stack:
            engine.model.decode_stack = None
        logits, fused = recorded(engine)
        finished = run(engine, [GenerationRequest(p, GREEDY) for p in prompts])
        results.append((logits, fused, [f.output_ids for f in finished]))
    (fused_logits, fused_steps, fused_ids), (loop_logits, loop_steps, loop_ids) = results
    assert any(fused_steps) and not any(loop_steps)
    assert fused_ids == loop_ids
    assert len(fused_logits) == len(loop_logits)
    for a, b in zip(fused_logits, loop_logits, strict=True):
        assert torch.equal(a, b)


def test_mismatched_cache_is_refused():
    engine = tiny_engine(weight_format="int4")
    stack = engine.model.decode_stack
    x = torch.zeros(1, engine.model.cfg.hidden_size)
    cos = sin = torch.zeros(1, 1, engine.model.cfg.head_dim)
    wrong = torch.zeros(1, 2, 4, 4, engine.model.cfg.num_kv_heads, engine.model.cfg.head_dim)
    one = torch.zeros(1, dtype=torch.long)
    no_stop = torch.empty(0, dtype=torch.long)
    with pytest.raises(RuntimeError, match="layers"):
        stack.forward(x, cos, sin, wrong, one, one.view(1, 1), one + 1, 0.25, no_stop, 0)
    right = torch.zeros(engine.model.cfg.num_layers, 2, 4, 4, engine.model.cfg.num_kv_heads,
                        engine.model.cfg.head_dim)
    with pytest.raises(RuntimeError, match="stop must be empty or one int64"):
        stack.forward(x, cos, sin, right, one, one.view(1, 1), one + 1, 0.25,
                      torch.zeros(2, dtype=torch.long), 0)
