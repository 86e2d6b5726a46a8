"""App latency through gradio_client on 127.0.0.1 with the default model: one JSON line on stdout, logs on stderr.

Claims (goals): time to a full pair (two completions, 48 new tokens each) <= 3 s p50 while idle; first token <= 1 s
(the app does not stream: a pair appears whole, so first-token time = full-pair time, flagged in the JSON); label
submit <= 100 ms p95 with 8 concurrent clients; cold start of `workbench app` (process start to HTTP 200).

    python benchmarks/app_latency.py [--pairs 20] [--labels 50] [--clients 8] [--model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentiles(values: list[float]) -> dict:
    values = np.asarray(values) * 1000
    return {"p50_ms": round(float(np.percentile(values, 50)), 1), "p95_ms": round(float(np.percentile(values, 95)), 1),
            "n": int(values.size)}


def start_app(run: Path, model: str, port: int) -> tuple[subprocess.Popen, float]:
    """`python -m workbench app` as a person would start it; returns the process and its cold-start seconds."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "workbench", "app", "--run", str(run), "--model", model,
                                "--port", str(port)], stdout=sys.stderr, stderr=sys.stderr)
    url = f"http://127.0.0.1:{port}/"
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"workbench app exited with {process.returncode} before serving")
        try:
            if urllib.request.urlopen(url, timeout=2).status == 200:
                return process, time.perf_counter() - started
        except OSError:
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--labels", type=int, default=50, help="labels per client")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()
    from gradio_client import Client

    from workbench.data import builtin_prompts

    run = Path(tempfile.mkdtemp(prefix="app-latency-")) / "run"
    port = free_port()
    process, cold_start = start_app(run, args.model, port)
    url = f"http://127.0.0.1:{port}/"
    log(f"cold start {cold_start:.1f} s")
    try:
        client = Client(url, verbose=False)
        prompts = [r.text for r in builtin_prompts("heldout")]
        client.predict(prompts[-1], api_name="/new_pair")  # warm-up (first call pays one-off costs)
        pair_times, pair_ids = [], []
        for i in range(args.pairs):
            started = time.perf_counter()
            pair = client.predict(prompts[i % len(prompts)], api_name="/new_pair")
            pair_times.append(time.perf_counter() - started)
            pair_ids.append(pair["pair_id"])
            log(f"pair {i + 1}/{args.pairs}: {pair_times[-1]:.2f} s")

        def annotate(worker: int) -> list[float]:
            c = Client(url, verbose=False)
            times = []
            for i in range(args.labels):
                started = time.perf_counter()
                c.predict(pair_ids[i % len(pair_ids)], "A", f"bench{worker}", uuid.uuid4().hex, api_name="/label")
                times.append(time.perf_counter() - started)
            return times

        with ThreadPoolExecutor(args.clients) as pool:
            submit_times = [t for times in pool.map(annotate, range(args.clients)) for t in times]
        pair_stats = percentiles(pair_times)
        submit_stats = percentiles(submit_times)
        result = {
            "benchmark": "app_latency", "model": args.model, "max_new_tokens": 48,
            "streaming": False,
            "first_token_note": "not streamed: a pair appears whole, so first-token time = full-pair time",
            "first_token": pair_stats, "full_pair_idle": pair_stats,
            "label_submit_concurrent": {**submit_stats, "clients": args.clients},
            "cold_start_s": round(cold_start, 2),
            "goals": {"first_token_ms": 1000, "full_pair_p50_ms": 3000, "submit_p95_ms": 100},
            "meets": {"first_token": pair_stats["p50_ms"] <= 1000, "full_pair": pair_stats["p50_ms"] <= 3000,
                      "submit": submit_stats["p95_ms"] <= 100},
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        }
        print(json.dumps(result))
    finally:
        process.terminate()
        process.wait(30)


if __name__ == "__main__":
    main()
