"""The engine core in its own process, driven through ``EngineProcess`` on the embedded model."""
from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest

from engine_driver import run
from preheat.config import EngineConfig
from preheat.engine.engine_process import EngineProcess, EngineStartError
from preheat.engine.errors import (EngineOverloadedError, EngineStoppedError, PromptTooLongError,
                                   RequestTooLargeError)
from preheat.engine.llm_engine import build_engine
from preheat.engine.output import Finished, Started, TextDelta
from preheat.engine.request import CacheBreakpoint, GenerationRequest, SamplingParams

# One event loop for the module: the shared core reads its pipe from the loop that first used it.
pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

CONFIG = EngineConfig(kv_disk_bytes=0, kv_cache_tokens=4096, max_step_tokens=128)
GREEDY = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def core():
    engine = EngineProcess.start(CONFIG)
    yield engine
    engine.shutdown()


def prompt(tokenizer, question: str) -> list[int]:
    return tokenizer.encode_prompt(tokenizer.render_chat([{"role": "user", "content": question}]))[0]


async def collect(stream) -> tuple[list, Finished]:
    events = [event async for event in stream]
    assert isinstance(events[-1], Finished)
    return events, events[-1]


async def test_concurrent_requests_match_the_in_process_engine(core, embedded_model):
    questions = ["What is the capital of France?", "Name three colours.", "Count to five."]
    ids = [prompt(core.tokenizer, q) for q in questions]
    streams = [await core.submit(GenerationRequest(i, GREEDY)) for i in ids]
    results = await asyncio.gather(*(collect(s) for s in streams))
    local = build_engine(CONFIG, loaded=embedded_model)[0]
    expected = run(local, [GenerationRequest(i, GREEDY) for i in ids])
    for (events, final), want in zip(results, expected, strict=True):
        assert isinstance(events[0], Started) and events[0].usage.prompt_tokens == final.usage.prompt_tokens
        assert final.output_ids == want.output_ids and final.text == want.text
        assert "".join(e.text for e in events if isinstance(e, TextDelta)) == final.text


async def test_cache_accounting_crosses_the_pipe(core):
    ids = prompt(core.tokenizer, "Summarise: " + "a cat sat on the mat. " * 40)
    bp = (CacheBreakpoint(len(ids) - 4, 300.0),)
    first = await core.submit(GenerationRequest(ids, GREEDY, namespace="n", breakpoints=bp))
    _, cold = await collect(first)
    second = await core.submit(GenerationRequest(ids, GREEDY, namespace="n", breakpoints=bp))
    _, hit = await collect(second)
    assert cold.usage.cache_write_tokens == len(ids) - 4 == hit.usage.cache_read_tokens
    assert hit.output_ids == cold.output_ids
    assert (await core.stats()).pinned_blocks > 0


async def test_refusals_keep_their_type_and_message(core):
    with pytest.raises(PromptTooLongError) as err:
        await core.submit(GenerationRequest([1] * 9000, GREEDY))
    assert err.value.prompt_tokens == 9000 and "context window" in str(err.value)
    with pytest.raises(RequestTooLargeError):
        await core.submit(GenerationRequest([1] * 10, SamplingParams(max_tokens=5000)))


async def test_abort_frees_the_sequence(core):
    stream = await core.submit(GenerationRequest(prompt(core.tokenizer, "Tell me a long story."),
                                                 SamplingParams(max_tokens=2000, temperature=0)))
    async for event in stream:
        if isinstance(event, TextDelta):
            break
    aborted_before = (await core.stats()).aborted
    stream.abort()
    for _ in range(200):
        stats = await core.stats()
        if stats.running == 0 and stats.aborted == aborted_before + 1:
            break
        await asyncio.sleep(0.05)
    assert stats.running == 0 and stats.waiting == 0 and stats.aborted == aborted_before + 1


async def test_an_interactive_request_stops_the_running_step_of_batch_work(core):
    """Across the process boundary: the API side counts interactive requests only, and the
    core stops a step of batch work once the count moves; no token of either changes."""
    story = prompt(core.tokenizer, "Tell me a long story about a lighthouse.")
    long = SamplingParams(max_tokens=300, temperature=0, ignore_eos=True)
    _, want = await collect(await core.submit(GenerationRequest(story, long)))
    question = prompt(core.tokenizer, "What is two plus two?")
    short = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    _, answer = await collect(await core.submit(GenerationRequest(question, short)))
    counted, stopped = core.arrivals.count, (await core.stats()).interrupted_steps
    batch = asyncio.create_task(collect(await core.submit(GenerationRequest(story, long, background=True))))
    assert core.arrivals.count == counted  # batch work is not counted
    _, got = await collect(await core.submit(GenerationRequest(question, short)))
    assert got.output_ids == answer.output_ids and core.arrivals.count == counted + 1
    # A real arrival lands inside a step or between two, as timing has it; arrivals counted
    # back to back (requests that are never sent) land inside one for certain.
    pumping = threading.Event()
    pumping.set()

    def pump() -> None:
        while pumping.is_set():
            core.arrivals.arrived(GenerationRequest(question, short))
            time.sleep(0.0002)

    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()
    try:
        while (await core.stats()).interrupted_steps == stopped and not batch.done():
            await asyncio.sleep(0.01)
    finally:
        pumping.clear()
        pumper.join()
    assert (await core.stats()).interrupted_steps > stopped
    _, done = await batch
    assert done.output_ids == want.output_ids


async def test_a_burst_larger_than_the_pipe_waits_for_the_core_instead_of_failing_it(core):
    """Requests whose prompts overflow the pipe while the core is busy (here: stopped) wait
    in the API process's buffer: the engine is not taken for dead, and every one completes."""
    ids = prompt(core.tokenizer, "Repeat after me: " + "lighthouse keeper " * 1400)
    params = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)
    _, want = await collect(await core.submit(GenerationRequest(ids, params)))
    restarts = core.restarts
    os.kill(core.pid, signal.SIGSTOP)
    try:
        # ~9 KB a request pickled: 64 of them are more than a socket pair's buffer holds
        submits = [asyncio.create_task(core.submit(GenerationRequest(ids, params)))
                   for _ in range(64)]
        await asyncio.sleep(0.5)  # every send is made (or queued) while the core is stopped
        assert not core.restarting and core.restarts == restarts
        assert not any(task.done() for task in submits)
    finally:
        os.kill(core.pid, signal.SIGCONT)
    results = await asyncio.gather(*[collect(stream) for stream in await asyncio.gather(*submits)])
    assert [final.output_ids for _, final in results] == [want.output_ids] * 64
    assert core.restarts == restarts and not core.failed


async def test_without_restart_a_dead_core_ends_streams_and_the_engine():
    engine = EngineProcess.start(CONFIG, restart=False)
    failures = []
    engine.on_failure = lambda: failures.append(True)
    try:
        stream = await engine.submit(GenerationRequest(prompt(engine.tokenizer, "Tell me a story."),
                                                       SamplingParams(max_tokens=4000, temperature=0)))
        os.kill(engine._process.pid, signal.SIGKILL)
        with pytest.raises(EngineStoppedError):
            async for _ in stream:
                pass
        assert engine.failed and failures == [True]
        with pytest.raises(EngineStoppedError):
            await engine.submit(GenerationRequest([1, 2, 3], GREEDY))
    finally:
        engine.shutdown()


async def test_a_model_that_cannot_load_is_reported(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(EngineStartError):
        EngineProcess.start(EngineConfig(model=str(bad), kv_disk_bytes=0))


async def test_a_dead_core_is_restarted_in_place_and_pinned_prefixes_come_back(tmp_path):
    config = EngineConfig(kv_cache_tokens=4096, max_step_tokens=128, kv_disk_dir=tmp_path,
                          kv_disk_bytes=1 << 30, cache_dir=None)
    engine = EngineProcess.start(config)
    failures = []
    engine.on_failure = lambda: failures.append(True)
    try:
        ids = prompt(engine.tokenizer, "Summarise: " + "the dog ran in the park. " * 30)
        bp = (CacheBreakpoint(len(ids) - 4, 3600.0),)
        _, cold = await collect(await engine.submit(GenerationRequest(ids, GREEDY, breakpoints=bp)))
        await asyncio.sleep(1)  # the pin's disk copy is written on idle CPU
        stream = await engine.submit(GenerationRequest(prompt(engine.tokenizer, "Tell me a story."),
                                                       SamplingParams(max_tokens=4000, temperature=0)))
        os.kill(engine._process.pid, signal.SIGKILL)
        with pytest.raises(EngineStoppedError, match="restarting"):
            async for _ in stream:
                pass
        assert engine.restarting and not failures
        with pytest.raises(EngineOverloadedError):  # refused while the new core loads (a 529)
            await engine.submit(GenerationRequest([1, 2, 3], GREEDY))
        for _ in range(1200):
            if not engine.restarting:
                break
            await asyncio.sleep(0.1)
        assert not engine.restarting and engine.restarts == 1 and not engine.failed
        _, hit = await collect(await engine.submit(GenerationRequest(ids, GREEDY, breakpoints=bp)))
        assert hit.usage.cache_read_tokens == len(ids) - 4 and hit.output_ids == cold.output_ids
        assert (await engine.stats()).disk_reads == 1  # read back from the disk tier
    finally:
        engine.shutdown()
