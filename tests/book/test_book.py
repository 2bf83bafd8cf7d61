"""The book's frame: notebooks match their sources, start with the setup cell, and are all in the
toc."""

from __future__ import annotations

import json

import notebooks
import pytest
import yaml
from helpers import ROOT

NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))


def test_every_notebook_matches_its_source_and_is_executed():
    assert notebooks.check() == []


def toc_files(entries: list[dict]) -> set[str]:
    """Every ``file`` named in a _toc.yml list of entries, their sections included."""
    files = set()
    for entry in entries:
        if "file" in entry:
            files.add(entry["file"])
        files |= toc_files(entry.get("sections", []))
    return files


def test_toc_lists_exactly_the_chapters():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    listed = toc_files(toc["chapters"])
    on_disk = {f"book/{p.stem}" for p in NOTEBOOKS}
    assert on_disk <= listed
    for entry in listed:
        assert (ROOT / f"{entry}.ipynb").exists() or (ROOT / f"{entry}.md").exists(), entry


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_installs_from_the_configured_repository(path):
    nb = json.loads(path.read_text())
    first = next(c for c in nb["cells"] if c["cell_type"] == "code")
    source = "".join(first["source"])
    assert f"git+{notebooks.repository_url()}" in source
    assert "google.colab" in source
    text = "".join("".join(o.get("text", [])) for o in first["outputs"])
    assert "running on:" in text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_hold_no_machine_paths_or_errors(path):
    raw = path.read_text()
    assert str(ROOT.parent) + "/" not in raw
    nb = json.loads(raw)
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error"


def test_readme_warns_about_the_other_revlib_on_pypi():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make book" in readme
    assert "PyPI's `revlib` is another" in readme and "HomebrewNLP" in readme
    assert "revlib.ReversibleSequential" in readme  # how to tell the two apart
    assert notebooks.repository_url() in readme
