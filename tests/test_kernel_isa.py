"""The kernels build for the instruction set the CPU has, and PREHEAT_KERNEL_ISA narrows it.

Each build is tested where it runs: an AVX-512 machine runs the kernel tests again on the
AVX2 build (in a child process, since a process registers one build of the ops), and every
machine checks that with no kernel at all a GGUF runs on PyTorch's paths.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from preheat.kernels.build import AVX512, ISA_LIMIT_ENV, cpu_runs

TESTS = Path(__file__).parent


def run_python(code: str, limit: str) -> str:
    env = {**os.environ, ISA_LIMIT_ENV: limit}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_without_kernels_a_quantized_file_runs_dense_on_pytorch():
    out = run_python(
        "from preheat.kernels.quant_matmul import kernel_isa, load_quant_kernel\n"
        "from preheat.kernels.paged_attention import load_attention_kernel\n"
        "from preheat.loader.model_loader import load_model\n"
        "import torch\n"
        "model = load_model().build(torch.device('cpu'), torch.float32, 'auto')\n"
        "print(kernel_isa(), load_quant_kernel(), load_attention_kernel(), model.weight_format)\n",
        limit="none")
    assert out.splitlines()[-1] == "None False False dense"


@pytest.mark.skipif(not cpu_runs(AVX512), reason="this CPU's kernels are AVX2 builds: the kernel tests run them")
def test_the_avx2_build_passes_the_kernel_tests_on_an_avx512_cpu():
    assert run_python("from preheat.kernels.quant_matmul import kernel_isa; print(kernel_isa())",
                      limit="avx2") == "AVX2"
    env = {**os.environ, ISA_LIMIT_ENV: "avx2"}
    files = [str(TESTS / f"test_{name}.py") for name in ("quant_matmul", "gguf_repack", "paged_attention",
                                                         "decode_stack")]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
                          env=env, capture_output=True, text=True, timeout=1200, cwd=TESTS.parent)
    assert done.returncode == 0, done.stdout[-4000:]
    assert " skipped" not in done.stdout.splitlines()[-1], done.stdout.splitlines()[-1]
