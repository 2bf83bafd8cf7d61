"""Run every chapter the way a Colab reader does, in an environment like Colab's (``make colab-check``).

1. A clean virtual environment (no system site-packages) gets only what a fresh
   Colab runtime provides and the notebooks may rely on (:data:`COLAB_PACKAGES`:
   torch, torchvision, numpy, matplotlib, scikit-learn, tqdm, ipykernel), at the
   oldest torch/torchvision that pyproject.toml declares (tools/colab_constraints.txt).
   No myst-nb, nbval, jupyter-book or jupytext: the book's build tools.
2. revlib is *not* installed. Each chapter, built from its source, runs in that
   environment's kernel with ``google.colab`` present in ``sys.modules``, so its
   setup cell takes the Colab branch and pip-installs ``revlib[train]``, the way
   it does on Colab, except that ``$REVLIB_INSTALL`` points the install at a copy of
   this checkout (pyproject.toml, README.md, revlib/) instead of the repository URL:
   a regular install with its declared dependencies, not ``-e``.
3. The README's "Installing revlib in your own notebook" example runs as a script there.

A chapter that imports a package Colab lacks, or a revlib module that does so at
import time (say ``import myst_nb``), fails here. The unit test
tests/test_dependencies.py checks the same statically, in a second.

    python tools/colab_check.py                # reuse .colab-venv if it is complete
    python tools/colab_check.py --fresh        # build it from scratch (what CI on a fresh clone does)
    python tools/colab_check.py book/src/01_introduction.py   # only some chapters
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import notebooks  # noqa: E402

# What a fresh Colab runtime has that the notebooks may use: import name -> distribution.
COLAB_PACKAGES = {
    "torch": "torch",
    "torchvision": "torchvision",
    "numpy": "numpy",
    "matplotlib": "matplotlib",
    "sklearn": "scikit-learn",
    "tqdm": "tqdm",
    "IPython": "ipykernel",  # ipykernel brings IPython
    "ipykernel": "ipykernel",
}
CONSTRAINTS = ROOT / "tools" / "colab_constraints.txt"
DEFAULT_VENV = ROOT / ".colab-venv"


# ------------------------------------------------------------------ static checks


def imports_of(source: str) -> set[str]:
    """Top-level names imported by ``source``, except inside ``try: ... except ImportError`` (optional imports)."""
    tree = ast.parse(source)
    optional: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(_catches_import_error(h) for h in node.handlers):
            for stmt in node.body:
                optional.update(id(n) for n in ast.walk(stmt))
    names = set()
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(k, ast.Name) and k.id in ("ImportError", "ModuleNotFoundError") for k in kinds)


def third_party(names: set[str], own: tuple[str, ...] = ("revlib",)) -> set[str]:
    """The names that are neither the standard library nor ``own``."""
    return {n for n in names if n not in sys.stdlib_module_names and n not in own}


def declared_distributions(pyproject: Path = ROOT / "pyproject.toml", extras: tuple[str, ...] = ("train",)) -> set[str]:
    """Distribution names in ``dependencies`` and the given extras of pyproject.toml, lower-cased."""
    import tomllib

    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project.get("dependencies", []))
    for extra in extras:
        reqs += project.get("optional-dependencies", {}).get(extra, [])
    return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower() for r in reqs}


# ----------------------------------------------------------------- the environment


def run(cmd: list[str], **kwargs) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kwargs)


def clean_env() -> dict[str, str]:
    """os.environ without what would let the checkout or the book's venv leak into the Colab-like one."""
    env = dict(os.environ)
    for key in ("PYTHONPATH", "MPLBACKEND", "VIRTUAL_ENV", "PYTHONHOME", "JUPYTER_PATH", "REVLIB_INSTALL"):
        env.pop(key, None)
    return env


def make_venv(venv: Path, fresh: bool) -> Path:
    """The Colab-like venv at ``venv`` (created if missing or ``fresh``); returns its python."""
    python = venv / "bin" / "python"
    stamp = venv / ".colab-check"
    wanted = json.dumps({"packages": sorted(set(COLAB_PACKAGES.values())), "constraints": CONSTRAINTS.read_text()})
    if fresh or not (stamp.exists() and stamp.read_text() == wanted and python.exists()):
        shutil.rmtree(venv, ignore_errors=True)
        base = getattr(sys, "_base_executable", sys.executable)
        run([base, "-m", "venv", str(venv)])  # --system-site-packages is off by default
        index = os.environ.get("COLAB_CHECK_EXTRA_INDEX_URL")  # e.g. PyTorch's index of CPU builds of torch, in CI
        run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-c", str(CONSTRAINTS),
             *(["--extra-index-url", index] if index else []), *sorted(set(COLAB_PACKAGES.values()))], env=clean_env())
        stamp.write_text(wanted)
    # revlib is what the notebooks install: start every check without it
    subprocess.run([str(python), "-m", "pip", "uninstall", "--quiet", "--yes", "revlib"], env=clean_env(),
                   capture_output=True)
    return python


def copy_of_checkout(dest: Path) -> Path:
    """What a pip install of the repository sees: pyproject.toml, README.md and the revlib package."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "revlib", dest / "revlib", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def kernel_spec(python: Path, where: Path) -> str:
    """A Jupyter kernel named colab-check that runs ``python``; returns its name (set JUPYTER_PATH=where)."""
    spec = where / "kernels" / "colab-check"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Colab-like", "language": "python"}))
    return "colab-check"


# Runs before a chapter: what Colab has imported when a notebook starts.
COLAB_PREAMBLE = (
    "import sys, types\n"
    "google = sys.modules.setdefault('google', types.ModuleType('google'))\n"
    "google.colab = sys.modules['google.colab'] = types.ModuleType('google.colab')  # simulated: this is not Colab\n"
)


def readme_snippet(readme: Path = ROOT / "README.md") -> str:
    """The Python example of the README's "Installing revlib in your own notebook" section."""
    text = readme.read_text()
    section = text.split("## Installing revlib in your own notebook", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    if not match:
        raise SystemExit("README.md: no ```python example in 'Installing revlib in your own notebook'")
    return match.group(1)


def check(sources: list[Path], venv: Path, fresh: bool, timeout: int) -> int:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    t0 = time.perf_counter()
    python = make_venv(venv, fresh)
    t_env = time.perf_counter() - t0
    failures, times = [], {}
    with tempfile.TemporaryDirectory(prefix="colab-check-") as tmp:
        tmp = Path(tmp)
        checkout = copy_of_checkout(tmp / "checkout")
        os.environ.clear()
        os.environ.update(clean_env())
        os.environ["REVLIB_INSTALL"] = f"revlib[train] @ {checkout.as_uri()}"
        os.environ["JUPYTER_PATH"] = str(tmp / "jupyter")
        kernel = kernel_spec(python, tmp / "jupyter")
        workdir = tmp / "notebooks"
        workdir.mkdir()
        for src in sources:
            nb = notebooks.notebook_from_source(src)
            nb.cells.insert(0, nbformat.v4.new_code_cell(COLAB_PREAMBLE))
            start = time.perf_counter()
            try:
                NotebookClient(nb, timeout=timeout, kernel_name=kernel,
                               resources={"metadata": {"path": str(workdir)}}).execute()
            except CellExecutionError as err:
                failures.append(f"{src.name}: {str(err).strip().splitlines()[-1]}")
                print(f"FAILED {src.name}:\n{err}", flush=True)
            times[src.name] = time.perf_counter() - start
            print(f"{src.name}: {times[src.name]:.1f} s", flush=True)
        start = time.perf_counter()
        script = tmp / "readme_snippet.py"
        script.write_text(readme_snippet())
        proc = subprocess.run([str(python), str(script)], cwd=tmp, capture_output=True, text=True, timeout=timeout)
        times["README snippet"] = time.perf_counter() - start
        if proc.returncode != 0:
            failures.append(f"README.md snippet: {proc.stderr.strip().splitlines()[-1] if proc.stderr else proc.returncode}")
            print(proc.stderr, flush=True)
    versions = subprocess.run([str(python), "-c", "import sys, torch, torchvision; "
                               "print(f'Python {sys.version.split()[0]}, torch {torch.__version__}, "
                               "torchvision {torchvision.__version__}')"], capture_output=True, text=True).stdout.strip()
    print(f"\ncolab-check ({versions}): environment {t_env:.0f} s, chapters and README "
          f"{sum(times.values()):.0f} s, total {time.perf_counter() - t0:.0f} s")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    print(f"all {len(sources)} chapters and the README snippet ran in the Colab-like environment")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="*", type=Path, help="chapter sources (default: all)")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--fresh", action="store_true", help="rebuild the environment from scratch")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args(argv)
    sources = [s.resolve() for s in args.sources] or sorted(notebooks.SRC.glob("*.py"))
    return check(sources, args.venv.resolve(), args.fresh, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
