"""Message threads (beta ``message-threads-2026-08-12``) through the SDK's own helpers."""
from __future__ import annotations

import asyncio
import json
import time

import anthropic
import httpx
import pytest
from e2e_helpers import ALIAS, KEY_A, KEY_B, MAIN_SERVER_ARGS, start_server

THREADS = "message-threads-2026-08-12"
GREEDY = {"temperature": 0}


class Recorder:
    """The JSON bodies a client sent, in order."""

    def __init__(self):
        self.bodies: list[dict] = []

    def __call__(self, request) -> None:
        if request.url.path.endswith("/v1/messages"):
            self.bodies.append(json.loads(request.content))


def recording_client(server, key=KEY_A) -> tuple[anthropic.Anthropic, Recorder]:
    recorder = Recorder()
    http = anthropic.DefaultHttpxClient(event_hooks={"request": [recorder]}, timeout=120)
    return anthropic.Anthropic(base_url=server.base_url, api_key=key, max_retries=0,
                               http_client=http), recorder


def test_the_thread_helper_sends_each_turn_once_and_gets_the_full_history_reply(server, client):
    threaded, sent = recording_client(server)
    thread = threaded.beta.messages.thread(model=ALIAS, max_tokens=24,
                                           system="You are a terse assistant.")
    questions = ["Name a colour.", "Name a fruit of that colour.", "Name an animal."]
    replies = [thread.send({"role": "user", "content": q}, extra_body=GREEDY) for q in questions]
    assert [b["thread"]["type"] for b in sent.bodies] == ["create", "continue", "continue"]
    for body, reply in zip(sent.bodies[1:], replies, strict=False):
        assert body["thread"]["previous_message_id"] == reply.id
        assert len(body["messages"]) == 1 and "system" not in body
    # the same conversation sent whole, unthreaded, gets the same greedy reply
    history = []
    for question, reply in zip(questions, replies, strict=True):
        history.append({"role": "user", "content": question})
        whole = client.messages.create(model=ALIAS, max_tokens=24, messages=history,
                                       system="You are a terse assistant.", extra_body=GREEDY)
        assert whole.content[0].text == reply.content[0].text
        history.append({"role": "assistant", "content": reply.content})


async def test_async_threads_stream(server):
    client = anthropic.AsyncAnthropic(base_url=server.base_url, api_key=KEY_A, max_retries=0)
    thread = client.beta.messages.thread(model=ALIAS, max_tokens=16)
    texts = []
    for question in ("Hello!", "Say more.", "And more."):
        async with thread.stream({"role": "user", "content": question}) as stream:
            texts.append("".join([piece async for piece in stream.text_stream]))
            final = await stream.get_final_message()
        assert final.content[0].text == texts[-1] and thread.previous_message_id == final.id
    assert all(texts)


def http_post(server, body: dict, key=KEY_A) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/messages?beta=true", json=body, timeout=120,
                      headers={"x-api-key": key, "anthropic-beta": f"tools-x, {THREADS}"})


def ask(thread: dict, content: str = "Hi there.", **fields) -> dict:
    return {"model": ALIAS, "max_tokens": 8, "temperature": 0, "thread": thread,
            "messages": [{"role": "user", "content": content}], **fields}


def error_code(response: httpx.Response) -> tuple[int, str | None, str]:
    error = response.json()["error"]
    return response.status_code, error.get("details", {}).get("error_code"), error["type"]


def test_raw_create_continue_and_every_error(server):
    first = http_post(server, ask({"type": "create"}, system="Be brief."))
    assert first.status_code == 200, first.text
    after = {"type": "continue", "previous_message_id": first.json()["id"]}
    second = http_post(server, ask(after, "And then?"))
    assert second.status_code == 200, second.text
    assert error_code(http_post(server, ask(after))) == (
        400, "thread_already_continued", "invalid_request_error")
    unknown = {"type": "continue", "previous_message_id": "msg_unknown"}
    assert error_code(http_post(server, ask(unknown))) == (
        404, "thread_not_found", "not_found_error")
    latest = {"type": "continue", "previous_message_id": second.json()["id"]}
    assert error_code(http_post(server, ask(latest), key=KEY_B))[1] == "thread_not_found"
    repeated = http_post(server, ask(latest, system="Another system."))
    assert repeated.status_code == 400 and "system" in repeated.json()["error"]["message"]
    prefilled = ask({"type": "create"})
    prefilled["messages"].append({"role": "assistant", "content": "Well"})
    response = http_post(server, prefilled)
    assert error_code(response)[:2] == (400, "thread_unsupported_request")
    assert response.json()["error"]["details"]["unsupported"] == ["prefill"]
    # the failed requests above left the latest turn continuable
    assert http_post(server, ask(latest)).status_code == 200


async def test_a_second_continue_while_one_runs_is_refused(server):
    first = http_post(server, ask({"type": "create"}))
    after = {"type": "continue", "previous_message_id": first.json()["id"]}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=120,
                                 headers={"x-api-key": KEY_A}) as http:
        async with http.stream("POST", "/v1/messages", json=ask(
                after, "Write a long story.", max_tokens=300, stream=True)) as running:
            assert running.status_code == 200
            lines = running.aiter_lines()
            await lines.__anext__()  # it has started
            second = await http.post("/v1/messages", json=ask(after))
            assert error_code(second)[:2] == (400, "thread_continue_in_flight")
            assert "message_stop" in [line async for line in lines][-3]
    # the finished continue spent the turn
    assert error_code(http_post(server, ask(after)))[1] == "thread_already_continued"


@pytest.fixture(scope="module")
def short_lived(server_logs):
    """A server whose thread turns expire 3 s after they are stored (a continue comes within
    milliseconds of the reply it continues), with room for a 20-turn conversation."""
    srv = start_server(server_logs, "threads", [*MAIN_SERVER_ARGS, "--thread-ttl-seconds", "3",
                                                "--context-window", "4096"])
    yield srv
    srv.stop()


def test_the_tool_runner_runs_a_twenty_turn_agent_loop(short_lived):
    calls = []

    @anthropic.beta_tool
    def add_one(number: int) -> str:
        """Add one to a number.

        Args:
            number: the number to add one to
        """
        calls.append(number)
        return str(number + 1)

    runner_client, sent = recording_client(short_lived)
    runner = runner_client.beta.messages.tool_runner(
        model=ALIAS, max_tokens=64, tools=[add_one], max_iterations=20,
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        messages=[{"role": "user", "content": "Start at 1 and keep adding one."}],
        extra_body=GREEDY)
    replies = list(runner)
    assert len(replies) == 20 and all(r.stop_reason == "tool_use" for r in replies)
    assert len(calls) >= 19
    kinds = [b["thread"]["type"] for b in sent.bodies]
    assert kinds == ["create"] + ["continue"] * 19
    assert all(len(b["messages"]) == 1 for b in sent.bodies[1:])


def test_an_expired_thread_is_not_found_and_the_sdk_replays_it(short_lived):
    threaded, sent = recording_client(short_lived)
    thread = threaded.beta.messages.thread(model=ALIAS, max_tokens=8)
    thread.send({"role": "user", "content": "Hello."}, extra_body=GREEDY)
    time.sleep(4)
    after = {"type": "continue", "previous_message_id": thread.previous_message_id}
    assert error_code(http_post(short_lived, ask(after)))[1] == "thread_not_found"
    reply = thread.send({"role": "user", "content": "Still there?"}, extra_body=GREEDY)
    assert reply.content
    # continue, not found, then the whole conversation again under a new thread
    assert [b["thread"]["type"] for b in sent.bodies] == ["create", "continue", "create"]
    assert len(sent.bodies[-1]["messages"]) == 3


def test_threads_do_not_survive_a_restart(server_logs):
    first = start_server(server_logs, "threads-restart", MAIN_SERVER_ARGS)
    try:
        created = http_post(first, ask({"type": "create"}))
        after = {"type": "continue", "previous_message_id": created.json()["id"]}
    finally:
        first.stop()
    again = start_server(server_logs, "threads-restart-2", MAIN_SERVER_ARGS)
    try:
        assert error_code(http_post(again, ask(after)))[1] == "thread_not_found"
    finally:
        again.stop()


async def test_threads_run_concurrently(server):
    """Several threads at once, each continued twice."""
    client = anthropic.AsyncAnthropic(base_url=server.base_url, api_key=KEY_A, max_retries=0)

    async def converse(i: int) -> int:
        thread = client.beta.messages.thread(model=ALIAS, max_tokens=8)
        for turn in range(3):
            await thread.send({"role": "user", "content": f"Thread {i}, turn {turn}."})
        return len(thread.messages)

    assert await asyncio.gather(*[converse(i) for i in range(4)]) == [6] * 4


def test_the_beta_surface(client):
    message = client.beta.messages.create(model=ALIAS, max_tokens=4, betas=["tools-x", THREADS],
                                          messages=[{"role": "user", "content": "Hi"}])
    assert message.content and message.usage.output_tokens > 0

    from pydantic import BaseModel

    class Answer(BaseModel):
        yes: bool

    parsed = client.beta.messages.parse(model=ALIAS, max_tokens=20, output_format=Answer,
                                        messages=[{"role": "user", "content": "Is it?"}])
    assert isinstance(parsed.content[0].parsed_output, Answer)
    edited = client.beta.messages.create(model=ALIAS, max_tokens=4, messages=[
        {"role": "user", "content": "Hi"}], context_management={"edits": []})
    assert edited.context_management.applied_edits == []


def test_an_empty_reply_is_continued_not_replayed(server, client):
    """A reply the API would refuse in a replayed history (here empty: a stop sequence at
    its first character) still continues from the thread's tokens."""
    question = {"role": "user", "content": "Name a colour."}
    first = client.messages.create(model=ALIAS, max_tokens=8, messages=[question], extra_body=GREEDY)
    threaded, sent = recording_client(server)
    thread = threaded.beta.messages.thread(model=ALIAS, max_tokens=8)
    empty = thread.send(question, extra_body={**GREEDY, "stop_sequences": [first.content[0].text[0]]})
    assert empty.stop_reason == "stop_sequence" and "".join(b.text for b in empty.content).strip() == ""
    reply = thread.send({"role": "user", "content": "Name another."}, extra_body=GREEDY)
    assert [b["thread"]["type"] for b in sent.bodies] == ["create", "continue"]
    assert sent.bodies[1]["thread"]["previous_message_id"] == empty.id
    assert reply.content[0].text.strip()
