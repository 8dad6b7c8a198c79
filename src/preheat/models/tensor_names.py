"""GGUF tensor names (llama.cpp's) to the Hugging Face names a family's code uses."""
from __future__ import annotations

import re

from preheat.loader.errors import UnsupportedModelError

GLOBAL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
# The block tensors of a Llama-shaped layer; families add theirs.
ATTENTION_AND_MLP = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
QK_NORMS = {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
_BLOCK_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def hf_name(gguf_name: str, block_parts: dict[str, str]) -> str:
    """Map a GGUF name through GLOBAL and ``block_parts`` (``blk.N.part.kind``)."""
    if gguf_name in GLOBAL:
        return GLOBAL[gguf_name]
    match = _BLOCK_NAME.fullmatch(gguf_name)
    if match is None or match.group(2) not in block_parts:
        raise UnsupportedModelError(f"unexpected tensor {gguf_name!r} in GGUF file")
    layer, part, kind = match.groups()
    return f"model.layers.{layer}.{block_parts[part]}.{kind}"


def global_names(tied: bool) -> list[str]:
    return ["model.embed_tokens.weight", "model.norm.weight"] + ([] if tied else ["lm_head.weight"])


def layer_names(i: int, parts: list[str]) -> list[str]:
    """``model.layers.{i}.{part}.weight`` for each part (HF names without the kind)."""
    return [f"model.layers.{i}.{part}.weight" for part in parts]
