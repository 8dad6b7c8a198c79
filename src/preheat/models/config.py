"""Architecture hyper-parameters: what every family has, and each family's own additions."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelConfig:
    """What the engine and every family's model code read.

    A family with more to say subclasses it (``models/gemma3.py``'s ``Gemma3Config``);
    ``family`` names the module under ``models/`` that builds the network.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # HF-style dict, e.g. {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
    # "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}; None = plain RoPE.
    rope_scaling: dict | None = field(default=None, hash=False, compare=False)
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # biases on the q/k/v projections (Qwen2)
    family: str = "llama"

    def layer_windows(self) -> tuple[int, ...]:
        """Each layer's sliding window in tokens; 0 where a layer sees the whole context."""
        return (0,) * self.num_layers
