"""Prometheus metrics of one app: requests, latencies, tokens, and the engine's state.

Each app owns its ``CollectorRegistry``: nothing here is global, so tests can run
several apps in one process. Per-request series move while requests run (their
``RequestRecord`` calls in); the engine's gauges and counters come from an
``EngineStats`` snapshot that ``scrape`` fetches right before rendering.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from preheat.engine import EngineError

if TYPE_CHECKING:
    from preheat.engine import CacheUsage, EngineClient, EngineStats, ReplicaState

CONTENT_TYPE = CONTENT_TYPE_LATEST

# On a CPU a first token takes milliseconds (a cache hit) to minutes (a long cold prompt
# behind a queue); tokens follow every few ms, or a prefill chunk's time when one runs beside.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
INTER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5,
                       5.0, 10.0)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                    1800.0)

# ``kind`` label of preheat_prompt_tokens_total: Anthropic's three parts of a prompt.
CACHE_READ, CACHE_WRITE, INPUT = "cache_read", "cache_write", "input"


class ServerMetrics:
    """The series one app exposes on ``GET /metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        per_request = ("endpoint", "model")
        self.requests = Counter(
            "preheat_requests", "API requests by endpoint, served model and final status",
            ("endpoint", "model", "status"), registry=self.registry)
        self.in_flight = Gauge("preheat_requests_in_flight", "API requests being answered",
                               registry=self.registry)
        self.ttft = Histogram(
            "preheat_time_to_first_token_seconds", "from a request's arrival to its first output token",
            per_request, buckets=TTFT_BUCKETS, registry=self.registry)
        self.inter_token = Histogram(
            "preheat_inter_token_latency_seconds", "time between a request's output tokens",
            per_request, buckets=INTER_TOKEN_BUCKETS, registry=self.registry)
        self.duration = Histogram(
            "preheat_request_duration_seconds",
            "end to end, arrival to last byte, of requests that reached the engine",
            per_request, buckets=DURATION_BUCKETS, registry=self.registry)
        self.prompt_tokens = Counter(
            "preheat_prompt_tokens", "prompt tokens as usage reports them, by kind: cache_read, "
            "cache_write (cache_creation_input_tokens) or input (plain input_tokens)",
            (*per_request, "kind"), registry=self.registry)
        self.output_tokens = Counter("preheat_output_tokens", "generated tokens", per_request,
                                     registry=self.registry)
        self.cache_hit_ratio = Gauge(
            "preheat_prompt_cache_hit_ratio",
            "since start: cache_read / (cache_read + cache_write + input) prompt tokens",
            registry=self.registry)
        self._prompt_sums = {CACHE_READ: 0, CACHE_WRITE: 0, INPUT: 0}
        self.batch_items = Gauge(
            "preheat_batch_items", "Message Batches' items by state (pending and running are "
            "the queue)", ("state",), registry=self.registry)
        self.engine = EngineStatsCollector()
        self.registry.register(self.engine)

    # ---- called by RequestRecord as a request runs ------------------------------------------

    def count_prompt(self, endpoint: str, model: str, usage: CacheUsage) -> None:
        """A request was admitted with this prompt accounting."""
        parts = {CACHE_READ: usage.cache_read_tokens, CACHE_WRITE: usage.cache_write_tokens,
                 INPUT: usage.input_tokens}
        for kind, tokens in parts.items():
            self.prompt_tokens.labels(endpoint, model, kind).inc(tokens)
            self._prompt_sums[kind] += tokens
        total = sum(self._prompt_sums.values())
        if total:
            self.cache_hit_ratio.set(self._prompt_sums[CACHE_READ] / total)

    def first_token(self, endpoint: str, model: str, seconds: float) -> None:
        self.ttft.labels(endpoint, model).observe(seconds)

    def count_output(self, endpoint: str, model: str, tokens: int, gap: float | None) -> None:
        """``tokens`` more output tokens; ``gap`` seconds since the previous ones (None: no
        previous tokens, or tokens counted at the end that never arrived as text)."""
        if tokens <= 0:
            return
        self.output_tokens.labels(endpoint, model).inc(tokens)
        if gap is not None:
            # tokens held back by the detokenizer arrive together: spread the gap over them
            histogram = self.inter_token.labels(endpoint, model)
            for _ in range(tokens):
                histogram.observe(gap / tokens)

    def request_done(self, endpoint: str, model: str, status: int,
                     duration: float | None) -> None:
        """A request's response ended (sent, failed or abandoned) with ``status``;
        ``duration`` is None for one the engine never admitted."""
        self.requests.labels(endpoint, model, str(status)).inc()
        if duration is not None:
            self.duration.labels(endpoint, model).observe(duration)

    # ---- scrape ------------------------------------------------------------------------------

    def count_batch_items(self, counts: dict[str, int]) -> None:
        for state, count in counts.items():
            self.batch_items.labels(state).set(count)

    async def scrape(self, engine: EngineClient) -> bytes:
        """The text exposition, with the engine's state as of now."""
        try:
            stats, replicas = await engine.stats(), await engine.replicas()
        except EngineError:
            stats, replicas = None, []  # a stopped engine: the HTTP side's series still render
        return self.render(stats, replicas)

    def render(self, stats: EngineStats | None, replicas: list[ReplicaState] = ()) -> bytes:
        # no await between setting the snapshot and rendering it: a concurrent scrape can't mix
        self.engine.snapshot, self.engine.replicas = stats, list(replicas)
        return generate_latest(self.registry)


class EngineStatsCollector:
    """The engine's gauges and counters from the last snapshot (only ``up`` without one)."""

    def __init__(self) -> None:
        self.snapshot: EngineStats | None = None
        self.replicas: list[ReplicaState] = []

    def collect(self) -> Iterator[Metric]:
        yield from self._replica_series()
        s = self.snapshot
        yield _gauge("preheat_engine_up", "1 when the engine answered this scrape", int(s is not None))
        if s is None:
            return
        yield _gauge("preheat_kv_pool_blocks", "KV cache blocks in the pool", s.total_blocks)
        yield _gauge("preheat_kv_block_size_tokens", "tokens per KV cache block", s.block_size)
        yield _gauge("preheat_kv_blocks_used", "blocks not free: held by running sequences or "
                     "the prefix cache", s.total_blocks - s.free_blocks)
        yield _gauge("preheat_kv_blocks_cached", "blocks held by the prefix cache (radix tree)",
                     s.cached_blocks)
        yield _gauge("preheat_kv_window_slots", "window slots of sliding-window layers' KV (0: the "
                     "model has none)", s.window_slots)
        yield _gauge("preheat_kv_window_slots_used", "window slots held by running sequences' windows "
                     "and the prefix cache's resume points", s.window_slots - s.window_slots_free)
        yield _gauge("preheat_kv_blocks_pinned", "blocks in RAM under a live cache_control pin",
                     s.pinned_blocks)
        yield _gauge("preheat_kv_pinned_entries", "live pinned prefixes, in RAM or on disk",
                     s.pinned_entries)
        yield _gauge("preheat_kv_disk_entries", "pinned prefixes with a copy in the disk tier",
                     s.disk_entries)
        yield _gauge("preheat_kv_disk_bytes", "bytes the disk tier holds", s.disk_bytes)
        yield _gauge("preheat_kv_disk_quota_bytes", "the disk tier's quota (0: no disk tier)",
                     s.disk_quota_bytes)
        yield _gauge("preheat_queue_depth", "requests waiting to be scheduled", s.waiting)
        yield _gauge("preheat_running_sequences", "sequences being prefilled or decoded", s.running)
        yield _counter("preheat_preemptions", "sequences preempted for memory (recomputed later)",
                       s.preemptions)
        yield _counter("preheat_batch_steps_interrupted", "steps of batch work stopped between "
                       "layers for an arriving interactive request (run again next)",
                       s.interrupted_steps)
        yield _counter("preheat_aborts", "requests stopped by their caller (a client hung up, "
                       "a shutdown ended them)", s.aborted)
        yield _counter("preheat_engine_failures", "requests ended by a failure of their own in "
                       "the engine (the others in the batch went on)", s.failed)
        yield _counter("preheat_kv_disk_reads", "cache hits read back from the disk tier",
                       s.disk_reads)
        yield _counter("preheat_engine_prompt_tokens", "prompt tokens of admitted requests",
                       s.prompt_tokens)
        yield _counter("preheat_engine_prompt_tokens_cached", "of those, found in the KV cache "
                       "(reported in usage as read or not)", s.prompt_tokens_cached)
        yield _counter("preheat_spec_draft_tokens", "speculative decoding: draft tokens verified",
                       s.spec_drafted)
        yield _counter("preheat_spec_accepted_tokens", "speculative decoding: draft tokens "
                       "accepted (each saved a decode step)", s.spec_accepted)
        yield _counter("preheat_spec_verify_steps", "speculative decoding: sequence-steps that "
                       "verified a draft", s.spec_verify_steps)
        yield _gauge("preheat_spec_acceptance_rate", "speculative decoding: accepted / drafted "
                     "tokens since start", s.spec_accepted / s.spec_drafted if s.spec_drafted else 0)
        yield _gauge("preheat_spec_tokens_per_step", "speculative decoding: tokens produced per "
                     "verifying sequence-step since start (1 would be no gain)",
                     s.spec_verify_tokens / s.spec_verify_steps if s.spec_verify_steps else 0)


    def _replica_series(self) -> Iterator[Metric]:
        """Per engine (one, or each replica behind a router), and the router's decisions."""
        per_replica = {
            "running": ("preheat_replica_running", "sequences running on the replica"),
            "waiting": ("preheat_replica_waiting", "requests waiting on the replica"),
            "free_blocks": ("preheat_replica_free_blocks", "free KV blocks of the replica"),
            "pinned_entries": ("preheat_replica_pinned_entries", "live pinned prefixes of the "
                               "replica, in RAM or on disk")}
        for attr, (name, documentation) in per_replica.items():
            family = GaugeMetricFamily(name, documentation, labels=("replica",))
            for replica in self.replicas:
                family.add_metric((replica.id,), getattr(replica, attr))
            yield family
        routed = CounterMetricFamily(
            "preheat_routing_decisions", "requests the router sent to each replica, by reason: "
            "match (it held the longest prefix), load (the best match was too busy), none (no "
            "replica held a prefix: the least loaded)", labels=("replica", "reason"))
        for replica in self.replicas:
            for reason, count in sorted(replica.routed.items()):
                routed.add_metric((replica.id, reason), count)
        yield routed


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)
