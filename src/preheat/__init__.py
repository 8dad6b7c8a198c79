"""preheat: a self-hosted LLM server that speaks the Anthropic Messages API."""

__version__ = "0.1.0"
