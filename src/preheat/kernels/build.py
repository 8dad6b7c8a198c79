"""Compile and load one of preheat's C++ kernels, once per machine and source version."""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


ISA_LIMIT_ENV = "PREHEAT_KERNEL_ISA"


@dataclass(frozen=True)
class Isa:
    """An instruction set a kernel builds for: what the CPU must have (torch.cpu's names)
    and the compiler flags that target it."""

    name: str
    features: tuple[str, ...]
    flags: tuple[str, ...]


AVX512_VNNI = Isa("AVX-512 VNNI", ("avx512_f", "avx512_bw", "avx512_vl", "avx512_vnni"),
                  ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mf16c", "-mfma"))
AVX512 = Isa("AVX-512", ("avx512_f",), ("-mavx512f", "-mf16c", "-mfma"))
AVX2 = Isa("AVX2", ("avx2", "fma3", "f16c"), ("-mavx2", "-mf16c", "-mfma"))


def cpu_runs(isa: Isa) -> bool:
    """Whether a kernel may be built for ``isa`` here: the CPU has it, and
    ``PREHEAT_KERNEL_ISA`` allows it ("avx2": no AVX-512 build, as on a CPU without it;
    "none": no kernel at all, PyTorch's paths throughout)."""
    import torch

    limit = os.environ.get(ISA_LIMIT_ENV, "").lower()
    if limit == "none" or (limit == "avx2" and isa != AVX2):
        return False
    caps = torch.cpu.get_capabilities()
    return all(caps.get(f, False) for f in isa.features)


def widest(*choices: Isa) -> Isa | None:
    """The first of ``choices`` (widest first) that ``cpu_runs``, or None."""
    return next((isa for isa in choices if cpu_runs(isa)), None)


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
