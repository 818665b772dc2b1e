"""Execute notebooks/walkthrough.ipynb with nbclient so it never rots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "walkthrough.ipynb"


def test_walkthrough_notebook_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat", reason="install the notebooks extra: pip install -e .[notebooks]")
    nbclient = pytest.importorskip("nbclient", reason="install the notebooks extra: pip install -e .[notebooks]")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("THRESHER_NB_OUT", str(tmp_path / "nb"))
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) >= 4  # counts, histograms, overlap, score means (+ budget sweep)
    # the notebook's own outputs: three runs and a comparison report with its PNGs
    for name in ("top30", "top60", "random30"):
        assert (tmp_path / "nb" / name / "_manifest.json").exists()
    assert (tmp_path / "nb" / "compare" / "compare.html").exists()
    assert (tmp_path / "nb" / "compare" / "jaccard.png").exists()


def test_notebook_is_stored_without_outputs() -> None:
    """Committed clean: outputs (base64 images) belong to the executed copy, not the repository."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
