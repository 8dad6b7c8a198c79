"""``preheat bench``, the caching, streaming and concurrency experiments against a server:
the command's argparse side (``command``) builds ``BenchOptions`` and ``BenchRun``
(``options``) and lazily imports the SDK-heavy run (``run``), which starts a server if
asked (``server_process``, shared with the scripts in ``bench/``), runs ``experiments`` on
a document cut to a token budget (``document``), and reports them as a JSON-ready dict
(``report``) priced by ``pricing``, drawn as ``tables`` or a PNG (``plot``)."""
