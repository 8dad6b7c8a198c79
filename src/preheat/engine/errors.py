"""Errors the engine raises to its callers (the API maps them to HTTP statuses)."""


class EngineError(Exception):
    """Base class; ``str(err)`` is a message fit for a client."""


class EngineOverloadedError(EngineError):
    """Too many requests are queued; try again later."""


class PromptTooLongError(EngineError):
    """The prompt (plus room for one output token) exceeds the context window."""

    def __init__(self, prompt_tokens: int, context_window: int):
        self.prompt_tokens = prompt_tokens
        self.context_window = context_window
        super().__init__(
            f"prompt is too long: {prompt_tokens} tokens > {context_window - 1} maximum "
            f"(context window is {context_window} tokens)"
        )

    def __reduce__(self):  # crosses the engine process's pipe
        return type(self), (self.prompt_tokens, self.context_window)


class RequestTooLargeError(EngineError):
    """The request could never fit in the KV cache pool, even alone."""


class EngineStoppedError(EngineError):
    """The engine loop has stopped (shutdown or a fatal error)."""
