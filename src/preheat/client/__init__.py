"""The client programs that talk to a preheat server through the official ``anthropic``
SDK: ``preheat chat`` (in ``chat/``, a terminal chat) and ``preheat bench`` (in ``bench/``,
the caching, streaming and concurrency experiments side by side). What both use lives here:
the command-line arguments every client command takes (``arguments``), where a conversation
puts its cache breakpoints (``cache_breakpoints``), a reply timed as it arrives
(``timed_reply``) and its token counts (``token_usage``)."""
