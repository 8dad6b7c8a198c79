"""``preheat bench --plot``: the experiments' figures in one PNG (matplotlib)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, none opened

import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib.axes import Axes  # noqa: E402


def plot_report(report: dict[str, Any], path: Path) -> None:
    """Seven panels: long-document TTFT, the conversation, streaming, users' TTFT and
    finish times, one by one vs a batch, and cost."""
    figure, axes = plt.subplots(2, 4, figsize=(21, 9), layout="constrained")
    figure.suptitle(f"preheat bench: {report['server']['model']} at {report['server']['base_url']}")
    _long_document(axes[0][0], report["long_document"])
    _conversation(axes[0][1], report["conversation"])
    _streaming(axes[0][2], report["streaming"])
    _users(axes[1][0], report["users"], "ttft_s", "d. TTFT per user")
    _users(axes[1][1], report["users"], "done_at_s", "d. reply done, from the run's start")
    _batch(axes[0][3], report["batch"])
    _costs(axes[1][2], report["costs"])
    axes[1][3].axis("off")
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _long_document(ax: Axes, doc: dict[str, Any]) -> None:
    labels = ["uncached 1", "uncached 2", "cached: cold", "cached: read"]
    values = [r["ttft_s"] for r in doc["uncached"]["requests"] + doc["cached"]["requests"]]
    ax.bar(labels, values, color=["grey", "grey", "tab:orange", "tab:green"])
    ax.set_title(f"a. TTFT, {doc['document_tokens']}-token document")
    ax.set_ylabel("seconds")


def _conversation(ax: Axes, conversation: dict[str, Any]) -> None:
    turns = [t["turn"] for t in conversation["turns"]]
    ax.bar(turns, [100 * t["usage"]["cached_share"] for t in conversation["turns"]],
           color="tab:green", label="prompt cached (%)")
    ax.set_ylabel("% of the prompt cached")
    ax.set_ylim(0, 100)
    ax.set_xlabel("turn")
    ax.set_xticks(turns)
    ttft = ax.twinx()
    ttft.plot(turns, [t["ttft_s"] for t in conversation["turns"]], "o-", color="tab:blue")
    ttft.set_ylabel("TTFT (s)", color="tab:blue")
    ax.set_title("b. 4-turn conversation")


def _streaming(ax: Axes, streaming: dict[str, Any]) -> None:
    modes = ["streaming", "non_streaming"]
    width = 0.35
    xs = range(len(modes))
    ax.bar([x - width / 2 for x in xs], [streaming[m]["ttft_s"] for m in modes], width,
           label="first text")
    ax.bar([x + width / 2 for x in xs], [streaming[m]["total_s"] for m in modes], width,
           label="whole reply")
    ax.set_xticks(list(xs), ["streaming", "non-streaming"])
    ax.set_ylabel("seconds")
    ax.set_title("c. streaming vs non-streaming")
    ax.legend()


def _users(ax: Axes, users: dict[str, Any], field: str, title: str) -> None:
    width = 0.35
    for offset, mode in ((-width / 2, "sequential"), (width / 2, "concurrent")):
        rows = users[mode]["users"]
        ax.bar([r["user"] + offset for r in rows], [r[field] for r in rows], width,
               label=f"{mode} (wall {users[mode]['wall_s']:.2f} s)")
    ax.set_xticks([r["user"] for r in users["sequential"]["users"]])
    ax.set_xlabel("user")
    ax.set_ylabel("seconds")
    ax.set_title(title)
    ax.legend()


def _batch(ax: Axes, batch: dict[str, Any]) -> None:
    sides = [s for s in ("one_by_one", "batch") if batch[s] is not None]
    ax.bar([s.replace("_", " ") for s in sides], [batch[s]["wall_s"] for s in sides],
           color=["grey", "tab:green"][:len(sides)])
    ax.set_ylabel("seconds")
    ax.set_title(f"e. {batch['items']} questions: wall time")


def _costs(ax: Axes, costs: dict[str, Any]) -> None:
    names = list(costs["experiments"])
    ys = range(len(names))
    height = 0.35
    ax.barh([y - height / 2 for y in ys],
            [costs["experiments"][n]["cost_usd"] * 100 for n in names], height,
            label="as billed")
    ax.barh([y + height / 2 for y in ys],
            [costs["experiments"][n]["cost_without_cache_usd"] * 100 for n in names], height,
            label="all input at base price")
    ax.set_yticks(list(ys), [n.replace("_", " ") for n in names])
    ax.set_xlabel("US cents")
    ax.set_title("f. cost")
    ax.legend()
