"""Every notebook in notebooks/ is committed without outputs and runs top to bottom at smoke size.

The notebooks read WORKBENCH_SMOKE=1 in their `parameters` cell and switch to the tiny random model and a few
training steps. The kernel inherits this process's environment and runs in pytest's tmp_path, so the run
directories the notebooks write (runs/...) never land in the repository.
"""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def _ids(path: Path) -> str:
    return path.stem


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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_runs_at_smoke_size(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WORKBENCH_SMOKE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs if out.output_type == "error"]
    assert not errors
