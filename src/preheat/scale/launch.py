"""``preheat serve --replicas N``: Ray, Serve and the application, from one command."""
from __future__ import annotations

import logging
import os
import signal
import threading

import ray
from ray import serve

from preheat.config import EngineConfig
from preheat.scale.app import application
from preheat.scale.scale_config import ScaleConfig
from preheat.server.settings import ServerSettings

log = logging.getLogger(__name__)

APP_NAME = "preheat"

# Without it a replica that Ray kills leaves its engine core process behind (the core is
# the replica's child); Ray reads it when it starts, so a cluster started with ``ray start``
# needs it in that environment too (docs/scale-out.md).
SUBREAPER = "RAY_kill_child_processes_on_worker_exit_with_raylet_subreaper"
SHUTDOWN_SECONDS = 60.0


def start_ray(address: str | None) -> None:
    """Join ``address`` (a running cluster, or ``auto``), or start a local instance."""
    os.environ.setdefault(SUBREAPER, "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # user code on each replica's own event loop, handle calls over gRPC, fewer log lines:
    # about a third less CPU per token on the hops (docs/scale-out.md)
    os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
    # ...but not its direct ingress: the ingress would listen on a port of its own (30000
    # up) beside the proxy that serves --port, and drain for half a minute on shutdown
    os.environ.setdefault("RAY_SERVE_ENABLE_DIRECT_INGRESS", "0")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(include_dashboard=False, logging_level=logging.WARNING)


def serve_on_ray(settings: ServerSettings, config: EngineConfig, scale: ScaleConfig,
                 log_level: str) -> int:
    """Deploy and serve until SIGINT or SIGTERM; then the application and (a local) Ray stop."""
    start_ray(scale.ray_address)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(application(settings, config, scale, log_level.upper()), name=APP_NAME,
                  route_prefix="/")
        log.info("serving on http://%s:%d with %d engine replicas on Ray Serve",
                 settings.host, settings.port, scale.replicas)
        stop.wait()
    finally:
        # A Ray that died under us (its processes signalled with ours) would hang the
        # goodbyes below: exit anyway after a while.
        watchdog = threading.Timer(SHUTDOWN_SECONDS, os._exit, (1,))
        watchdog.daemon = True
        watchdog.start()
        serve.delete(APP_NAME)
        if scale.ray_address is None:
            serve.shutdown()
            ray.shutdown()
    return 0
