"""The documentation's examples name model ids the installed SDK does not warn about."""
import re
from pathlib import Path

import pytest
from anthropic._data import DEPRECATED_MODELS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("doc", ["README.md", "docs/api.md"])
def test_examples_use_current_model_ids(doc):
    ids = set(re.findall(r'model="(claude-[\w.-]+)"', (ROOT / doc).read_text()))
    assert ids, f"{doc} has no model example"
    assert not ids & set(DEPRECATED_MODELS), f"{doc} names deprecated ids: {ids & set(DEPRECATED_MODELS)}"
