"""notebooks/walkthrough.ipynb: kept without outputs in git, and executed top to bottom (a `slow` test) on the real
SmolLM2-135M and the shared data, with what each step must show checked in the files it wrote."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "walkthrough.ipynb"
SHARED_DATA = REPO.parent / "shared" / "data"


def test_committed_notebook_has_no_outputs() -> None:
    """The notebook is committed stripped: no outputs, no execution counts (CI runs it; nothing in git can rot)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, "the walkthrough has code cells"
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    text = "\n".join(cell.source for cell in nb.cells)
    for command in ("train", "forget", "inspect", "eval", "export"):
        assert re.search(rf'codeunlearn\(\s*f?"{command} ', text), f"the walkthrough runs `codeunlearn {command}`"


def cell_text(cell: nbformat.NotebookNode) -> str:
    """The printed text of an executed code cell."""
    return "".join(out.get("text", "") for out in cell.outputs if out.get("output_type") == "stream")


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "demo").is_dir(), reason="needs ../shared/data beside the repository")
def test_walkthrough_runs_top_to_bottom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nbclient import NotebookClient

    out = tmp_path / "walkthrough"
    monkeypatch.setenv("CODEUNLEARN_WALKTHROUGH_OUT", str(out))
    monkeypatch.setenv("CODEUNLEARN_DATA_DIR", str(SHARED_DATA))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(REPO)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, when a cell fails

    for name in (
        "train/training_curves.png",
        "forget/firing_frequency.png",
        "inspect/inspect.html",
        "eval/token_loss_increase.png",
        "export/config.json",
    ):
        assert (out / name).is_file(), name
    displayed = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert sum("image/png" in out.get("data", {}) for out in displayed) >= 3, "the figures are shown inline"
    assert any("srcdoc" in out.get("data", {}).get("text/html", "") for out in displayed), "the page is inline"

    # The edit forgets its topic: the held-out Harry Potter loss rises more than general text's, and more than
    # the same number of random codes raises it.
    rows = json.loads((out / "eval" / "report.json").read_text())["rows"]
    edit = next(row for row in rows if row["row"].endswith("(edit.json)"))
    control = next(row for row in rows if row["row"].endswith("(random_control.json)"))
    assert edit["delta_forget"] > edit["delta_retain"]
    assert edit["delta_forget"] > control["delta_forget"]

    # Switched off, the export is the base model: the same greedy continuation.
    printed = cell_text(nb.cells[-2])
    base = re.search(r"^base model +-> (.*)$", printed, re.M)
    off = re.search(r"^switch off +-> (.*)$", printed, re.M)
    assert base and off and base.group(1) == off.group(1), printed
