"""The 0.3x SDK most tutorials use (``anthropic==0.34.2``): streaming, beta prompt caching
and a streamed tool call.

It needs ``httpx<0.28`` so it lives in a venv of its own; ``make test`` creates
it and exports ``PREHEAT_OLD_SDK_PYTHON``.
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest
from e2e_helpers import ALIAS, KEY_A, document

OLD_SDK_PYTHON = os.environ.get("PREHEAT_OLD_SDK_PYTHON")

CLIENT_SCRIPT = r'''
import json, sys
import anthropic

base_url, key, model = sys.argv[1:4]
client = anthropic.Anthropic(base_url=base_url, api_key=key, max_retries=0)
system = [{"type": "text", "text": sys.stdin.read(), "cache_control": {"type": "ephemeral"}}]
messages = [{"role": "user", "content": "Which license is this?"}]
out = {"version": anthropic.__version__}
caching = client.beta.prompt_caching.messages
out["write"] = caching.create(model=model, max_tokens=4, temperature=0, system=system,
                              messages=messages).usage.model_dump()
out["read"] = caching.create(model=model, max_tokens=4, temperature=0, system=system,
                             messages=messages).usage.model_dump()
with caching.stream(model=model, max_tokens=4, temperature=0, system=system, messages=messages) as s:
    out["cached_stream_text"] = "".join(s.text_stream)
    out["cached_stream_usage"] = s.get_final_message().usage.model_dump()
with client.messages.stream(model=model, max_tokens=5, temperature=0, top_p=0.9, top_k=40,
                            messages=messages) as s:
    out["stream_text"] = "".join(s.text_stream)
    out["stream_final"] = s.get_final_message().content[0].text
events = client.messages.create(model=model, max_tokens=3, temperature=0, messages=messages, stream=True)
out["event_types"] = [event.type for event in events]
tool = {"name": "get_weather", "input_schema": {"type": "object", "properties": {
    "city": {"type": "string"}}, "required": ["city"]}}
with client.messages.stream(model=model, max_tokens=60, temperature=0, tools=[tool],
                            tool_choice={"type": "tool", "name": "get_weather",
                                         "disable_parallel_tool_use": True},
                            messages=[{"role": "user", "content": "Weather in Oslo?"}]) as s:
    final = s.get_final_message()
out["tool_call"] = [final.stop_reason] + [[b.type, b.name, b.input] for b in final.content]
print(json.dumps(out))
'''


@pytest.mark.skipif(not OLD_SDK_PYTHON,
                    reason="PREHEAT_OLD_SDK_PYTHON is unset: run `make test`, which creates the "
                           "anthropic==0.34.2 venv and exports it")
def test_old_sdk_streaming_and_prompt_caching(server):
    result = subprocess.run([OLD_SDK_PYTHON, "-c", CLIENT_SCRIPT, server.base_url, KEY_A, ALIAS],
                            input=document(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["version"] == "0.34.2"
    written = out["write"]["cache_creation_input_tokens"]
    assert written > 0 and out["write"]["cache_read_input_tokens"] == 0
    assert out["read"]["cache_read_input_tokens"] == written
    assert out["read"]["cache_creation_input_tokens"] == 0
    assert out["cached_stream_usage"]["cache_read_input_tokens"] == written
    assert out["stream_text"] == out["stream_final"] != ""
    assert out["event_types"][0] == "message_start" and out["event_types"][-1] == "message_stop"
    stop_reason, [kind, name, arguments] = out["tool_call"]
    assert (stop_reason, kind, name) == ("tool_use", "tool_use", "get_weather")
    assert isinstance(arguments["city"], str)
