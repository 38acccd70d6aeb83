"""The notebook runs top to bottom, headless, on a private workspace."""

import nbformat
import pytest
from nbclient import NotebookClient

from tests.helpers import ROOT

pytestmark = pytest.mark.slow(seconds=20)


def test_reuse_components_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("CTPIPE_NOTEBOOK_WORKSPACE", str(tmp_path))
    notebook = nbformat.read(ROOT / "docs" / "notebooks" / "reuse_components.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = "".join(str(output) for cell in notebook.cells for output in cell.get("outputs", []))
    assert "window 2: version 2 blessed=True" in outputs
    assert "content hash from the KFP task" in outputs
    assert (tmp_path / "compiled" / "training.yaml").exists()
