"""Compile and load one of preheat's C++ kernels, once per machine and source version."""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)


ISA_LIMIT_ENV = "PREHEAT_KERNEL_ISA"
# What each build of the kernels needs of the CPU, by torch.cpu.get_capabilities()'s names.
_FEATURES = {
    "avx512_vnni": ("avx512_f", "avx512_bw", "avx512_vl", "avx512_vnni"),
    "avx512": ("avx512_f",),
    "avx2": ("avx2", "fma3", "f16c"),
}


def cpu_runs(isa: str) -> bool:
    """Whether a kernel may be built for ``isa`` ("avx512_vnni", "avx512" or "avx2") here: the
    CPU has it, and ``PREHEAT_KERNEL_ISA`` allows it ("avx2": no AVX-512 build, as on a CPU
    without it; "none": no kernel at all, PyTorch's paths throughout)."""
    import torch

    limit = os.environ.get(ISA_LIMIT_ENV, "").lower()
    if limit == "none" or (limit == "avx2" and isa != "avx2"):
        return False
    caps = torch.cpu.get_capabilities()
    return all(caps.get(f, False) for f in _FEATURES[isa])


def _put_ninja_on_path() -> None:
    if shutil.which("ninja") is None:
        import ninja  # torch's extension builder runs `ninja` from PATH; the wheel keeps it here

        os.environ["PATH"] = f"{ninja.BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}"


def build_kernel(prefix: str, source: Path, flags: list[str], *, what: str, fallback: str) -> bool:
    """Compile ``source`` with ``flags`` (or reuse an earlier build) and load it; False if that fails.

    The kernel registers its ops with ``TORCH_LIBRARY``/``TORCH_LIBRARY_FRAGMENT``: nothing is
    imported as a Python module. A failure (no compiler, a failed build) is logged once as
    "could not build the {what} (...): {fallback}", and the caller runs its slower path.
    """
    from torch.utils.cpp_extension import load

    _put_ninja_on_path()
    digest = hashlib.sha256(source.read_bytes() + " ".join(flags).encode()).hexdigest()[:12]
    try:
        # The name carries the source's hash: an edited kernel never loads a stale build.
        load(name=f"{prefix}_{digest}", sources=[str(source)], extra_cflags=flags,
             extra_ldflags=["-fopenmp"], is_python_module=False)
    except Exception as exc:  # slower, never broken
        logger.warning("could not build the %s (%s): %s", what, exc, fallback)
        return False
    return True
