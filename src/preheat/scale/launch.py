"""``preheat serve --replicas N``: Ray, Serve and the application, from one command."""
from __future__ import annotations

import logging
import os
import signal
import threading

import ray
from ray import serve

from preheat.client.bench.server_process import free_port
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


def start_ray(address: str | None, port: int) -> int:
    """Join ``address`` (a running cluster, or ``auto``), or start a local instance; returns
    the port for Serve's HTTP proxy.

    A local instance runs Serve throughput-optimized (user code on each replica's own event
    loop, handle calls over gRPC, fewer log lines), and its ingress replica answers HTTP on
    ``port`` itself (Serve's direct ingress), so tokens cross no proxy actor on their way
    out: the proxy gets a port of its own, and a replaced ingress takes ``port`` back at once
    (no quarantine: no load balancer in front remembers it). A cluster is Ray's as its
    operator started it, and its proxy serves ``port``.
    """
    os.environ.setdefault(SUBREAPER, "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return port
    for name, value in {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
                        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
                        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 1),  # exclusive
                        "RAY_SERVE_PORT_QUARANTINE_S": "0",
                        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}.items():
        os.environ.setdefault(name, value)
    ray.init(include_dashboard=False, logging_level=logging.WARNING)
    return free_port()


def serve_on_ray(settings: ServerSettings, config: EngineConfig, scale: ScaleConfig,
                 log_level: str) -> int:
    """Deploy and serve until SIGINT or SIGTERM; then the application and (a local) Ray stop."""
    proxy_port = start_ray(scale.ray_address, settings.port)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": settings.host, "port": proxy_port})
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
