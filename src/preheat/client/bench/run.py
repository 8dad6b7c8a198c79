"""One ``preheat bench`` run: find or start the server, run the experiments under a
progress bar (on stderr), then print the tables or the JSON and draw the plot."""
from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anthropic
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from preheat.client.bench import experiments
from preheat.client.bench.options import BenchOptions, BenchRun
from preheat.client.bench.report import ServerInfo, build_report
from preheat.client.bench.server_process import preheat_server
from preheat.client.bench.tables import print_tables

# The started server pins prefixes from 256 tokens on (the default is Anthropic's 1024), so
# --quick's document slice is cached too.
STARTED_SERVER_ARGS = ["--min-cache-tokens", "256"]


def run_bench(options: BenchOptions, run: BenchRun) -> int:
    """Run the experiments and report them; 0, or SystemExit saying what went wrong."""
    err = Console(stderr=True)
    with _server(run, err) as server:
        client = anthropic.Anthropic(base_url=server.base_url, api_key=run.api_key,
                                     max_retries=0, timeout=600)
        try:
            results = measure(client, options, err)
        except anthropic.APIError as error:
            raise SystemExit(f"preheat bench: {server.base_url}: {error}") from None
    _warn_if_nothing_cached(results, err)
    if results.batch.batch is None:
        err.print("[yellow]The server has no Message Batches API (404): experiment e ran "
                  "one by one only.[/]")
    report = build_report(results, options, run.prices, server)
    if run.json:
        print(json.dumps(report, indent=2))
    else:
        print_tables(report, Console())
    if run.plot is not None:
        from preheat.client.bench.plot import plot_report  # matplotlib is optional

        plot_report(report, run.plot)
        err.print(f"wrote {run.plot}")
    return 0


def _warn_if_nothing_cached(results: experiments.BenchResults, err: Console) -> None:
    usage = results.long_document.cached[-1].usage
    if usage is not None and usage.cache_read_input_tokens == 0:
        err.print("[yellow]The server cached nothing: is the document shorter than its "
                  "--min-cache-tokens?[/]")


@contextlib.contextmanager
def _server(run: BenchRun, err: Console) -> Iterator[ServerInfo]:
    """``--base-url``, or ``preheat serve`` started for the run (its log and disk tier in
    a temporary folder, so it leaves nothing behind)."""
    if run.base_url:
        yield ServerInfo(run.base_url, started_by_bench=False)
        return
    with tempfile.TemporaryDirectory(prefix="preheat-bench-") as folder, \
            contextlib.ExitStack() as stack:
        args = [*STARTED_SERVER_ARGS, "--kv-disk-dir", str(Path(folder, "kv")), *run.serve_args]
        server = preheat_server(args, log=Path(folder, "serve.log"))
        with err.status("starting preheat serve with the embedded model"):
            base_url = stack.enter_context(server)
        yield ServerInfo(base_url, started_by_bench=True)


def measure(client: anthropic.Anthropic, options: BenchOptions,
            err: Console) -> experiments.BenchResults:
    """The five experiments, one after another, each request a step of the progress bar."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("warming up", total=experiments.requests_needed(options))
        bench = experiments.Bench(client, options, done=lambda: progress.advance(task))

        def stage(name: str) -> None:
            progress.update(task, description=name)

        experiments.warm_up(bench)
        window = bench.context_window()
        stage("preparing the document")
        document, tokens = experiments.load_document(
            bench, experiments.document_budget(options, window))
        stage("a. long document")
        long_document = experiments.long_document(bench, document, tokens)
        stage("b. conversation")
        conversation = experiments.conversation(bench, document)
        stage("c. streaming")
        streaming = experiments.streaming(bench)
        stage("d. users")
        users = experiments.users(bench)
        stage("e. batch")
        batch = experiments.batch(bench, document)
    return experiments.BenchResults(window, long_document, conversation, streaming, users,
                                    batch)
