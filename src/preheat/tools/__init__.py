"""Client tools that talk to a preheat server through the official ``anthropic`` SDK:
``preheat chat`` (a terminal chat) and ``preheat bench`` (the caching, streaming and
concurrency experiments side by side)."""
