"""The API process's code imports no torch, model or kernel: it renders prompts and
events, and the engine process (or a thread, in tests) does the compute.

Checked in a fresh interpreter, since this test session has imported torch already.
"""
from __future__ import annotations

import json
import subprocess
import sys

import preheat.engine

# What `preheat serve` runs in the API process, and what a Ray Serve ingress would import.
API_MODULES = ["preheat.server.app", "preheat.engine.engine_process", "preheat.cli",
               "preheat.tokenizer.load", "preheat.engine", "preheat.loader.model_check"]
HEAVY = ("torch", "preheat.models", "preheat.kernels", "preheat.layers",
         "preheat.engine.llm_engine", "preheat.engine.engine_core", "preheat.loader.model_loader")
# Which family runs an architecture, and its turn format, is all the API process asks of models/.
TORCH_FREE = ("preheat.models", "preheat.models.registry")


def loaded_after_importing(modules: list[str]) -> list[str]:
    code = (f"import importlib, json, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            f"print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def heavy(loaded: list[str]) -> list[str]:
    return [m for m in loaded if m not in TORCH_FREE and (
        m == "torch" or m.startswith(tuple(f"{h}." for h in HEAVY)) or m in HEAVY)]


def test_the_api_process_imports_no_torch():
    assert heavy(loaded_after_importing(API_MODULES)) == []


def test_the_ray_serve_ingress_and_replica_actors_import_no_torch():
    """The ingress and each replica actor relay events; only a replica's engine core
    process (spawned) loads the model."""
    import pytest
    pytest.importorskip("ray.serve", reason="the ray extra")
    assert heavy(loaded_after_importing(["preheat.scale.app", "preheat.scale.launch"])) == []


def test_the_check_sees_torch_where_it_is():
    """The engine's own modules do load torch: the test above could fail."""
    assert "torch" in heavy(loaded_after_importing(["preheat.engine.llm_engine"]))


def test_the_engine_vocabulary_is_all_there():
    for name in preheat.engine.__all__:
        assert getattr(preheat.engine, name) is not None
    assert {"GenerationRequest", "SamplingParams", "CacheBreakpoint", "Started", "TextDelta",
            "Finished", "EngineError", "EngineClient", "RequestStream",
            "EngineStats"} <= set(preheat.engine.__all__)
