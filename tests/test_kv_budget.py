"""Sizing the KV pool and the disk tier."""
import shutil

import pytest
import torch

from preheat.engine.kv import kv_budget
from preheat.engine.kv.kv_budget import disk_quota, pool_size

CPU = torch.device("cpu")
BLOCK = 1000  # bytes a block


def size(**kw):
    args = {"tokens": None, "nbytes": None, "memory_share": None, "block_size": 16,
            "bytes_per_block": BLOCK, "device": CPU, **kw}
    return pool_size(**args)


def test_bytes_then_tokens_then_a_share_of_free_memory(monkeypatch):
    monkeypatch.setattr(kv_budget, "free_memory", lambda device: 8_000_000)
    assert size(nbytes=50_500, tokens=64).num_blocks == 50  # bytes win
    assert size(tokens=65).num_blocks == 5  # whole blocks, rounded up
    default = size()
    assert default.num_blocks == 8_000_000 * kv_budget.CPU_MEMORY_SHARE // BLOCK
    assert "25% of the" in default.reason
    assert size(memory_share=0.5).num_blocks == 4000


@pytest.mark.parametrize("share", [0, -0.1, 1.5])
def test_a_share_outside_0_1_is_refused(monkeypatch, share):
    monkeypatch.setattr(kv_budget, "free_memory", lambda device: 8_000_000)
    with pytest.raises(ValueError, match="memory share"):
        size(memory_share=share)


def test_free_memory_is_positive_and_below_the_machine_total():
    free = kv_budget.free_memory(CPU)
    total = kv_budget._meminfo_available()
    assert 0 < free <= total


def test_disk_quota_is_given_or_a_share_of_free_space(tmp_path):
    assert disk_quota(tmp_path / "not" / "yet", 123) == 123
    quota = disk_quota(tmp_path / "not" / "yet", None)  # measured on the nearest existing parent
    assert 0 < quota <= shutil.disk_usage(tmp_path).free * kv_budget.DISK_SHARE * 1.01
