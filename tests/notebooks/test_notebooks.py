"""Every notebook in notebooks/ is committed without outputs and runs top to bottom at smoke size.

The notebooks read WORKBENCH_SMOKE=1 in their `parameters` cell and switch to the tiny random model and a few
training steps. The kernel inherits this process's environment and runs in pytest's tmp_path, so the run
directories the notebooks write (runs/...) never land in the repository.

Each notebook is executed once: 01 on its own (its executed copy is also exported to HTML), 02 -> 03 -> 04 as the
tutorial chain in one working directory, where 03 and 04 must reuse what the notebooks before them left.
"""

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
CHAIN = ("02_preferences_and_reward_model", "03_rl_finetuning", "04_before_after_and_overoptimisation")
TUTORIAL_RUN = "runs/tutorial_smoke"  # the chain's RUN_DIR at smoke size (each chain notebook's parameters cell)
PLOTLY_JSON = "application/vnd.plotly.v1+json"


def _ids(path: Path) -> str:
    return path.stem


def execute_at_smoke_size(name: str, cwd: Path) -> nbformat.NotebookNode:
    """Run notebooks/<name>.ipynb in `cwd` with WORKBENCH_SMOKE=1; raises CellExecutionError, naming the cell."""
    nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    with pytest.MonkeyPatch.context() as patch:  # the kernel inherits the environment when it starts
        patch.setenv("WORKBENCH_SMOKE", "1")
        patch.setenv("HF_HUB_OFFLINE", "1")
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs if out.output_type == "error"]
    assert not errors, f"{name}: {errors}"
    return nb


def printed(nb: nbformat.NotebookNode) -> str:
    return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
                   if out.output_type == "stream" and out.get("name") == "stdout")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_is_committed_without_outputs(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [
        index for index, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, f"{path.name}: code cells {dirty} have outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_has_smoke_parameters_cell(path: Path):
    nb = nbformat.read(path, as_version=4)
    tagged = [cell for cell in nb.cells if "parameters" in cell.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: needs exactly one code cell tagged 'parameters'"
    assert "WORKBENCH_SMOKE" in tagged[0].source, f"{path.name}: the parameters cell must read WORKBENCH_SMOKE"
    assert "WORKBENCH_QUICK" in tagged[0].source, f"{path.name}: the parameters cell must offer the quick look"


def test_every_notebook_is_executed_by_a_test():
    assert {p.stem for p in NOTEBOOKS} == {"01_pretrained_lm", *CHAIN}, "a new notebook needs a smoke-size test here"


@pytest.fixture(scope="module")
def executed_01(tmp_path_factory) -> nbformat.NotebookNode:
    return execute_at_smoke_size("01_pretrained_lm", tmp_path_factory.mktemp("nb01"))


def test_pretrained_lm_runs_at_smoke_size(executed_01):
    assert any(PLOTLY_JSON in out.get("data", {}) for cell in executed_01.cells for out in cell.get("outputs", []))


def test_exported_html_draws_every_figure_offline(executed_01):
    """`jupyter nbconvert --to html` keeps every figure, drawn by plotly.js embedded once, with no CDN for plots."""
    from nbconvert import HTMLExporter
    from plotly.offline import get_plotlyjs

    figures = [out for cell in executed_01.cells for out in cell.get("outputs", []) if PLOTLY_JSON in out.get("data", {})]
    assert figures and all("text/html" in out["data"] for out in figures), "each figure needs its HTML fallback"
    html, _ = HTMLExporter().from_notebook_node(executed_01)
    assert html.count('class="plotly-graph-div"') == len(figures)
    plotly_js = get_plotlyjs()
    assert html.count(plotly_js) == 1, "plotly.js must be embedded exactly once"
    sources = re.findall(r"<script[^>]*\bsrc=[\"']([^\"']+)", html)
    assert not [s for s in sources if "plot.ly" in s or "plotly" in s or "jsdelivr" in s], sources
    outside = html.replace(plotly_js, "")  # the bundle itself names cdn.plot.ly (map data), never loaded here
    assert "cdn.plot.ly" not in outside and "cdn.jsdelivr" not in outside


def _stamps(root: Path, *parts: str) -> dict[str, int]:
    """mtime (ns) of every file under root/<part> (a file or a folder)."""
    files = [p for part in parts for p in ([root / part] if (root / part).is_file() else (root / part).rglob("*"))]
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in files if p.is_file()}


def test_tutorial_chain_reuses_earlier_stages(tmp_path: Path):
    """02 -> 03 -> 04 in one folder: 03 trains RL on 02's labels and reward model, 04 only evaluates 03's run."""
    run = tmp_path / TUTORIAL_RUN
    execute_at_smoke_size(CHAIN[0], tmp_path)
    stage2 = _stamps(run, "prefs.sqlite", "reward/model", "reward/eval.json")
    assert {"prefs.sqlite", "reward/eval.json", "reward/model/workbench_reward.json"} <= set(stage2)

    nb03 = execute_at_smoke_size(CHAIN[1], tmp_path)
    assert re.search(r"reused labels \(\d+ by sim:upbeat-concise:T=0.1\), reward model \(.*\); ran nothing", printed(nb03))
    assert _stamps(run, "prefs.sqlite", "reward/model", "reward/eval.json") == stage2, "03 rewrote stage 2"
    stage3 = _stamps(run, "rl/policy", "rl/checkpoints", "rl/config.json")
    assert "rl/policy/workbench_policy.json" in stage3

    nb04 = execute_at_smoke_size(CHAIN[2], tmp_path)
    line = re.search(r"reused labels .*, reward model .*, RL \(rloo, \d+ steps\); ran evaluation", printed(nb04))
    assert line, printed(nb04)
    assert _stamps(run, "prefs.sqlite", "reward/model", "reward/eval.json") == stage2, "04 rewrote stage 2"
    assert _stamps(run, "rl/policy", "rl/checkpoints", "rl/config.json") == stage3, "04 rewrote 03's RL run"
    assert (run / "rl" / "eval.json").stat().st_mtime_ns > max(stage3.values())
    assert not (run / "pipeline.json").exists()  # no pipeline run of its own
    assert os.listdir(tmp_path / "runs") == ["tutorial_smoke"], "the chain writes into one run directory"
