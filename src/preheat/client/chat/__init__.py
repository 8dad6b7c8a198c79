"""``preheat chat``, a multi-turn terminal chat with a running server: the command's
argparse side (``command``) builds a ``ChatOptions`` (``options``) and lazily imports the
SDK-heavy loop (``session``), which reads turns and shows replies through ``view`` and
prints ``footer``'s line of tokens, cached share, TTFT and speed after each reply."""
