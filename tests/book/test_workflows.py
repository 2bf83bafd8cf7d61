"""The GitHub workflows: valid YAML, valid against the workflow schema, and doing what the README
says."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import notebooks
import pytest
import yaml
from helpers import ROOT

WORKFLOWS = ROOT / ".github" / "workflows"


def load(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


def steps(job: dict) -> list[str]:
    return [s.get("run", "") + s.get("uses", "") for s in job["steps"]]


def test_workflows_match_the_github_workflow_schema(tmp_path):
    exe = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    if not Path(exe).exists():
        pytest.skip("check-jsonschema is not installed (it is in requirements.txt)")
    files = sorted(str(p) for p in WORKFLOWS.glob("*.yml"))
    proc = subprocess.run(
        [exe, "--builtin-schema", "vendor.github-workflows", *files], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the check can fail: a misspelt key is refused
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    stepz: []\n")
    assert (
        subprocess.run(
            [exe, "--builtin-schema", "vendor.github-workflows", str(bad)], capture_output=True
        ).returncode
        != 0
    )


def test_book_is_built_with_the_readme_command_and_deployed_on_pushes_to_main():
    wf = load("book.yml")
    assert wf["on"]["push"]["branches"] == ["main"]
    assert wf["permissions"]["pages"] == "write" and wf["permissions"]["id-token"] == "write"
    build = steps(wf["jobs"]["build"])
    assert "make book" in build and "```bash\nmake book" in (ROOT / "README.md").read_text()
    assert any(s.startswith("actions/upload-pages-artifact") for s in build)
    assert any(s.startswith("actions/deploy-pages") for s in steps(wf["jobs"]["deploy"]))
    assert wf["jobs"]["build"]["steps"][-1]["with"]["path"] == "_build/html"


def test_pull_requests_run_the_ci_script():
    wf = load("ci.yml")
    assert "pull_request" in wf["on"]
    assert ".ci/run" in steps(wf["jobs"]["test"])
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_book_and_repository_urls_are_each_set_once():
    book, repo = notebooks.book_url(), notebooks.repository_url()
    assert book.startswith("https://") and repo.startswith("https://github.com/")
    config = (ROOT / "_config.yml").read_text()
    assert config.count(book) == 1 and config.count(repo) == 1
    readme = (ROOT / "README.md").read_text()
    assert book in readme and repo in readme
