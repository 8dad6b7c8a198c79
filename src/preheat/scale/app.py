"""The Serve application: an ingress running preheat's FastAPI app over N engine replicas.

``preheat serve --replicas N`` deploys it (``launch.py``); so does Ray's own tooling::

    serve run preheat.scale.app:build replicas=2 num-threads=1

where each ``key=value`` is a ``preheat serve`` option (``docs/scale-out.md``).
"""
from __future__ import annotations

import asyncio
from pathlib import Path

from ray import serve
from ray.serve import Application
from ray.serve.config import RequestRouterConfig
from ray.serve.handle import DeploymentHandle

from preheat.config import EngineConfig
from preheat.scale.engine_replica import EngineReplica
from preheat.scale.replica_client import ReplicaEngineClient
from preheat.scale.router import PrefixAffinityRouter
from preheat.scale.scale_config import ScaleConfig
from preheat.scale.served_by import ServedByHeader
from preheat.server.app import create_app
from preheat.server.settings import ServerSettings
from preheat.tokenizer.load import load_tokenizer


@serve.ingress()
class Ingress:
    """The HTTP side: the app of ``preheat serve``, its engine the replicas' handle."""

    def __init__(self, engines: DeploymentHandle, settings: ServerSettings, model: str | None,
                 chat_template: Path | None = None):
        self._engines = engines
        self._settings = settings
        self._model = model
        self._chat_template = chat_template

    async def __serve_build_asgi_app__(self):
        tokenizer = await asyncio.to_thread(load_tokenizer, self._model, self._chat_template)
        engine = await ReplicaEngineClient.connect(self._engines, tokenizer)
        app = create_app(engine, self._settings)
        app.add_middleware(ServedByHeader)
        return app


def application(settings: ServerSettings, config: EngineConfig, scale: ScaleConfig,
                log_level: str = "INFO") -> Application:
    """The application to ``serve.run``: ``scale.replicas`` engines, one ingress."""
    router = RequestRouterConfig(
        request_router_class=PrefixAffinityRouter,
        request_router_kwargs={"spread": scale.route_load_spread,
                               "ratio": scale.route_load_ratio},
        request_routing_stats_period_s=scale.routing_stats_seconds)
    # num_cpus=0: the engines' threads are set explicitly (--num-threads), so N replicas
    # fit a small machine; on GPUs each replica takes one.
    gpus = 1 if config.device.startswith("cuda") else 0
    engines = serve.deployment(
        EngineReplica, name="engine", num_replicas=scale.replicas,
        ray_actor_options={"num_cpus": 0, "num_gpus": gpus},
        # the engine queues and refuses (529) by itself: Serve need not hold requests back
        max_ongoing_requests=config.max_running + config.max_waiting,
        request_router_config=router, health_check_period_s=5).bind(config, log_level)
    ingress = serve.deployment(Ingress, name="ingress", num_replicas=1,
                               ray_actor_options={"num_cpus": 0},
                               max_ongoing_requests=100_000)
    return ingress.bind(engines, settings, config.model, config.chat_template)


def build(args: dict[str, str]) -> Application:
    """For ``serve run preheat.scale.app:build key=value ...`` (``preheat serve`` options)."""
    from preheat.cli import scale_from_options
    return scale_from_options(args)
