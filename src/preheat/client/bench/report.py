"""``preheat bench``'s results as one JSON-ready dict: what ``--json`` prints and what the
tables and the plot are drawn from. Field names are stable (README: "JSON fields");
times are seconds, costs US dollars."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from preheat.client.bench.experiments import BatchSide, BenchResults, UsersRun
from preheat.client.bench.options import BenchOptions
from preheat.client.bench.pricing import PriceTable
from preheat.client.timed_reply import TimedReply
from preheat.client.token_usage import TokenUsage, total_usage

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ServerInfo:
    base_url: str
    started_by_bench: bool


def build_report(results: BenchResults, options: BenchOptions, prices: PriceTable,
                 server: ServerInfo) -> dict[str, Any]:
    doc = results.long_document
    return {
        "schema_version": SCHEMA_VERSION,
        "server": {"base_url": server.base_url, "started_by_bench": server.started_by_bench,
                   "model": options.model, "context_window": results.context_window},
        "settings": {"quick": options.quick, "document": str(options.document),
                     "document_tokens": doc.document_tokens, "max_tokens": options.max_tokens,
                     "users": options.users, "batch_items": options.batch_items,
                     "cache_ttl": options.cache_ttl, "temperature": 0},
        "prices": prices.as_dict(),
        "long_document": _long_document(results),
        "conversation": _conversation(results.conversation),
        "streaming": {"streaming": _reply(results.streaming.streaming),
                      "non_streaming": _reply(results.streaming.non_streaming)},
        "users": {"count": options.users,
                  "sequential": _users_run(results.users.sequential),
                  "concurrent": _users_run(results.users.concurrent)},
        "batch": _batch(results, options.batch_items, prices),
        "costs": _costs(results, prices),
    }


def _reply(reply: TimedReply) -> dict[str, Any]:
    return {"ttft_s": reply.ttft_s, "total_s": reply.total_s,
            "output_tokens_per_s": reply.tokens_per_s, "usage": _usage(reply).as_dict()}


def _usage(reply: TimedReply) -> TokenUsage:
    assert reply.usage is not None, "a bench reply is always complete"
    return reply.usage


def _long_document(results: BenchResults) -> dict[str, Any]:
    doc = results.long_document
    cold, warm = doc.cached[0].ttft_s, doc.cached[-1].ttft_s
    return {
        "document_tokens": doc.document_tokens,
        "uncached": {"requests": [_reply(r) for r in doc.uncached]},
        "cached": {"requests": [_reply(r) for r in doc.cached]},
        "uncached_ttft_s": sum(r.ttft_s for r in doc.uncached) / len(doc.uncached),
        "cold_ttft_s": cold,
        "cached_ttft_s": warm,
        "cached_ttft_ratio": warm / cold if cold > 0 else None,
    }


def _conversation(turns: list[TimedReply]) -> dict[str, Any]:
    rows = [{"turn": i, **_reply(r)} for i, r in enumerate(turns, start=1)]
    later = [_usage(r).cached_share for r in turns[1:]]
    return {"turns": rows, "lowest_cached_share_after_first": min(later) if later else None}


def _users_run(run: UsersRun) -> dict[str, Any]:
    users = [{"user": i, "ttft_s": r.ttft_s, "total_s": r.total_s,
              "done_at_s": (r.finished_at or run.started) - run.started,
              "output_tokens": _usage(r).output_tokens}
             for i, r in enumerate(run.replies, start=1)]
    output = sum(u["output_tokens"] for u in users)
    return {"wall_s": run.wall_s, "output_tokens_per_s": output / run.wall_s, "users": users}


def _batch(results: BenchResults, items: int, prices: PriceTable) -> dict[str, Any]:
    one, batch = results.batch.one_by_one, results.batch.batch
    report: dict[str, Any] = {"items": items,
              "one_by_one": _batch_side(one, prices, 1.0),
              "batch": None if batch is None else _batch_side(batch, prices,
                                                              prices.batch_multiplier)}
    if batch is not None:
        report["wall_ratio"] = batch.wall_s / one.wall_s
        report["cost_ratio"] = (report["batch"]["cost_usd"] / report["one_by_one"]["cost_usd"]
                                if report["one_by_one"]["cost_usd"] > 0 else None)
    return report


def _batch_side(side: BatchSide, prices: PriceTable, multiplier: float) -> dict[str, Any]:
    usage = total_usage(side.usages)
    read = sum(1 for u in side.usages if u.cache_read_input_tokens > 0)
    return {"wall_s": side.wall_s, "succeeded": len(side.usages), "errored": side.errored,
            "cache_read_share": read / len(side.usages) if side.usages else 0.0,
            "usage": usage.as_dict(), "cost_usd": prices.cost(usage) * multiplier}


def _costs(results: BenchResults, prices: PriceTable) -> dict[str, Any]:
    groups = {
        "long_document_uncached": results.long_document.uncached,
        "long_document_cached": results.long_document.cached,
        "conversation": results.conversation,
        "streaming": [results.streaming.streaming, results.streaming.non_streaming],
        "users": results.users.sequential.replies + results.users.concurrent.replies,
    }
    usages = {name: [_usage(r) for r in replies] for name, replies in groups.items()}
    usages["batch_one_by_one"] = results.batch.one_by_one.usages
    multipliers = {}
    if results.batch.batch is not None:
        usages["batch"] = results.batch.batch.usages
        multipliers["batch"] = prices.batch_multiplier
    experiments = {}
    for name, used in usages.items():
        usage, multiplier = total_usage(used), multipliers.get(name, 1.0)
        experiments[name] = {"requests": len(used), "usage": usage.as_dict(),
                             "cost_usd": prices.cost(usage) * multiplier,
                             "cost_without_cache_usd": prices.cost_without_cache(usage) * multiplier}
    return {"experiments": experiments,
            "total_usd": sum(e["cost_usd"] for e in experiments.values())}
