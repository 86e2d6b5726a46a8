"""Robustness of the workbench against careless users and web pages on the same machine: one JSON line on stdout.

Claims (goals): every bad input refused cleanly (exit code 2 / a 4xx answer with a message naming the culprit, no
traceback, no hang, nothing written); every security probe passed (Host/Origin allow-list, login throttling,
security headers, file routes, run directory not shown); durability kept on a reduced loop (0 acknowledged labels
lost across kill -9 cycles of a store writer, 0 duplicates from concurrent clients re-sending 10 % of their labels).

- CLI: the table of tests/test_hardening_cli.py (every command), run in-process, each in a thread with a deadline
  (a hang), its output folder snapshotted before and after (a partial write); plus a few in fresh processes.
- App API: the app on 127.0.0.1 with tiny-random-llama and a login, probed over plain HTTP.

    python benchmarks/robustness.py [--kill-cycles 2] [--per-cycle 150] [--clients 16] [--labels 10] [--deadline 60]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
EVIL = "evil.example"
WRITER = """
import sys
from workbench.preferences.store import PreferenceStore
store, index = PreferenceStore(sys.argv[1]), int(sys.argv[2])
while True:  # print a submission id only once add_label has returned (after COMMIT): the acknowledgement
    label = store.add_label(f"pair{index % 20}", "AB"[index % 2], f"ann{index % 3}", f"sub-{index}")
    print(label.submission_id, flush=True)
    index += 1
"""


def cpu() -> str:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    kind = "AVX512-BF16" if "avx512_bf16" in flags else "AVX2" if "avx2" in flags else platform.machine()
    return f"{platform.processor() or platform.machine()} {kind}, {os.cpu_count()} cores"


# -- CLI ----------------------------------------------------------------------------------------------------------

def run_in_process(argv: list[str], deadline: float) -> tuple[str, int | None, str]:
    """("done" | "traceback" | "hang", exit code, stderr) of workbench.cli.main(argv) in a thread."""
    from workbench import cli

    result: dict = {}

    def target():
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                result["code"] = cli.main(argv)
            result["kind"] = "done"
        except SystemExit as exit_:  # argparse refusals exit 2 with a usage line: clean
            result["code"], result["kind"] = exit_.code, "done"
        except BaseException as error:  # noqa: BLE001 - an uncaught exception is what we count
            result["kind"], result["error"] = "traceback", f"{type(error).__name__}: {error}"
        result["err"] = err.getvalue()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(deadline)
    if thread.is_alive():
        return "hang", None, ""
    return result["kind"], result.get("code"), result.get("err", "") + result.get("error", "")


def cli_cases(folder: Path, deadline: float) -> dict:
    import apps.workbench_app
    from tests.test_hardening_cli import CASES, make_bad_inputs, snapshot

    apps.workbench_app.launch = lambda *a, **k: (_ for _ in ()).throw(AssertionError("the app was started"))
    make_bad_inputs(folder)
    counts = {"tried": 0, "refused_cleanly": 0, "tracebacks": 0, "hangs": 0, "partial_writes": 0,
              "wrong_exit_or_message": 0}
    failures = []
    for argv, culprit in CASES:
        before = snapshot(folder)
        kind, code, err = run_in_process([a.format(d=folder) for a in argv], deadline)
        written = snapshot(folder) != before
        counts["tried"] += 1
        counts["tracebacks"] += kind == "traceback" or "Traceback" in err
        counts["hangs"] += kind == "hang"
        counts["partial_writes"] += written
        clean = kind == "done" and code == 2 and culprit in err and not written and "Traceback" not in err
        counts["refused_cleanly"] += clean
        if not clean:
            counts["wrong_exit_or_message"] += kind == "done" and not written
            failures.append({"argv": " ".join(argv)[:100], "kind": kind, "code": code, "stderr": err[-300:]})
    return {**counts, "failures": failures}


def cli_processes(folder: Path, deadline: float) -> dict:
    """The issue's first traceback in a fresh `python -m workbench` process (what a user at a shell sees; one
    case only: each process start imports torch)."""
    cases = [(["prefs", "import", "--db", f"{folder}/fresh.sqlite", f"{folder}/deep.jsonl"], "nested too deeply")]
    counts = {"tried": 0, "refused_cleanly": 0, "tracebacks": 0, "hangs": 0}
    for argv, culprit in cases:
        counts["tried"] += 1
        try:
            out = subprocess.run([sys.executable, "-m", "workbench", *argv], capture_output=True, text=True,
                                 timeout=deadline, cwd=folder)
        except subprocess.TimeoutExpired:
            counts["hangs"] += 1
            continue
        counts["tracebacks"] += "Traceback" in out.stderr
        counts["refused_cleanly"] += out.returncode == 2 and culprit in out.stderr and "Traceback" not in out.stderr
    counts["partial_writes"] = int((folder / "fresh.sqlite").exists())
    return counts


# -- app ----------------------------------------------------------------------------------------------------------

def start_app(run_dir: Path):
    import torch

    from apps.context import AppContext, LoadedPolicy
    from apps.workbench_app import build_demo, serve
    from tests.app.conftest import free_port
    from workbench.models import load_policy

    torch.set_num_threads(1)
    ctx = AppContext.open(run_dir, policy=LoadedPolicy("tiny-random-llama", *load_policy("tiny-random-llama")))
    demo = build_demo(context=ctx)
    port = free_port()
    serve(demo, "127.0.0.1", port, auth=[("bench", "bench-pw")], prevent_thread_lock=True, quiet=True)
    return demo, ctx, f"http://127.0.0.1:{port}/"


def app_probes(url: str, demo, ctx, clients: int, labels: int) -> tuple[dict, dict, dict]:
    from apps import ranking
    from tests.app.test_security import fn_index, request

    status, headers, _ = request(url, "POST", "/login", {"username": "bench", "password": "bench-pw"}, form=True)
    cookie = "; ".join(part.split(";")[0] for part in headers.get("set-cookie", "").split(", ") if "=" in part)
    auth = {"Cookie": cookie}
    pairs = ranking.generate_pairs(ctx, ranking.next_prompts(ctx, 8))
    rows = lambda: ctx.store.connection().execute("SELECT COUNT(*) FROM labels").fetchone()[0]  # noqa: E731

    def label(pair_id, *extra, submission=None, headers=None):
        body = {"data": [pair_id, "A", "bench", submission or uuid.uuid4().hex, *extra]}
        return request(url, "POST", "/gradio_api/run/label", body, {**auth, **(headers or {})})

    # API cases: refused with the right code and a message, nothing written
    api = {"tried": 0, "refused_cleanly": 0, "tracebacks": 0, "partial_writes": 0, "failures": []}

    def api_case(name, call, code, text):
        before = rows()
        got, _, reply = call()
        api["tried"] += 1
        wrote = rows() != before
        api["partial_writes"] += wrote
        api["tracebacks"] += "Traceback" in json.dumps(reply) or "StopIteration" in json.dumps(reply)
        ok = got == code and text in json.dumps(reply) and not wrote
        api["refused_cleanly"] += ok
        if not ok:
            api["failures"].append({"case": name, "status": got, "reply": str(reply)[:200]})

    used = uuid.uuid4().hex
    label(pairs[0].pair_id, submission=used)
    api_case("five values to /label", lambda: label(pairs[1].pair_id, "extra"), 422, "takes 4 values")
    api_case("three values to /label", lambda: request(url, "POST", "/gradio_api/run/label",
                                                       {"data": [pairs[1].pair_id, "A", "x"]}, auth), 422, "got 3")
    api_case("unknown endpoint", lambda: request(url, "POST", "/gradio_api/run/nope", {"data": []}, auth), 404,
             "no API endpoint")
    api_case("private handler by name", lambda: request(url, "POST", "/gradio_api/run/on_vote", {"data": []}, auth),
             404, "no API endpoint")
    api_case("re-used submission id on another pair", lambda: label(pairs[2].pair_id, submission=used), 500,
             "already used for another vote")
    api_case("unknown pair", lambda: label("no-such-pair"), 500, "Unknown pair")
    api_case("bad choice", lambda: request(url, "POST", "/gradio_api/run/label",
                                           {"data": [pairs[1].pair_id, "C", "x", "s-c"]}, auth), 500, "choice")
    api_case("megabyte submission id", lambda: label(pairs[1].pair_id, submission="x" * 10**6), 500, "submission_id")
    api_case("not JSON", lambda: request(url, "POST", "/gradio_api/run/label", b"{oops", auth), 422, "not JSON")
    api_case("no login", lambda: request(url, "POST", "/gradio_api/run/label", {"data": [pairs[1].pair_id, "A", "x",
                                                                                         "s-n"]}), 401, "")

    # security probes: pass = refused (or the header/path property holds) and nothing written
    probes: dict[str, bool] = {}
    port = url.rsplit(":", 1)[1].strip("/")
    before = rows()
    for name, headers in (("host", {"Host": EVIL}), ("host+origin", {"Host": EVIL, "Origin": f"http://{EVIL}"}),
                          ("origin", {"Origin": f"http://{EVIL}"}), ("origin null", {"Origin": "null"})):
        probes[f"label with {name}"] = label(pairs[3].pair_id, headers=headers)[0] == 403
        probes[f"config with {name}"] = request(url, "GET", "/config", headers={**auth, **headers})[0] == 403
    for elem_id in ("rl-start", "rl-stop", "rm-train"):
        index = fn_index(demo, elem_id)
        got = request(url, "POST", "/gradio_api/queue/join", {"data": [None] * len(demo.fns[index].inputs),
                                                              "fn_index": index, "session_hash": "rebind"},
                      {**auth, "Host": EVIL})[0]
        probes[f"{elem_id} from another host"] = got == 403
    blind = next(i for i, fn in demo.fns.items() if fn.name == "on_blind_vote")
    probes["blind vote from another host"] = request(
        url, "POST", "/gradio_api/queue/join", {"data": [None, None], "fn_index": blind, "session_hash": "r"},
        {**auth, "Origin": f"http://{EVIL}"})[0] == 403
    probes["nothing written by refused requests"] = rows() == before and ctx.jobs.status("rl")["state"] == "idle"
    probes["own names served"] = all(label(pairs[4].pair_id, headers={"Host": f"{h}:{port}"})[0] == 200
                                     for h in ("127.0.0.1", "localhost"))
    for path in ("/", "/config", "/gradio_api/info", "/missing"):
        _, headers, _ = request(url, "GET", path, headers=auth)
        probes[f"headers on {path}"] = (headers.get("x-frame-options") == "DENY"
                                        and "frame-ancestors 'none'" in headers.get("content-security-policy", "")
                                        and headers.get("x-content-type-options") == "nosniff"
                                        and bool(headers.get("referrer-policy")))
    for path in (f"/gradio_api/file={ctx.store.path}", "/gradio_api/file=../../../../etc/passwd",
                 "/gradio_api/file=/etc/passwd", f"/gradio_api/file={ctx.root}/app/jobs/reward.err"):
        probes[f"file route {path[-24:]}"] = request(url, "GET", path, headers=auth)[0] in (403, 404)
    page = request(url, "GET", "/", headers=auth)[2] + json.dumps(request(url, "GET", "/config", headers=auth)[2])
    probes["run directory shown by name only"] = str(ctx.root) not in page and ctx.root.name in page
    codes = [request(url, "POST", "/login", {"username": "mallory", "password": f"guess{i}"}, form=True)[0]
             for i in range(40)]
    probes["login throttled (429 after 5 failures)"] = codes[:5] == [400] * 5 and set(codes[5:]) == {429}

    # durability: concurrent clients, every 10th label re-sent, each stored exactly once
    before = rows()

    def annotate(worker: int) -> list[int]:
        ids = []
        for i in range(labels):
            body = {"data": [pairs[(worker + i) % len(pairs)].pair_id, "AB"[i % 2], f"w{worker}", f"w{worker}-{i}"]}
            reply = request(url, "POST", "/gradio_api/run/label", body, auth)[2]
            ids.append(reply["data"][0]["label_id"])
            if i % 10 == 0:
                assert request(url, "POST", "/gradio_api/run/label", body, auth)[2]["data"][0]["label_id"] == ids[-1]
        return ids

    with ThreadPoolExecutor(clients) as pool:
        ids = [i for batch in pool.map(annotate, range(clients)) for i in batch]
    concurrent = {"clients": clients, "labels_sent": len(ids), "resent": clients * ((labels + 9) // 10),
                  "stored": rows() - before, "duplicates": len(ids) - len(set(ids))}
    return api, probes, concurrent


def kill9_cycles(folder: Path, cycles: int, per_cycle: int) -> dict:
    """A store writer killed with SIGKILL mid-stream, `cycles` times: every acknowledged label must be stored."""
    from workbench.preferences import Pair, PreferenceStore

    path = folder / "kill9.sqlite"
    with PreferenceStore(path) as store:
        store.add_pairs([Pair(f"pair{i}", "p", f"a{i}", f"b{i}", "m", "m", False) for i in range(20)])
    acknowledged: set[str] = set()
    for cycle in range(cycles):  # each cycle writes new submission ids (and re-sends the previous cycle's last)
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(cycle * per_cycle * 2)],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        seen = 0
        while seen < per_cycle:
            line = writer.stdout.readline()
            if not line:
                break
            acknowledged.add(line.strip())
            seen += 1
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        acknowledged.update(line.strip() for line in writer.stdout.read().splitlines())
    with PreferenceStore(path) as store:
        stored = [row[0] for row in store.connection().execute("SELECT submission_id FROM labels")]
        ok = store.connection().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    return {"cycles": cycles, "acknowledged": len(acknowledged), "lost": len(acknowledged - set(stored)),
            "duplicates": len(stored) - len(set(stored)), "integrity_ok": ok}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kill-cycles", type=int, default=2)
    parser.add_argument("--per-cycle", type=int, default=150, help="acknowledged labels before each kill -9")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--labels", type=int, default=10, help="labels per client (every 10th re-sent)")
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds before a case counts as a hang")
    args = parser.parse_args()
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="wb-robust-") as tmp:
        tmp = Path(tmp)
        (tmp / "cli").mkdir()
        phases, mark = {}, time.monotonic()

        def lap(name):
            nonlocal mark
            phases[name], mark = round(time.monotonic() - mark, 1), time.monotonic()

        cli = cli_cases(tmp / "cli", args.deadline)
        lap("cli_in_process")
        processes = cli_processes(tmp / "cli", args.deadline)
        lap("cli_processes")
        with contextlib.redirect_stdout(sys.stderr):  # Gradio prints to stdout; it carries only the JSON line
            demo, ctx, url = start_app(tmp / "app-run")
            try:
                api, probes, concurrent = app_probes(url, demo, ctx, args.clients, args.labels)
            finally:
                demo.close()
                ctx.close()
        lap("app")
        kill9 = kill9_cycles(tmp, args.kill_cycles, args.per_cycle)
        lap("kill9")
    parts = (cli, processes, api)
    result = {
        "benchmark": "robustness", "cpu": cpu(),
        "cases_tried": sum(p["tried"] for p in parts),
        "refused_cleanly": sum(p["refused_cleanly"] for p in parts),
        "tracebacks": sum(p["tracebacks"] for p in parts),
        "hangs": cli["hangs"] + processes["hangs"],
        "partial_writes": sum(p["partial_writes"] for p in parts),
        "by_kind": {"cli_in_process": {k: v for k, v in cli.items() if k != "failures"},
                    "cli_processes": processes, "app_api": {k: v for k, v in api.items() if k != "failures"}},
        "security_probes": {"tried": len(probes), "passed": sum(probes.values()),
                            "failed": [name for name, ok in probes.items() if not ok]},
        "durability": {"kill9": kill9, "concurrent": concurrent},
        "failures": cli["failures"][:10] + api["failures"][:10],
        "seconds": round(time.monotonic() - start, 1), "seconds_by_phase": phases,
    }
    result["goal_met"] = (result["refused_cleanly"] == result["cases_tried"] and not result["failures"]
                          and result["security_probes"]["passed"] == result["security_probes"]["tried"]
                          and kill9["lost"] == 0 and kill9["duplicates"] == 0 and kill9["integrity_ok"]
                          and concurrent["duplicates"] == 0 and concurrent["stored"] == concurrent["labels_sent"])
    print(json.dumps(result), file=sys.__stdout__)  # sys.stdout may still be a case's redirect


if __name__ == "__main__":
    main()
