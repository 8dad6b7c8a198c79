"""``preheat bench``'s report as rich tables, one per experiment, drawn from the report
dict (``report.build_report``)."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def print_tables(report: dict[str, Any], console: Console) -> None:
    for table in (long_document_table(report), conversation_table(report),
                  streaming_table(report), users_table(report), batch_table(report),
                  cost_table(report)):
        console.print(table)


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.3f} s"


def _usage_cells(usage: dict[str, Any]) -> list[str]:
    return [str(usage[k]) for k in ("input_tokens", "cache_read_input_tokens",
                                    "cache_creation_input_tokens", "output_tokens")]


def long_document_table(report: dict[str, Any]) -> Table:
    doc = report["long_document"]
    ratio = doc["cached_ttft_ratio"]
    table = Table(title=f"a. Two questions about a {doc['document_tokens']}-token document",
                  caption=f"cached TTFT is {ratio:.1%} of cold" if ratio is not None else None)
    for column in ("run", "question", "TTFT", "total", "input", "cache read", "cache write",
                   "output"):
        table.add_column(column, justify="left" if column in ("run", "question") else "right")
    for run, label in (("uncached", "without caching"), ("cached", "with caching")):
        for i, request in enumerate(doc[run]["requests"], start=1):
            table.add_row(label if i == 1 else "", str(i), _s(request["ttft_s"]),
                          _s(request["total_s"]), *_usage_cells(request["usage"]))
    return table


def conversation_table(report: dict[str, Any]) -> Table:
    table = Table(title="b. A 4-turn conversation (system prompt and last two user turns cached)")
    for column in ("turn", "TTFT", "prompt", "cache read", "cache write", "cached"):
        table.add_column(column, justify="right")
    for turn in report["conversation"]["turns"]:
        usage = turn["usage"]
        table.add_row(str(turn["turn"]), _s(turn["ttft_s"]), str(usage["prompt_tokens"]),
                      str(usage["cache_read_input_tokens"]),
                      str(usage["cache_creation_input_tokens"]), f"{usage['cached_share']:.1%}")
    return table


def streaming_table(report: dict[str, Any]) -> Table:
    table = Table(title="c. Streaming vs non-streaming (the same request)",
                  caption="without streaming the first text arrives with the last")
    for column in ("mode", "first text (TTFT)", "total", "output tokens"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for mode in ("streaming", "non_streaming"):
        reply = report["streaming"][mode]
        table.add_row(mode.replace("_", "-"), _s(reply["ttft_s"]), _s(reply["total_s"]),
                      str(reply["usage"]["output_tokens"]))
    return table


def users_table(report: dict[str, Any]) -> Table:
    users = report["users"]
    seq, con = users["sequential"], users["concurrent"]
    plural = "s" if users["count"] != 1 else ""
    table = Table(title=f"d. {users['count']} user{plural}, one after another vs all at once",
                  caption=f"wall time: sequential {_s(seq['wall_s'])}, concurrent "
                          f"{_s(con['wall_s'])}; output {seq['output_tokens_per_s']:.1f} vs "
                          f"{con['output_tokens_per_s']:.1f} tok/s")
    for column in ("user", "sequential TTFT", "sequential done at", "concurrent TTFT",
                   "concurrent done at"):
        table.add_column(column, justify="right")
    for s, c in zip(seq["users"], con["users"]):
        table.add_row(str(s["user"]), _s(s["ttft_s"]), _s(s["done_at_s"]), _s(c["ttft_s"]),
                      _s(c["done_at_s"]))
    return table


def batch_table(report: dict[str, Any]) -> Table:
    batch = report["batch"]
    caption = (f"the batch took {batch['wall_ratio']:.2f}x the wall time of one by one"
               if batch["batch"] is not None else "the server has no Message Batches API")
    table = Table(title=f"e. {batch['items']} questions about the cached document, one by one "
                        "vs as a Message Batch", caption=caption)
    for column in ("run", "wall", "succeeded", "errored", "read the cache", "cost"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for side, label in (("one_by_one", "one by one (/v1/messages)"),
                        ("batch", "as a batch (half price)")):
        row = batch[side]
        if row is not None:
            table.add_row(label, _s(row["wall_s"]), str(row["succeeded"]), str(row["errored"]),
                          f"{row['cache_read_share']:.0%}", f"${row['cost_usd']:.6f}")
    return table


def cost_table(report: dict[str, Any]) -> Table:
    prices = report["prices"]
    table = Table(title=f"f. Cost at ${prices['input_per_mtok']:g} in / "
                        f"${prices['output_per_mtok']:g} out per million tokens",
                  caption=f"cache writes {prices['cache_write_5m_multiplier']:g}x (5m) or "
                          f"{prices['cache_write_1h_multiplier']:g}x (1h) the input price, "
                          f"reads {prices['cache_read_multiplier']:g}x, a batch's tokens "
                          f"{prices['batch_multiplier']:g}x; breakpoints used "
                          f"{report['settings']['cache_ttl']}")
    for column in ("experiment", "requests", "cost", "all input at base price"):
        table.add_column(column, justify="left" if column == "experiment" else "right")
    for name, row in report["costs"]["experiments"].items():
        table.add_row(name.replace("_", " "), str(row["requests"]), f"${row['cost_usd']:.6f}",
                      f"${row['cost_without_cache_usd']:.6f}")
    table.add_row("total", "", f"${report['costs']['total_usd']:.6f}", "")
    return table
