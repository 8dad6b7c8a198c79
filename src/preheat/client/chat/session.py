"""The loop of ``preheat chat``: read a turn, stream the reply, keep the conversation.

Ctrl-C during a reply closes its stream (the server stops generating) and keeps the text
shown so far in the conversation as the assistant's turn, so the next question sees what
the user saw; a reply stopped before any text drops its question, as if never asked.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anthropic

from preheat.client.cache_breakpoints import with_breakpoints
from preheat.client.chat.footer import format_footer
from preheat.client.chat.options import ChatOptions
from preheat.client.chat.view import ChatView
from preheat.client.timed_reply import TimedReply, stream_timed

QUIT_WORDS = {"quit", "exit"}


@dataclass
class Conversation:
    """The turns so far, as plain text, and the request for the next one."""

    system: str | None
    history: list[dict[str, str]] = field(default_factory=list)

    def request(self, user_text: str, options: ChatOptions) -> dict[str, Any]:
        system, messages = with_breakpoints(
            self.system, [*self.history, {"role": "user", "content": user_text}])
        params: dict[str, Any] = {"model": options.model, "max_tokens": options.max_tokens,
                                  "messages": messages}
        if system:
            params["system"] = system
        if options.temperature is not None:
            params["extra_body"] = {"temperature": options.temperature}  # no SDK keyword
        return params

    def keep(self, user_text: str, reply_text: str) -> None:
        """Add an exchange; one without reply text is dropped (a turn may not be empty)."""
        if reply_text.strip():
            self.history += [{"role": "user", "content": user_text},
                             {"role": "assistant", "content": reply_text}]


def run_chat(options: ChatOptions) -> int:
    """Chat until quit, exit or the end of input; 1 if any turn failed, else 0."""
    client = anthropic.Anthropic(base_url=options.base_url, api_key=options.api_key)
    view = ChatView.for_this_process()
    view.greet(options.model, options.base_url)
    conversation = Conversation(options.system)
    failed = False
    while (line := view.read_turn()) is not None:
        text = line.strip()
        if text.lower() in QUIT_WORDS:
            break
        if text:
            failed |= not take_turn(client, options, conversation, text, view)
    return 1 if failed else 0


def take_turn(client: anthropic.Anthropic, options: ChatOptions, conversation: Conversation,
              text: str, view: ChatView) -> bool:
    """Ask ``text``, stream the reply, print its footer; False if the request failed."""
    reply = TimedReply()
    try:
        stream_timed(client, conversation.request(text, options), reply, view.reply_text)
    except KeyboardInterrupt:
        pass  # the stream is closed; keep what was shown
    except anthropic.APIConnectionError as err:
        view.error(f"cannot reach {options.base_url}: {err}")
        return False
    except anthropic.APIError as err:
        view.error(f"error: {err}")
        return False
    finally:
        if reply.text:
            view.end_reply()
    view.footer(format_footer(reply))
    conversation.keep(text, reply.text)
    return True
