"""What the ingress sends to the engine deployment beside each request, for its router."""
from __future__ import annotations

from dataclasses import dataclass, field

from preheat.engine import GenerationRequest
from preheat.scale.prefix_hashes import prefix_hashes


@dataclass
class RouteTicket:
    """A request's routing key: its tenant and the prefixes it starts with.

    The router runs in the ingress's process and writes its decision here (``decision``,
    ``replica_ids``) before the ticket travels with the request, so the ingress learns
    why a replica was chosen and which replicas there are without asking Ray's internals.
    """

    tenant: str
    prefixes: dict[int, int] = field(default_factory=dict)  # prefix length -> hash
    target: str | None = None  # only this replica (a probe of one replica's state)
    decision: str | None = None  # set by the router: match, load, none or target
    replica_ids: list[str] = field(default_factory=list)  # set by the router: all it knows

    @classmethod
    def for_request(cls, request: GenerationRequest) -> RouteTicket:
        ends = [b.position for b in request.breakpoints]
        return cls(request.namespace, prefix_hashes(request.prompt_ids, ends))

    @classmethod
    def probe(cls, target: str | None = None) -> RouteTicket:
        """A ticket for a request about the replicas themselves (any, or ``target``)."""
        return cls(tenant="", target=target)
