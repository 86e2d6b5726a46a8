"""Claim (issue 23): a student runs the notebooks 01 -> 04 in order, at their default size, in <= 30 minutes in total on
a quiet 2-core machine, no notebook over 12 minutes; the "quick look" parameter (WORKBENCH_QUICK=1) halves that.

Runs each notebook top to bottom with nbclient, as `jupyter nbconvert --execute` would, in one working directory
(so 02, 03 and 04 share `runs/tutorial` and each reuses what the one before left), and times every notebook and its
slowest cell. The executed copies are kept in <workdir>/executed/ to read. Prints one JSON line.

    python benchmarks/notebooks.py                 # default size, all four (a fresh workdir: nothing reused from before)
    python benchmarks/notebooks.py --quick         # the quick-look parameter
    python benchmarks/notebooks.py --only 01_pretrained_lm
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("01_pretrained_lm", "02_preferences_and_reward_model", "03_rl_finetuning",
             "04_before_after_and_overoptimisation")
GOAL_TOTAL_S, GOAL_EACH_S = 30 * 60, 12 * 60


def cpu_flags() -> dict:
    flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0] if Path("/proc/cpuinfo").exists() else ""
    return {"avx2": " avx2" in flags, "avx512f": " avx512f" in flags, "avx512_bf16": " avx512_bf16" in flags,
            "cores": os.cpu_count(), "load_avg_1m_at_start": round(os.getloadavg()[0], 2)}


def slowest_cell(nb) -> dict | None:
    """The code cell that took longest, from the timestamps nbclient records in each cell's metadata."""
    best = None
    for index, cell in enumerate(nb.cells):
        timing = cell.get("metadata", {}).get("execution", {})
        if cell.cell_type != "code" or "iopub.execute_input" not in timing or "shell.execute_reply" not in timing:
            continue
        start = datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00"))
        seconds = (end - start).total_seconds()
        if best is None or seconds > best["seconds"]:
            best = {"cell": index, "seconds": round(seconds, 1), "first_line": cell.source.split("\n")[0][:80]}
    return best


def run_notebook(name: str, workdir: Path, timeout: int) -> dict:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    started = time.perf_counter()
    error = None
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=True,
                       resources={"metadata": {"path": str(workdir)}}).execute()
    except Exception as exc:  # a failing cell: report it, keep the executed part
        error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ''}"
    seconds = time.perf_counter() - started
    (workdir / "executed").mkdir(exist_ok=True)
    nbformat.write(nb, workdir / "executed" / f"{name}.ipynb")
    return {"notebook": name, "seconds": round(seconds, 1), "slowest_cell": slowest_cell(nb), "error": error,
            "within_12_min": seconds <= GOAL_EACH_S}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/bench_notebooks", help="emptied first: nothing is reused")
    parser.add_argument("--quick", action="store_true", help="the quick-look parameter (WORKBENCH_QUICK=1)")
    parser.add_argument("--only", nargs="+", choices=NOTEBOOKS, help="a subset, still in order")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = parser.parse_args()
    workdir = Path(args.workdir).resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    os.environ["HF_HUB_OFFLINE"] = "1"  # the kernels inherit this environment
    os.environ.pop("WORKBENCH_SMOKE", None)
    if args.quick:
        os.environ["WORKBENCH_QUICK"] = "1"
    else:
        os.environ.pop("WORKBENCH_QUICK", None)
    machine = {"processor": platform.processor() or platform.machine(), **cpu_flags(),
               "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    results = [run_notebook(name, workdir, args.timeout) for name in (args.only or NOTEBOOKS)]
    total = sum(r["seconds"] for r in results)
    complete = not args.only and all(r["error"] is None for r in results)
    print(json.dumps({
        "benchmark": "notebooks", "size": "quick" if args.quick else "default", "notebooks": results,
        "total_seconds": round(total, 1),
        "goal_total_le_30_min": (total <= GOAL_TOTAL_S) if complete else None,
        "goal_each_le_12_min": all(r["within_12_min"] for r in results) if complete else None,
        "machine": machine, "load_avg_1m_at_end": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()
