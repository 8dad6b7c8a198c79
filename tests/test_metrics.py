"""GET /metrics, the access log and the drain, on the real app with a tiny random-weight engine.

The engine is a real one (tiny Llama, the embedded model's tokenizer, on a thread):
the series must move by exactly what the requests' ``usage`` says.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient
from tiny import tiny_config, tiny_weights

from preheat.config import EngineConfig
from preheat.engine.async_engine import AsyncEngine
from preheat.engine.llm_engine import LLMEngine
from preheat.loader.embedded import embedded_model_path
from preheat.models.llama import LlamaModel
from preheat.server.app import create_app
from preheat.server.auth import namespace_for
from preheat.server.request_record import tenant_hash
from preheat.server.settings import ServerSettings
from preheat.tokenizer.tokenizer import Tokenizer

KEY = "metrics-key"
MODEL = "tiny-metrics"
HEADERS = {"x-api-key": KEY}
SYSTEM = [{"type": "text", "text": "You are a terse assistant who answers in one line. " * 6,
           "cache_control": {"type": "ephemeral"}}]


@pytest.fixture(scope="module")
def engine():
    tokenizer = Tokenizer.from_gguf(embedded_model_path())
    cfg = tiny_config(vocab_size=tokenizer.vocab_size)
    model = LlamaModel(cfg, tiny_weights(cfg), torch.device("cpu"), torch.float32, "dense")
    config = EngineConfig(block_size=4, kv_cache_tokens=4096, max_step_tokens=64, kv_disk_bytes=0)
    engine = AsyncEngine(LLMEngine(model, tokenizer, config), MODEL)
    yield engine
    engine.shutdown()


@pytest.fixture
def app(engine):
    return create_app(engine, ServerSettings(api_keys=(KEY,), min_cache_tokens=16))


def body(max_tokens: int = 8, **fields) -> dict:
    return {"model": "claude-metrics", "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "Say hi."}], **fields}


def scrape(client: TestClient) -> list:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return [s for family in text_string_to_metric_families(response.text) for s in family.samples]


def value(samples: list, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(s.value for s in samples
               if s.name == name and labels.items() <= s.labels.items())


def streamed_usage(client: TestClient, request: dict) -> dict:
    """The final usage of a streamed reply (message_start's input figures, message_delta's output)."""
    events = {}
    with client.stream("POST", "/v1/messages", json={**request, "stream": True},
                       headers=HEADERS) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
                events[data["type"]] = data
    return {**events["message_start"]["message"]["usage"], **events["message_delta"]["usage"]}


def test_metrics_need_no_key_and_show_the_engine(app, engine):
    with TestClient(app) as client:
        assert client.post("/v1/messages", json=body()).status_code == 401
        samples = scrape(client)
    stats = engine.engine.stats()
    assert value(samples, "preheat_engine_up") == 1
    assert value(samples, "preheat_kv_pool_blocks") == stats.total_blocks
    assert value(samples, "preheat_kv_block_size_tokens") == 4
    assert value(samples, "preheat_requests_total", endpoint="/v1/messages", status="401") == 1
    for name in ("preheat_kv_blocks_used", "preheat_kv_blocks_cached", "preheat_kv_blocks_pinned",
                 "preheat_kv_disk_entries", "preheat_queue_depth", "preheat_running_sequences",
                 "preheat_preemptions_total", "preheat_aborts_total"):
        assert any(s.name == name for s in samples), name


def test_requests_move_tokens_and_latencies_by_their_usage(app):
    with TestClient(app) as client:
        first = client.post("/v1/messages", json=body(system=SYSTEM), headers=HEADERS).json()
        second = streamed_usage(client, body(system=SYSTEM))
        samples = scrape(client)
    usages = [first["usage"], second]
    assert usages[0]["cache_creation_input_tokens"] > 0 and usages[1]["cache_read_input_tokens"] > 0
    labels = {"endpoint": "/v1/messages", "model": MODEL}
    for kind, field in (("cache_read", "cache_read_input_tokens"),
                        ("cache_write", "cache_creation_input_tokens"), ("input", "input_tokens")):
        assert value(samples, "preheat_prompt_tokens_total", kind=kind, **labels) == \
            sum(u[field] for u in usages), kind
    output = sum(u["output_tokens"] for u in usages)
    assert value(samples, "preheat_output_tokens_total", **labels) == output
    assert value(samples, "preheat_requests_total", status="200", **labels) == 2
    assert value(samples, "preheat_time_to_first_token_seconds_count", **labels) == 2
    assert value(samples, "preheat_request_duration_seconds_count", **labels) == 2
    # every token after a request's first is a gap, unless it came only with the end
    assert 0 < value(samples, "preheat_inter_token_latency_seconds_count", **labels) <= output - 2
    read = sum(u["cache_read_input_tokens"] for u in usages)
    total = sum(u["cache_read_input_tokens"] + u["cache_creation_input_tokens"] + u["input_tokens"]
                for u in usages)
    assert value(samples, "preheat_prompt_cache_hit_ratio") == pytest.approx(read / total)


def test_each_app_counts_only_its_own_requests(engine, app):
    other = create_app(engine, ServerSettings(api_keys=(KEY,)))
    with TestClient(app) as client, TestClient(other) as other_client:
        client.post("/v1/messages", json=body(), headers=HEADERS)
        assert value(scrape(client), "preheat_requests_total") == 1
        assert value(scrape(other_client), "preheat_requests_total") == 0


def test_errors_are_counted_with_their_status_and_no_model_they_did_not_name(app):
    with TestClient(app) as client:
        assert client.post("/v1/messages", json=body(model="gpt-4"), headers=HEADERS).status_code == 404
        assert client.post("/v1/messages", json=body(max_tokens=-1), headers=HEADERS).status_code == 400
        assert client.get("/v1/models/claude-x", headers=HEADERS).status_code == 200
        samples = scrape(client)
    assert value(samples, "preheat_requests_total", endpoint="/v1/messages", model="",
                 status="404") == 1
    assert value(samples, "preheat_requests_total", endpoint="/v1/messages", status="400") == 1
    assert value(samples, "preheat_requests_total", endpoint="/v1/models/{model_id:path}",
                 status="200") == 1
    assert value(samples, "preheat_request_duration_seconds_count") == 0  # none reached the engine


def access_lines(caplog) -> dict[str, dict[str, str]]:
    """Access-log lines by request id, each parsed into its fields."""
    lines = {}
    for rec in caplog.records:
        if rec.name == "preheat.access":
            fields = {k: json.loads(v) if v.startswith('"') else v
                      for k, v in re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', rec.getMessage())}
            lines[fields["request_id"]] = fields
    return lines


def test_the_access_log_has_one_line_per_request_with_its_facts(app, caplog):
    caplog.set_level(logging.INFO, logger="preheat.access")
    with TestClient(app) as client:
        ok = client.post("/v1/messages", json=body(system=SYSTEM), headers=HEADERS)
        missing_key = client.post("/v1/messages", json=body())
        unknown = client.post("/v1/messages", json=body(model="gpt-4"), headers=HEADERS)
        client.get("/health")
        client.get("/metrics")
    lines = access_lines(caplog)
    assert len(lines) == 3  # probes and scrapes are not logged
    line, usage = lines[ok.headers["request-id"]], ok.json()["usage"]
    assert line["tenant"] == tenant_hash(namespace_for(KEY)) and KEY not in str(line)
    assert (line["method"], line["endpoint"], line["model"], line["stream"], line["status"]) == \
        ("POST", "/v1/messages", "claude-metrics", "false", "200")
    assert int(line["cache_write_tokens"]) == usage["cache_creation_input_tokens"]
    assert int(line["cache_read_tokens"]) == usage["cache_read_input_tokens"]
    assert int(line["input_tokens"]) == usage["input_tokens"]
    assert int(line["prompt_tokens"]) == (usage["input_tokens"] + usage["cache_read_input_tokens"]
                                          + usage["cache_creation_input_tokens"])
    assert int(line["output_tokens"]) == usage["output_tokens"]
    assert 0 < float(line["ttft_ms"]) <= float(line["total_ms"])
    assert line["stop_reason"] in ("eos", "max_tokens")
    refused = lines[missing_key.headers["request-id"]]
    assert (refused["status"], refused["tenant"], refused["output_tokens"]) == ("401", "-", "-")
    assert lines[unknown.headers["request-id"]]["model"] == "gpt-4"


# ---- draining, on the app's ASGI interface (a test client would buffer the stream) ----


class Call:
    """One request sent straight to the ASGI app; ``hang_up()`` disconnects the client."""

    def __init__(self, app, request: dict):
        self.app, self.payload = app, json.dumps(request).encode()
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.body = b""
        self.started = asyncio.Event()  # some body has arrived
        self._gone = asyncio.Event()
        self._asked = False

    def hang_up(self) -> None:
        self._gone.set()

    async def run(self) -> Call:
        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
                 "http_version": "1.1", "method": "POST", "scheme": "http",
                 "path": "/v1/messages", "raw_path": b"/v1/messages", "query_string": b"",
                 "root_path": "", "client": ("127.0.0.1", 1), "server": ("test", 80),
                 "headers": [(b"x-api-key", KEY.encode()), (b"content-type", b"application/json"),
                             (b"content-length", str(len(self.payload)).encode())]}
        await self.app(scope, self._receive, self._send)
        return self

    async def _receive(self) -> dict:
        if not self._asked:
            self._asked = True
            return {"type": "http.request", "body": self.payload, "more_body": False}
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message.get("body"):
            self.body += message["body"]
            if b"content_block_delta" in self.body:
                self.started.set()

    def events(self) -> list[tuple[str, dict]]:
        frames = [f.split("\n") for f in self.body.decode().strip().split("\n\n")]
        return [(e.removeprefix("event: "), json.loads(d.removeprefix("data: "))) for e, d in frames]


async def scrape_async(app) -> list:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        text = (await c.get("/metrics")).text
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


async def until(condition, timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def test_while_draining_new_requests_get_529_and_probes_say_so(app):
    with TestClient(app) as client:
        app.state.drain.begin()
        refused = client.post("/v1/messages", json=body(), headers=HEADERS)
        health = client.get("/health")
        samples = scrape(client)
    assert refused.status_code == 529 and refused.headers["retry-after"]
    assert refused.json()["error"]["type"] == "overloaded_error"
    assert "shutting down" in refused.json()["error"]["message"]
    assert refused.json()["request_id"] == refused.headers["request-id"]
    assert (health.status_code, health.json()["status"]) == (503, "shutting_down")
    assert value(samples, "preheat_requests_total", endpoint="/v1/messages", status="529") == 1


async def test_ending_the_rest_sends_streams_an_error_event_and_frees_the_engine(app, engine):
    drain = app.state.drain
    stream = Call(app, body(max_tokens=900, stream=True))
    plain = Call(app, body(max_tokens=900))
    tasks = [asyncio.create_task(stream.run()), asyncio.create_task(plain.run())]
    await asyncio.wait_for(stream.started.wait(), 60)
    await until(lambda: engine.engine.stats().running == 2)
    drain.begin()
    assert not await drain.wait_idle(0.1)
    assert drain.end_rest("the server is shutting down: ended") == 2
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    assert await drain.wait_idle(0)
    kind, data = stream.events()[-1]
    assert kind == "error" and data["error"] == {"type": "overloaded_error",
                                                 "message": "the server is shutting down: ended"}
    assert plain.status == 529 and plain.headers["retry-after"]
    assert json.loads(plain.body)["error"]["type"] == "overloaded_error"
    await until(lambda: engine.engine.stats().running == 0)  # both were aborted in the engine
    samples = await scrape_async(app)
    assert value(samples, "preheat_requests_total", endpoint="/v1/messages", status="529") == 2


async def test_a_client_that_hangs_up_mid_stream_is_a_499(app, engine, caplog):
    caplog.set_level(logging.INFO, logger="preheat.access")
    call = Call(app, body(max_tokens=900, stream=True))
    task = asyncio.create_task(call.run())
    await asyncio.wait_for(call.started.wait(), 60)
    call.hang_up()
    await asyncio.wait_for(task, 60)
    await until(lambda: engine.engine.stats().running == 0)
    (line,) = access_lines(caplog).values()
    assert line["status"] == "499" and line["stream"] == "true"
    assert int(line["output_tokens"]) > 0 and line["stop_reason"] == "-"
