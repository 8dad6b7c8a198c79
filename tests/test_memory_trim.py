"""The API process trims its heap once after each busy period, never while requests run."""
import asyncio

from preheat.server.memory_trim import MemoryTrimmer


async def test_trims_once_after_each_busy_period_and_never_while_busy():
    in_flight, trims = [1], []
    trimmer = MemoryTrimmer(lambda: in_flight[0], idle_seconds=0.001,
                            trim=lambda: trims.append(in_flight[0]))
    task = asyncio.create_task(trimmer.run())
    try:
        for _ in range(20):  # busy: no trim
            await asyncio.sleep(0.002)
        assert trims == []
        in_flight[0] = 0
        for _ in range(1000):
            if trims:
                break
            await asyncio.sleep(0.002)
        for _ in range(20):  # still idle: no second trim
            await asyncio.sleep(0.002)
        assert trims == [0] and trimmer.trims == 1
    finally:
        task.cancel()


def test_the_real_trim_runs_here():
    trimmer = MemoryTrimmer(lambda: 0)
    assert trimmer._trim is not None  # glibc: this machine and CI
    trimmer._trim()
