"""The serving benchmark: many streaming clients at once against the same clients one at a time.

Starts ``chargen serve RUN`` on 127.0.0.1 (a subprocess), then sends ``--clients`` streaming
completions of ``--tokens`` tokens each, first one after another, then all at once, with real
HTTP clients (httpx) in this process. Reports aggregate tokens/s of both, the speed-up, the time
to the first token (median and 99th percentile) and the slowest request against the median one
(no request starved). Run on a quiet machine:

    python benchmarks/serve.py --run bench --checkpoint-dir DIR     # a trained default model

Writes benchmarks/results/serve-latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


async def one(client: httpx.AsyncClient, url: str, model: str, tokens: int, seed: int) -> dict:
    """One streaming completion: time to the first text, total time, tokens received.

    The body is read as it comes, as raw bytes: the load generator shares the two cores with
    the server, so it decodes nothing but the first event (it must hold text) and the usage
    event at the end."""
    body = {"model": model, "prompt": "ROMEO:", "max_tokens": tokens, "seed": seed,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    started = time.perf_counter()
    first, tail = None, b""
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for data in response.aiter_raw():
            if first is None:
                event = json.loads(data.split(b"\n\n", 1)[0].removeprefix(b"data: "))
                assert event["choices"][0]["text"], "the first event holds text"
                first = time.perf_counter() - started
            tail = (tail + data)[-4096:]
    events = [e for e in tail.split(b"\n\n") if b'"usage"' in e]
    received = json.loads(events[-1].removeprefix(b"data: "))["usage"]["completion_tokens"]
    return {"first": first, "seconds": time.perf_counter() - started, "tokens": received}


async def sequential(url: str, model: str, clients: int, tokens: int) -> tuple[float, list]:
    async with httpx.AsyncClient(timeout=600) as client:
        started = time.perf_counter()
        results = [await one(client, url, model, tokens, i) for i in range(clients)]
        return time.perf_counter() - started, results


async def concurrent(url: str, model: str, clients: int, tokens: int) -> tuple[float, list]:
    limits = httpx.Limits(max_connections=clients + 8)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        started = time.perf_counter()
        results = await asyncio.gather(
            *(one(client, url, model, tokens, i) for i in range(clients))
        )
        return time.perf_counter() - started, list(results)


def summary(seconds: float, results: list[dict]) -> dict:
    firsts = sorted(r["first"] for r in results)
    durations = sorted(r["seconds"] for r in results)
    return {
        "tokens_per_sec": sum(r["tokens"] for r in results) / seconds,
        "seconds": seconds,
        "first_token_p50": statistics.median(firsts),
        "first_token_p99": firsts[min(len(firsts) - 1, round(0.99 * (len(firsts) - 1)))],
        "request_seconds_median": statistics.median(durations),
        "request_seconds_max": durations[-1],
        "all_complete": all(r["tokens"] == results[0]["tokens"] for r in results),
    }


def start_server(run: str, checkpoint_dir: str, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "chargen", "--checkpoint-dir", checkpoint_dir, "serve", run,
               "--port", str(port), "--no-assets"]  # fmt: skip
    server = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit(f"the server did not start: {server.stderr.read()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="bench")
    parser.add_argument(
        "--checkpoint-dir", default=os.environ.get("CHARGEN_CHECKPOINTS", "checkpoints")
    )
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=500)
    args = parser.parse_args()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = start_server(args.run, args.checkpoint_dir, port)
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(one_warm_up(url, args.run))
        alone = summary(*asyncio.run(sequential(url, args.run, args.clients, args.tokens)))
        together = summary(*asyncio.run(concurrent(url, args.run, args.clients, args.tokens)))
    finally:
        server.terminate()
        server.wait(timeout=30)
    speedup = together["tokens_per_sec"] / alone["tokens_per_sec"]
    record = {"clients": args.clients, "tokens": args.tokens, "one_at_a_time": alone,
              "all_at_once": together, "speedup": speedup}  # fmt: skip
    for name in ("one_at_a_time", "all_at_once"):
        print(f"{name:<14} {line(record[name])}", file=sys.stderr)
    print(f"speed-up {speedup:.1f}x (target >= 10x)", file=sys.stderr)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve-latest.json").write_text(json.dumps(record, indent=2) + "\n")


def line(figures: dict) -> str:
    p50, p99 = figures["first_token_p50"] * 1000, figures["first_token_p99"] * 1000
    return (
        f"{figures['tokens_per_sec']:>10,.0f} tokens/s   first token p50 {p50:,.0f} ms, "
        f"p99 {p99:,.0f} ms   slowest request {figures['request_seconds_max']:.1f} s "
        f"(median {figures['request_seconds_median']:.1f} s)"
    )


async def one_warm_up(url: str, model: str) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        await one(client, url, model, 20, 0)


if __name__ == "__main__":
    main()
