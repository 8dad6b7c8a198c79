"""How much memory the KV pool takes and how much disk its disk tier may use.

Unless told a size, the pool takes a share of the memory that is free when the
engine starts (after the model is loaded): a quarter of available RAM on a CPU,
which the OS, the page cache and the disk tier's reads share with us, and most of
a GPU's free memory, which nothing else needs but activations. The disk tier takes
a quarter of the free space on its disk.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

CPU_MEMORY_SHARE = 0.25
GPU_MEMORY_SHARE = 0.8
DISK_SHARE = 0.25


@dataclass(frozen=True)
class PoolSize:
    num_blocks: int
    reason: str  # how the size was chosen, for the start-up log


def pool_size(*, tokens: int | None, nbytes: int | None, memory_share: float | None,
              block_size: int, bytes_per_block: int, device: torch.device) -> PoolSize:
    """Blocks in the pool: ``nbytes`` if set, else ``tokens``, else a share of free memory."""
    if nbytes is not None:
        return PoolSize(nbytes // bytes_per_block, "--kv-cache-bytes")
    if tokens is not None:
        return PoolSize(-(-tokens // block_size), "--kv-cache-tokens")
    default = GPU_MEMORY_SHARE if device.type == "cuda" else CPU_MEMORY_SHARE
    share = default if memory_share is None else memory_share
    if not 0 < share <= 1:
        raise ValueError(f"the KV cache's memory share must be in (0, 1], not {share}")
    free = free_memory(device)
    return PoolSize(int(free * share) // bytes_per_block,
                    f"{share:.0%} of the {free / 2**30:.1f} GiB of memory free at start")


def free_memory(device: torch.device) -> int:
    """Bytes this process could still use on ``device``."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return min(_meminfo_available(), _cgroup_headroom())


def _meminfo_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _cgroup_headroom() -> int:
    """A container's memory limit less what it uses (cgroup v2); unlimited otherwise."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return 1 << 62
    return 1 << 62 if limit == "max" else max(int(limit) - used, 0)


def disk_quota(root: Path, nbytes: int | None) -> int:
    """The disk tier's quota: ``nbytes`` if set, else a share of the free space under ``root``."""
    if nbytes is not None:
        return nbytes
    probe = root
    while not probe.exists():
        probe = probe.parent
    return int(shutil.disk_usage(probe).free * DISK_SHARE)
