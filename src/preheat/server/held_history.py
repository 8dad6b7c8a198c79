"""A conversation the server holds to continue from: a message thread's turn, a stored
OpenAI response.

It keeps what the model saw and said exactly: the preamble (system, tools, tool choice),
the messages with the reply appended, and the token ids of that prompt and of the reply
as generated. A continue renders only its new messages after those ids
(``prompt_builder.continue_prompt``), so its prefix is token for token the one whose KV
the engine held, and only the new input is prefilled.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from preheat.server.prompt_builder import BuiltPrompt, PromptBlock
from preheat.server.protocol import InputMessage, MessagesRequest, TextBlock, Tool, ToolChoice


@dataclass
class HeldHistory:
    """A conversation up to and including a reply, with its exact tokens."""

    system: list[TextBlock]
    tools: list[Tool]
    messages: list[InputMessage]  # the whole conversation, the reply last
    token_ids: list[int]  # its prompt, then its reply as generated (no end-of-turn token)
    blocks: list[PromptBlock]  # one per content block of ``messages``, marks removed
    tool_choice: ToolChoice | None = None  # rendered in the prompt's tool section

    @classmethod
    def after(cls, request: MessagesRequest, prompt: BuiltPrompt, reply: list[dict],
              reply_ids: list[int]) -> HeldHistory:
        """The history once ``request`` (the whole conversation it answered, rendered as
        ``prompt``) got ``reply``, whose tokens were ``reply_ids``."""
        # Kept as generated, whitespace-only text included: a reply the API would refuse
        # in a replayed history still continues here, from its exact tokens. An empty reply
        # is one empty text block, so the history's last block has a place.
        reply = reply or [{"type": "text", "text": ""}]
        token_ids = prompt.token_ids + reply_ids
        return cls(
            system=request.system, tools=request.tools,
            messages=[*request.messages,
                      InputMessage.model_validate({"role": "assistant", "content": reply})],
            token_ids=token_ids,
            # the history's marks were the earlier requests': a continue brings its own
            blocks=[replace(b, cache_control=None) for b in prompt.blocks]
            + [PromptBlock("messages", len(token_ids), None)] * len(reply),
            tool_choice=request.tool_choice)

    def same_preamble(self, request: MessagesRequest) -> bool:
        """Whether ``request`` starts its prompt as this history did (system, tools and tool
        choice, marks aside): only then do the held tokens begin its prompt."""
        def unmarked(blocks) -> list[dict]:
            return [b.model_dump(exclude={"cache_control"}) for b in blocks]
        def choice(value: ToolChoice | None) -> dict | None:
            return None if value is None else value.model_dump()
        return (unmarked(self.system) == unmarked(request.system)
                and unmarked(self.tools) == unmarked(request.tools)
                and choice(self.tool_choice) == choice(request.tool_choice))
