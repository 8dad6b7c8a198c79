"""Rotary tables that grow with the positions used hold exactly what whole ones do."""
import torch

from preheat.layers.rotary import RotaryEmbedding


def test_grown_tables_equal_whole_tables():
    cpu = RotaryEmbedding(64, 20000, 1e6, {"rope_type": "linear", "factor": 8.0}, torch.device("cpu"),
                          torch.float32)
    assert len(cpu.cos) == 4096  # nothing past the first positions until they are used
    positions = torch.tensor([0, 5, 4095, 4096, 9000, 19999])
    grown = cpu.tables(positions)
    assert len(cpu.cos) == 20000
    whole = RotaryEmbedding(64, 20000, 1e6, {"rope_type": "linear", "factor": 8.0}, torch.device("meta"),
                            torch.float32)
    assert len(whole.cos) == 20000  # other devices: all at once (no host sync per step)
    freqs = torch.outer(positions.double(), whole.inv_freq)
    want_cos = torch.cat((freqs.cos(), freqs.cos()), dim=-1).float().unsqueeze(1)
    assert torch.equal(grown[0], want_cos)
    assert torch.equal(cpu.tables(torch.tensor([7]))[1], cpu.sin[7].view(1, 1, -1))
