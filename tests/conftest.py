import sys
from pathlib import Path

import pytest

# tests import the in-tree tiny model helpers as plain modules
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def embedded_model():
    """The embedded SmolLM2 (converted weights cached across runs)."""
    from preheat.loader.model_loader import load_model

    return load_model()


@pytest.fixture(scope="session")
def hf_reference():
    """transformers' own load of the embedded GGUF: an independent dequantization (~30 s)."""
    import torch
    import transformers

    from preheat.loader.embedded import embedded_model_path

    path = embedded_model_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.eval()
