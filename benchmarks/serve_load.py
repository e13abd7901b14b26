"""`medsum serve` under load: latency (p50, p95) and throughput at 1, 16 and 64 concurrent clients.

Serves a finished run (``--run``; by default a tiny LoRA run trained here in a few seconds) with ``medsum serve`` in
a subprocess, exactly as a user starts it, then for each number of concurrent clients sends requests from that many
threads at once: each client posts ``{"text": <a 3,000-character test article>}`` and, when answered, its next one,
until the level has sent at least ``--min-requests`` (and one per client). Latency is each request's wall time
from the client's side; throughput is answered requests per second of the level's wall time; ``/health`` tells how
many generate() calls (batches) served them. Generation uses the run's own generate.* settings. The table, with the
command, the date and the machine, is appended to docs/serving.md (``--report``).
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import common

SERVING_MD = common.REPO / "docs" / "serving.md"
ARTICLE_CHARS = 3000


def articles(data_dir: Path, n: int) -> list[str]:
    rows = common.read_rows(data_dir, "test", 200)
    texts = [r["article"][:ARTICLE_CHARS] for r in rows if len(r["article"]) >= ARTICLE_CHARS]
    return [texts[i % len(texts)] for i in range(n)]


def train_tiny_run(data_dir: Path, target: Path, settings: dict) -> Path:
    """A tiny LoRA run; ``settings`` (the requests' generation settings) also make its own test pass cheaper."""
    from medsum.config import load_run_config
    from medsum.train import run

    generate = [f"generate.{k}={v}" for k, v in settings.items()]
    if "max_new_tokens" in settings:
        generate.append(f"generate.min_new_tokens={min(30, settings['max_new_tokens'])}")
    cfg = load_run_config(None, ["model.name=tiny", f"data.path={data_dir}", "method.name=lora", "train.max_steps=4",
                                 "data.max_train_examples=16", "data.max_eval_examples=2", f"output_dir={target}",
                                 *generate])
    run(cfg, show_progress=False)
    return target


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(run_dir: Path, port: int, max_queue: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "medsum", "serve", "--run", str(run_dir), "--port", str(port),
               "--max-queue", str(max_queue)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"medsum serve exited: {server.stderr.read()[-500:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read()
            return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("medsum serve did not answer /health within 300 s")


def post(url: str, text: str, settings: dict) -> tuple[int, float]:
    body = json.dumps({"text": text, **settings}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=900) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as err:
        status = err.code
    return status, time.perf_counter() - start


def level(base: str, texts: list[str], clients: int, min_requests: int, settings: dict) -> dict:
    """``clients`` threads posting back to back until ``min_requests`` (at least one each) are answered."""
    per_client = max(1, math.ceil(min_requests / clients))
    results: list[tuple[int, float]] = []
    lock, go = threading.Lock(), threading.Event()

    def client(k: int) -> None:
        go.wait()
        for i in range(per_client):
            outcome = post(base + "/summarize", texts[(k * per_client + i) % len(texts)], settings)
            with lock:
                results.append(outcome)

    before = json.loads(urllib.request.urlopen(base + "/health", timeout=30).read())
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    start = time.perf_counter()
    go.set()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    after = json.loads(urllib.request.urlopen(base + "/health", timeout=30).read())
    latencies = sorted(seconds for _, seconds in results)
    return {"clients": clients, "requests": len(results), "ok": sum(s == 200 for s, _ in results),
            "p50": percentile(latencies, 50), "p95": percentile(latencies, 95), "wall": wall,
            "throughput": len(results) / wall, "batches": after["batches"] - before["batches"]}


def percentile(sorted_values: list[float], q: float) -> float:
    """The nearest-rank percentile."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=None, help="a finished run to serve (default: train a tiny one)")
    parser.add_argument("--data", type=Path, default=common.DEFAULT_DATA)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64], help="concurrency levels")
    parser.add_argument("--min-requests", type=int, default=16, help="requests per level, at least")
    parser.add_argument("--model", choices=("tiny",), default="tiny", help="the model of the default run")
    parser.add_argument("--num-beams", type=int, default=None, help="sent with each request (default: the run's)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="sent with each request (default: the run's)")
    common.add_machine_flags(parser)
    parser.set_defaults(report=SERVING_MD)
    args = parser.parse_args()
    common.apply_machine_flags(args)
    settings = {k: v for k, v in (("num_beams", args.num_beams), ("max_new_tokens", args.max_new_tokens))
                if v is not None}
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = args.run or train_tiny_run(args.data, Path(scratch) / "tiny-lora", settings)
        port = free_port()
        server = start_server(run_dir, port, max_queue=max(256, max(args.clients)))
        try:
            texts = articles(args.data, max(args.clients) + args.min_requests)
            rows = [level(f"http://127.0.0.1:{port}", texts, c, args.min_requests, settings) for c in args.clients]
        finally:
            server.terminate()
            server.wait(timeout=60)
    report(rows, run_dir if args.run else "a tiny LoRA run (4 steps) trained by the script", settings)


def report(rows: list[dict], what: str, settings: dict) -> None:
    table = common.markdown_table(
        ["concurrent clients", "requests", "answered 200", "p50 latency s", "p95 latency s", "throughput req/s",
         "generate() calls"],
        [[r["clients"], r["requests"], r["ok"], r["p50"], r["p95"], r["throughput"], r["batches"]] for r in rows])
    asked = f" except {', '.join(f'{k}={v}' for k, v in settings.items())}" if settings else ""
    notes = (f"Served: {what}, with its generate.* settings{asked}; each request one {ARTICLE_CHARS:,}-character test "
             f"article. Requests that arrive together share one generate() call (the last column).")
    common.report("Serving under load: latency and throughput (medsum serve)", table, notes)


if __name__ == "__main__":
    main()
