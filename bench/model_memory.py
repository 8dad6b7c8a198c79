"""Memory, start time and one user's decode speed of ``preheat serve`` and ``llama-server``
on Llama-shaped Q4_K_M files with random weights, beside the embedded SmolLM2 file.

For each model (the embedded SmolLM2 Q4_1 file; a ``llama-1b`` and optionally a ``llama-8b``
Q4_K_M file from ``bench/random_gguf.py``, generated into ``--out-dir`` when missing), one
server at a time, each started as a process of its own:

  - ``preheat serve --model FILE --num-threads T --port P --kv-cache-tokens 8192
    --kv-disk-bytes 0``: started twice. The first start: time from spawn to ``/health`` 200,
    a warm-up request (8 tokens), then one streamed greedy reply of ``--reply-tokens``
    through the ``anthropic`` SDK (``extra_body={"temperature": 0}``, output tokens from
    ``usage.output_tokens``); then the peak RSS (``VmHWM`` in ``/proc/PID/status``) of the
    engine-core child (found with psutil: the largest ``multiprocessing`` spawn child) and of
    the API process. The second start: time to ``/health`` only.
  - ``llama-server -m FILE -t T -c 8192 -np 1 --port P``: the same, its reply through its
    OpenAI ``/v1/chat/completions`` stream (``temperature 0``, ``max_tokens``; output tokens
    from the final chunk's ``usage``), its peak RSS its one process's.

Decode tok/s = (output tokens - 1) / (last text delta - first text delta): a delta may hold
several tokens. A random model's reply may end before ``--reply-tokens`` (neither server is
told to ignore EOS); the table shows the tokens counted. Peak RSS counts the pages of the
memory-mapped file a process has touched and not given back (llama-server runs from the
map; preheat repacks tensor by tensor and lets each one's file pages go). "First" start is
the first in this run: the file may already be in the page cache (it is when just
generated), and preheat may compile its kernels on it.

Printed: one table (model, file size, engine peak RSS, API process peak RSS, start first /
second, decode tok/s) for both servers, with the CPU named beside it, and the checks:
  (a) preheat's engine peak RSS for the 1B file minus for the embedded file, against
      1.25 x (file size difference) + 150 MB (MB = 10^6 bytes);
  (b) preheat's second-start time for the 1B file minus the embedded file's, against 3 s;
  (c) the 1B decode ratio preheat / llama-server.
(a) and (b) are printed for the 8B file too when it is measured.

    .venv/bin/python bench/model_memory.py [--models embedded,llama-1b,llama-8b]
        [--out-dir DIR] [--reply-tokens 128] [--threads 2] [--llama-server PATH]
        [--only preheat|llama] [--json FILE]

``--llama-server`` defaults to the first ``llama-server`` under ``/work/peers/**/build/bin/``
(then PATH); without one the peer is skipped, and the output says so. Each server's log is
kept in /tmp/model_memory_*.log. Figures, not tests: on a shared machine read them as
ratios measured in the same run.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import anthropic
import httpx
import psutil

from api_peer import cpu_model
from preheat.client.bench.server_process import STARTUP_SECONDS, free_port
from preheat.loader.embedded import embedded_model_path
from random_gguf import GGUF_SHAPES, write_gguf

ROOT = Path(__file__).resolve().parent.parent
MODEL = "claude-bench"  # preheat serves any claude-* id; llama-server ignores it
PROMPT = "Write a long, detailed essay about the history of bridges."
MB = 1e6
CHECK_RSS_FACTOR, CHECK_RSS_MB, CHECK_START_S = 1.25, 150, 3.0


@dataclass
class Run:
    server: str
    model: str
    file: str
    file_bytes: int
    start_first_s: float | None = None
    start_second_s: float | None = None
    engine_hwm_bytes: int | None = None
    api_hwm_bytes: int | None = None  # preheat's HTTP process (llama-server: None, one process)
    decode_tok_s: float | None = None
    output_tokens: int | None = None
    error: str | None = None


class ServerFailed(RuntimeError):
    pass


def vm_hwm(pid: int) -> int | None:
    """Peak resident set size of a live process, in bytes."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def engine_core(api_pid: int) -> psutil.Process | None:
    """preheat's engine-core child: the largest ``multiprocessing`` spawn child."""
    cores = []
    for child in psutil.Process(api_pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            cmdline = " ".join(child.cmdline())
            if "spawn_main" in cmdline and "resource_tracker" not in cmdline:
                cores.append((child.memory_info().rss, child))
    return max(cores, key=lambda c: c[0])[1] if cores else None


@contextlib.contextmanager
def started(name: str, command: list[str], port: int) -> Iterator[tuple[subprocess.Popen, str, float]]:
    """Spawn ``command``; yield (process, base URL, seconds from spawn to /health 200);
    stop it, and any child it leaves behind, on exit."""
    log = Path(tempfile.mkstemp(prefix=f"model_memory_{name}_", suffix=".log")[1])
    print(f"  {' '.join(command)}\n    (log: {log})", flush=True)
    base_url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        spawned = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        children: list[psutil.Process] = []
        try:
            while True:
                if process.poll() is not None or time.perf_counter() - spawned > STARTUP_SECONDS:
                    tail = log.read_text(errors="replace")[-2000:]
                    raise ServerFailed(f"{name} did not come up (exit {process.poll()}):\n{tail}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                        break
                time.sleep(0.05)
            ready = time.perf_counter() - spawned
            with contextlib.suppress(psutil.Error):
                children = psutil.Process(process.pid).children(recursive=True)
            yield process, base_url, ready
        finally:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            for child in children:  # ours, by pid: an engine core outliving its server
                with contextlib.suppress(psutil.Error):
                    child.wait(timeout=30)
                with contextlib.suppress(psutil.Error):
                    if child.is_running():
                        child.kill()


def preheat_reply(base_url: str, max_tokens: int) -> tuple[int, float | None, float | None]:
    """One streamed greedy reply: (output tokens, first text delta, last text delta)."""
    client = anthropic.Anthropic(base_url=base_url, api_key="bench", max_retries=0, timeout=1800)
    first = last = None
    with client.messages.stream(model=MODEL, max_tokens=max_tokens,
                                messages=[{"role": "user", "content": PROMPT}],
                                extra_body={"temperature": 0}) as stream:
        for event in stream:
            if event.type == "content_block_delta" and getattr(event.delta, "text", None):
                last = time.perf_counter()
                first = first or last
        tokens = stream.get_final_message().usage.output_tokens
    return tokens, first, last


def llama_reply(base_url: str, max_tokens: int) -> tuple[int, float | None, float | None]:
    """The same through llama-server's OpenAI chat completions stream."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    first = last = None
    deltas, tokens = 0, None
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body,
                      timeout=httpx.Timeout(1800, connect=30)) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {resp.read()[:500]!r}")
        for line in resp.iter_lines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            chunk = json.loads(line[5:])
            choices = chunk.get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                last = time.perf_counter()
                first = first or last
                deltas += 1
            if chunk.get("usage"):
                tokens = chunk["usage"].get("completion_tokens")
    return (tokens if tokens is not None else deltas), first, last


def decode_rate(tokens: int, first: float | None, last: float | None) -> float | None:
    if tokens < 2 or first is None or last is None or last <= first:
        return None
    return (tokens - 1) / (last - first)


def preheat_command(gguf: Path, port: int, threads: int) -> list[str]:
    exe = ROOT / ".venv" / "bin" / "preheat"
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "preheat.cli"]
    return [*base, "serve", "--model", str(gguf), "--num-threads", str(threads),
            "--port", str(port), "--kv-cache-tokens", "8192", "--kv-disk-bytes", "0",
            "--log-level", "warning"]


def llama_command(binary: str, gguf: Path, port: int, threads: int) -> list[str]:
    return [binary, "-m", str(gguf), "-t", str(threads), "-c", "8192", "-np", "1",
            "--host", "127.0.0.1", "--port", str(port)]


def find_llama_server(given: str | None) -> str | None:
    if given:
        return given
    found = sorted(glob.glob("/work/peers/**/build/bin/llama-server", recursive=True))
    return found[0] if found else shutil.which("llama-server")


def measure(server: str, model: str, gguf: Path, command_for, reply, args) -> Run:
    """Two starts of one server on one file; the first also measures the reply and memory."""
    run = Run(server, model, str(gguf), gguf.stat().st_size)
    print(f"{server} on {model} ({run.file_bytes / MB:.0f} MB)", flush=True)
    try:
        port = free_port()
        with started(server, command_for(gguf, port, args.threads), port) as (proc, url, ready):
            run.start_first_s = ready
            print(f"    first start: {ready:.2f} s", flush=True)
            reply(url, 8)  # first-request costs
            tokens, first, last = reply(url, args.reply_tokens)
            run.output_tokens, run.decode_tok_s = tokens, decode_rate(tokens, first, last)
            core = engine_core(proc.pid) if server == "preheat" else None
            if server == "preheat":
                run.api_hwm_bytes = vm_hwm(proc.pid)
                run.engine_hwm_bytes = vm_hwm(core.pid) if core else None
                if core is None:  # the engine on the server's own thread
                    run.engine_hwm_bytes = run.api_hwm_bytes
            else:
                run.engine_hwm_bytes = vm_hwm(proc.pid)
            print(f"    decode: {fmt(run.decode_tok_s, '.1f')} tok/s ({tokens} tokens), "
                  f"engine peak RSS {mb(run.engine_hwm_bytes)}", flush=True)
        port = free_port()
        with started(server, command_for(gguf, port, args.threads), port) as (_, _, ready):
            run.start_second_s = ready
            print(f"    second start: {ready:.2f} s", flush=True)
    except (ServerFailed, RuntimeError, anthropic.APIError, httpx.HTTPError) as exc:
        run.error = str(exc).splitlines()[0][:300]
        print(f"    failed: {exc}", flush=True)
    return run


def model_files(names: list[str], out_dir: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for name in names:
        if name == "embedded":
            files[name] = embedded_model_path()
            continue
        if name not in GGUF_SHAPES or name == "tiny":
            raise SystemExit(f"unknown model {name!r} (embedded, llama-1b, llama-8b)")
        path = out_dir / f"random-{name}-Q4_K_M.gguf"
        if not path.exists():
            out_dir.mkdir(parents=True, exist_ok=True)
            print(f"writing {path} ...", flush=True)
            started_at = time.perf_counter()
            size = write_gguf(path, name)
            print(f"  {size / MB:.0f} MB in {time.perf_counter() - started_at:.0f} s", flush=True)
        files[name] = path
    return files


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def mb(value: int | None) -> str:
    return "-" if value is None else f"{value / MB:.0f} MB"


def table(runs: list[Run]) -> str:
    rows = ["| server | model | file | engine peak RSS | API process peak RSS | start first | "
            "start second | decode tok/s (tokens) | note |", "|---|---|---|---|---|---|---|---|---|"]
    secs = lambda v: "-" if v is None else f"{v:.2f} s"  # noqa: E731
    for r in runs:
        decode = "-" if r.output_tokens is None else f"{fmt(r.decode_tok_s, '.1f')} ({r.output_tokens})"
        rows.append(f"| {r.server} | {r.model} | {mb(r.file_bytes)} | {mb(r.engine_hwm_bytes)} | "
                    f"{mb(r.api_hwm_bytes)} | {secs(r.start_first_s)} | {secs(r.start_second_s)} | "
                    f"{decode} | {('failed: ' + r.error) if r.error else ''} |")
    return "\n".join(rows)


def checks(runs: list[Run]) -> list[str]:
    get = {(r.server, r.model): r for r in runs}
    base = get.get(("preheat", "embedded"))
    lines = []
    for model in ("llama-1b", "llama-8b"):
        big = get.get(("preheat", model))
        if base is None or big is None:
            continue
        if big.engine_hwm_bytes and base.engine_hwm_bytes:
            grew = big.engine_hwm_bytes - base.engine_hwm_bytes
            bound = CHECK_RSS_FACTOR * (big.file_bytes - base.file_bytes) + CHECK_RSS_MB * MB
            lines.append(f"(a) {model}: preheat engine peak RSS - embedded's = {grew / MB:.0f} MB; "
                         f"bound {CHECK_RSS_FACTOR} x {(big.file_bytes - base.file_bytes) / MB:.0f} MB"
                         f" + {CHECK_RSS_MB} MB = {bound / MB:.0f} MB: {'pass' if grew <= bound else 'FAIL'}")
        if big.start_second_s is not None and base.start_second_s is not None:
            extra = big.start_second_s - base.start_second_s
            lines.append(f"(b) {model}: preheat second start - embedded's = {extra:.2f} s; bound "
                         f"{CHECK_START_S:.0f} s: {'pass' if extra <= CHECK_START_S else 'FAIL'}")
    ours, peer = get.get(("preheat", "llama-1b")), get.get(("llama-server", "llama-1b"))
    if ours and peer and ours.decode_tok_s and peer.decode_tok_s:
        lines.append(f"(c) llama-1b decode: preheat {ours.decode_tok_s:.1f} / llama-server "
                     f"{peer.decode_tok_s:.1f} tok/s = {ours.decode_tok_s / peer.decode_tok_s:.2f}x")
    elif ours:
        lines.append("(c) llama-1b decode ratio: no llama-server figure in this run")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="embedded,llama-1b",
                        help="comma-separated: embedded, llama-1b, llama-8b")
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/preheat-random-gguf"),
                        help="where the random GGUF files are (written when missing)")
    parser.add_argument("--reply-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--llama-server", help="the llama-server binary")
    parser.add_argument("--only", choices=["preheat", "llama"])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    cpu = cpu_model()
    print(f"CPU: {cpu}, {args.threads} threads", flush=True)
    files = model_files([m.strip() for m in args.models.split(",") if m.strip()], args.out_dir)

    binary = None if args.only == "preheat" else find_llama_server(args.llama_server)
    skipped = None
    if args.only != "preheat" and binary is None:
        skipped = ("llama-server: none found (--llama-server, /work/peers/**/build/bin/, PATH); "
                   "the peer is skipped (bench/api_peer.py's BUILD_HINT builds it)")
        print(skipped, flush=True)

    runs: list[Run] = []
    for model, gguf in files.items():
        if args.only != "llama":
            runs.append(measure("preheat", model, gguf, preheat_command, preheat_reply, args))
        if binary is not None:
            runs.append(measure("llama-server", model, gguf,
                                lambda g, p, t: llama_command(binary, g, p, t), llama_reply, args))

    print(f"\nCPU: {cpu}; {args.threads} threads; reply {args.reply_tokens} tokens max, greedy; "
          f"KV 8192 tokens; llama-server: {binary or 'skipped'}\n")
    print(table(runs))
    if skipped:
        print(f"\n{skipped}")
    print()
    for line in checks(runs):
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu, "threads": args.threads,
                                         "reply_tokens": args.reply_tokens,
                                         "llama_server": binary,
                                         "runs": [asdict(r) for r in runs]}, indent=1))
        print(f"\nfigures written to {args.json}")


if __name__ == "__main__":
    main()
