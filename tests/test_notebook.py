"""examples/quickstart.ipynb runs top to bottom at smoke scale, as papermill would run it."""

import os
import re

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "quickstart.ipynb")


def _with_parameters(nb, **parameters):
    """Inserts an `injected-parameters` cell after the `parameters`-tagged one (papermill's way)."""
    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    source = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
    nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(
        source, metadata={"tags": ["injected-parameters"]}))
    return nb


def _stream_text(cell) -> str:
    return "".join(out.get("text", "") for out in cell.get("outputs", [])
                   if out.output_type == "stream" and out.name == "stdout")


@pytest.mark.slow
def test_quickstart_notebook_runs_at_smoke_scale(data_dir, tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), (
        "save examples/quickstart.ipynb without outputs")
    _with_parameters(nb, SCALE="smoke", WORKDIR=str(tmp_path / "runs"), DATA_DIR=data_dir)
    # The kernel inherits this process's environment: conftest's 8 simulated CPU devices, and no
    # GUI backend for matplotlib.
    monkeypatch.setenv("MPLBACKEND", "Agg")

    NotebookClient(nb, kernel_name="python3", timeout=600,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    errors = [out for cell in nb.cells for out in cell.get("outputs", [])
              if out.output_type == "error"]
    assert not errors, errors
    printed = "".join(_stream_text(cell) for cell in nb.cells)
    teacher = re.search(r"teacher test accuracy: ([0-9.]+)", printed)
    student = re.search(r"student test accuracy: ([0-9.]+)", printed)
    assert teacher and student, printed
    assert 0.0 <= float(student.group(1)) <= 1.0
    assert "teacher_params" in printed  # the memory report
    curves = tmp_path / "runs" / "learning_curves.png"
    assert curves.stat().st_size > 10_000, "the learning curves were not drawn"
