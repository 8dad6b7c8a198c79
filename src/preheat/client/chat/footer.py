"""The line ``preheat chat`` prints after each reply."""
from __future__ import annotations

from preheat.client.timed_reply import TimedReply


def format_footer(reply: TimedReply) -> str:
    """``in N | cache read N | cache write N | out N | P% cached | TTFT S s | R tok/s``."""
    usage = reply.usage
    if usage is None:
        return f"stopped | TTFT {reply.ttft_s:.2f} s | {len(reply.text)} characters shown"
    speed = reply.tokens_per_s
    return " | ".join([
        f"in {usage.input_tokens}",
        f"cache read {usage.cache_read_input_tokens}",
        f"cache write {usage.cache_creation_input_tokens}",
        f"out {usage.output_tokens}",
        f"{usage.cached_share:.0%} cached",
        f"TTFT {reply.ttft_s:.2f} s",
        f"{speed:.1f} tok/s" if speed is not None else "- tok/s",
    ])
