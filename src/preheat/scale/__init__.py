"""Scale-out on Ray Serve: N engine replicas behind one endpoint, routed by tenant and prefix.

The engine and the API are those of ``preheat serve``; this room only places them on Ray
(``pip install 'preheat[ray]'``). A request's way through it:

``app.py``            the Serve application: an ingress running the same FastAPI app, and
                      the engine deployment; ``preheat serve --replicas N`` and
                      ``serve run preheat.scale.app:build`` both deploy it
``replica_client.py`` the ingress's ``EngineClient``: each request goes to the engine
                      deployment's handle with a ``RouteTicket`` (``route_ticket.py``)
``router.py``         Serve's request router for the engine deployment: it scores the
                      replicas with ``routing.py`` (a pure function) over what each holds
``engine_replica.py`` one replica: one engine (its own core process, KV pool and disk
                      tier), streaming a step's events per message (``replica_messages.py``),
                      reporting what it holds (``held_prefixes.py``) for the router
``launch.py``         Ray, Serve and the application from ``preheat serve --replicas N``
                      (``scale_config.py`` holds those options)
``served_by.py``      the ``preheat-replica`` response header

Only ``routing.py``, ``prefix_hashes.py``, ``route_ticket.py``, ``held_prefixes.py``,
``scale_config.py`` and ``served_by.py`` are free of Ray; the rest imports it.
"""
