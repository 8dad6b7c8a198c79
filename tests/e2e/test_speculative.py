"""Speculative decoding through ``preheat serve`` (on by default) and the official SDK: a
reply that copies its prompt is the one decoded without drafts, streamed or not."""
from __future__ import annotations

import re
import uuid

import httpx
from e2e_helpers import GREEDY

CODE = "\n".join(f"def step_{i}(value):\n    return value * {i} + {i * 7}\n" for i in range(12))


def request(**extra) -> dict:
    return dict(model="claude-sonnet-4-6", max_tokens=300,
                system=f"[{uuid.uuid4().hex}] You are a careful programmer.",
                messages=[{"role": "user", "content": "Return this code exactly as it is, "
                           f"nothing else.\n\n```python\n{CODE}```"}], **extra)


def spec_counters(http: httpx.Client) -> tuple[float, float]:
    text = http.get("/metrics").text
    return tuple(float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))
                 for name in ("preheat_spec_draft_tokens_total",
                              "preheat_spec_accepted_tokens_total"))


def test_a_copied_reply_is_the_one_decoded_without_drafts(client, http):
    before = spec_counters(http)
    with client.messages.stream(**request(extra_body=GREEDY)) as stream:
        streamed = "".join(stream.text_stream)
        message = stream.get_final_message()
    drafted, accepted = (a - b for a, b in zip(spec_counters(http), before))
    assert accepted > 0.5 * message.usage.output_tokens  # most of the reply came from drafts
    assert drafted >= accepted
    plain = client.messages.create(**request(extra_body={**GREEDY, "speculative": False}))
    assert spec_counters(http)[0] == before[0] + drafted  # the opt-out drafted nothing
    assert streamed == plain.content[0].text == message.content[0].text
    assert message.usage.output_tokens == plain.usage.output_tokens
    assert message.stop_reason == plain.stop_reason


def test_speculative_must_be_a_boolean(http):
    body = request(**GREEDY, speculative="sometimes")
    resp = http.post("/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"})
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"
    assert "speculative" in resp.json()["error"]["message"]
