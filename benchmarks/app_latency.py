"""App latency through gradio_client on 127.0.0.1 with the default model: one JSON line on stdout, logs on stderr.

Claims (goals): first token <= 1 s and a full pair (two completions, up to 48 new tokens each) <= 3 s p50 while
idle; label submit <= 100 ms p95 with 8 concurrent clients. Also measured: the same pair times while an RL run trains
(`workbench pipeline --preset quick` in the background, measured once its RL stage has started), and the cold start
of `workbench app` (process start to HTTP 200).

Pairs come from the streaming endpoint `/stream_pair` (what the Rank tab shows): "first token" is the arrival of the
first streamed update (the first sampled token of both sides, decoded together in one batch), "full pair" the arrival
of the last one, which carries the id of the pair stored in the preference store. `per_step_ms` is
(full pair - first token) / (tokens - 1): the decoding step as the client sees it.

Label clients are made with `ssl_verify=False`: the app is plain HTTP on loopback, and with the default gradio_client
builds two httpx clients per call, each loading the CA bundle (~30 ms of client CPU each, nothing to do with the
app). Those default-client numbers are reported too (`label_submit_default_client`).

    python benchmarks/app_latency.py [--pairs 20] [--busy-pairs 10] [--labels 50] [--clients 8]
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

MAX_NEW_TOKENS = 48  # the app's pair length (PairConfig.max_new_tokens)


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


def stream_pair(client, prompt: str, tokenizer) -> dict:
    """One streamed pair: seconds to the first update and to the stored pair, and the decoding steps in between."""
    started = time.perf_counter()
    first = last = None
    for update in client.submit(prompt, api_name="/stream_pair"):
        first = first or time.perf_counter() - started
        last = update
    full = time.perf_counter() - started
    if last is None or last["pair_id"] is None:
        raise RuntimeError(f"/stream_pair ended without a stored pair: {last}")
    tokens = max(len(tokenizer(last[k], add_special_tokens=False)["input_ids"]) for k in ("completion_a", "completion_b"))
    return {"first": first, "full": full, "pair_id": last["pair_id"],
            "step": (full - first) / max(tokens - 1, 1) if tokens > 1 else None}


def measure_pairs(client, prompts: list[str], n: int, tokenizer, what: str) -> list[dict]:
    results = []
    for i in range(n):
        results.append(stream_pair(client, prompts[i % len(prompts)], tokenizer))
        log(f"{what} pair {i + 1}/{n}: first update {results[-1]['first']:.2f} s, full {results[-1]['full']:.2f} s")
    return results


def pair_stats(results: list[dict]) -> dict:
    steps = [r["step"] for r in results if r["step"] is not None]
    return {"first_token": percentiles([r["first"] for r in results]),
            "full_pair": percentiles([r["full"] for r in results]),
            "per_step_ms": round(1000 * float(np.median(steps)), 1) if steps else None}


def submit_labels(url: str, pair_ids: list[str], clients: int, labels: int, **client_kwargs) -> list[float]:
    from gradio_client import Client

    def annotate(worker: int) -> list[float]:
        c = Client(url, verbose=False, **client_kwargs)
        times = []
        for i in range(labels):
            started = time.perf_counter()
            c.predict(pair_ids[i % len(pair_ids)], "A", f"bench{worker}", uuid.uuid4().hex, api_name="/label")
            times.append(time.perf_counter() - started)
        return times

    with ThreadPoolExecutor(clients) as pool:
        return [t for times in pool.map(annotate, range(clients)) for t in times]


def start_rl_run(out: Path, timeout_s: float) -> tuple[subprocess.Popen, bool]:
    """The quick pipeline in the background (few pairs, many RL steps); returns once its RL stage logs a step."""
    process = subprocess.Popen([sys.executable, "-m", "workbench", "pipeline", "--preset", "quick", "--out", str(out),
                                "--pairs", "32", "--steps", "1000"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout_s
    metrics = out / "metrics.jsonl"
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and '"stage": "rl"' in metrics.read_text():  # a logged RL step
            return process, True
        time.sleep(2)
    return process, False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--busy-pairs", type=int, default=10, help="pairs while an RL run trains (0 skips)")
    parser.add_argument("--labels", type=int, default=50, help="labels per client")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()
    from gradio_client import Client

    from workbench.data import builtin_prompts
    from workbench.models import load_tokenizer

    tokenizer = load_tokenizer(args.model)  # to count the streamed tokens
    tmp = Path(tempfile.mkdtemp(prefix="app-latency-"))
    load_before = os.getloadavg()
    port = free_port()
    process, cold_start = start_app(tmp / "run", args.model, port)
    url = f"http://127.0.0.1:{port}/"
    log(f"cold start {cold_start:.1f} s")
    rl_process = None
    try:
        client = Client(url, verbose=False, ssl_verify=False)
        prompts = [r.text for r in builtin_prompts("heldout")]
        stream_pair(client, prompts[-1], tokenizer)  # warm-up (first call pays one-off costs)
        idle = measure_pairs(client, prompts, args.pairs, tokenizer, "idle")
        load_idle = os.getloadavg()
        pair_ids = [r["pair_id"] for r in idle]
        submit = submit_labels(url, pair_ids, args.clients, args.labels, ssl_verify=False)
        submit_default = submit_labels(url, pair_ids, args.clients, args.labels)
        busy, rl_started = [], False
        if args.busy_pairs:
            rl_process, rl_started = start_rl_run(tmp / "rl-run", timeout_s=600)
            log(f"RL run {'training' if rl_started else 'did not reach its RL stage'}")
            if rl_started:
                busy = measure_pairs(client, prompts, args.busy_pairs, tokenizer, "during RL")
        idle_stats, submit_stats = pair_stats(idle), percentiles(submit)
        result = {
            "benchmark": "app_latency", "model": args.model, "max_new_tokens": MAX_NEW_TOKENS, "streaming": True,
            "idle": idle_stats,
            "during_rl": {**pair_stats(busy), "rl_training": True} if busy else {"rl_training": rl_started},
            "label_submit_concurrent": {**submit_stats, "clients": args.clients, "ssl_verify": False},
            "label_submit_default_client": {**percentiles(submit_default), "clients": args.clients},
            "cold_start_s": round(cold_start, 2),
            "goals": {"first_token_ms": 1000, "full_pair_p50_ms": 3000, "submit_p95_ms": 100},
            "meets": {"first_token": idle_stats["first_token"]["p50_ms"] <= 1000,
                      "full_pair": idle_stats["full_pair"]["p50_ms"] <= 3000,
                      "submit": submit_stats["p95_ms"] <= 100},
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "loadavg_1m": {"start": round(load_before[0], 2), "after_idle_pairs": round(load_idle[0], 2),
                                       "end": round(os.getloadavg()[0], 2)}},
        }
        print(json.dumps(result))
    finally:
        if rl_process is not None and rl_process.poll() is None:
            os.killpg(rl_process.pid, 15)  # its own session: the pipeline and any workers it started
            rl_process.wait(30)
        process.terminate()
        process.wait(30)


if __name__ == "__main__":
    main()
