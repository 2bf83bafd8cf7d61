"""Run every chapter the way a Colab reader does, in an environment like Colab's
(``make colab-check``).

1. A clean virtual environment (no system site-packages) gets only what a fresh
   Colab runtime provides and the notebooks may rely on (:data:`COLAB_PACKAGES`:
   torch, torchvision, numpy, matplotlib, scikit-learn, tqdm, ipykernel), at the
   torch/torchvision of tools/colab_constraints.txt (pyproject.toml's lower bounds).
   No myst-nb, nbval, jupyter-book or jupytext: the book's build tools.
2. revlib is *not* installed there. nbval (from the book's venv) executes every
   notebook in that environment's kernel, where an IPython startup file puts
   ``google.colab`` into ``sys.modules``: each setup cell takes its Colab branch and
   pip-installs ``revlib[train]`` as on Colab, except that ``$REVLIB_INSTALL`` points
   it at a copy of this checkout (pyproject.toml, README.md, revlib/) instead of the
   repository URL: a regular install with its declared dependencies, not ``-e``.
   The kernel runs with PyTorch's generic CPU kernels on one thread
   (:data:`PORTABLE_ENV`), and nbval compares every output with the committed one
   (nbval_sanitize.cfg): this is also make test's second, portable nbval pass.
3. The README's "Installing revlib in your own notebook" example runs as a script there.

A chapter that imports a package Colab lacks, or a revlib module that does so at
import time (say ``import myst_nb``), fails here. The unit test
tests/book/test_dependencies.py checks the same statically, in a second.

    python tools/colab_check.py            # reuse the environment in ~/.cache if it is complete
    python tools/colab_check.py --fresh    # build it from scratch (what CI on a fresh clone does)
    python tools/colab_check.py book/01_introduction.ipynb   # only some notebooks
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
    "scipy": "scipy",  # scikit-learn's own dependency
    "tqdm": "tqdm",
    "IPython": "ipykernel",  # ipykernel brings IPython
    "ipykernel": "ipykernel",
}
CONSTRAINTS = ROOT / "tools" / "colab_constraints.txt"
# What differs between machines, reproduced on one: PyTorch's generic CPU kernels (no
# AVX2/AVX-512), one thread.
PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def default_venv() -> Path:
    """Where the environment lives: in the user's cache, keyed by what it holds, so that every
    clone on this machine shares it (built once, in minutes: torch with its CUDA libraries is
    gigabytes)."""
    import hashlib

    key = hashlib.sha1(
        (" ".join(sorted(set(COLAB_PACKAGES.values()))) + CONSTRAINTS.read_text()).encode()
    ).hexdigest()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "revlib-colab-check" / f"venv-{key[:12]}"


# ------------------------------------------------------------------ static checks


def imports_of(source: str) -> set[str]:
    """Top-level names imported by ``source``, except inside ``try: ... except ImportError``
    (optional imports)."""
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
    return any(
        isinstance(k, ast.Name) and k.id in ("ImportError", "ModuleNotFoundError") for k in kinds
    )


def third_party(names: set[str], own: tuple[str, ...] = ("revlib",)) -> set[str]:
    """The names that are neither the standard library nor ``own``."""
    return {n for n in names if n not in sys.stdlib_module_names and n not in own}


def declared_distributions(
    pyproject: Path = ROOT / "pyproject.toml", extras: tuple[str, ...] = ("train",)
) -> set[str]:
    """Distribution names in ``dependencies`` and the given extras of pyproject.toml,
    lower-cased."""
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
    """os.environ without what would let the checkout or the book's venv leak into the
    Colab-like one."""
    env = dict(os.environ)
    for key in (
        "PYTHONPATH",
        "MPLBACKEND",
        "VIRTUAL_ENV",
        "PYTHONHOME",
        "JUPYTER_PATH",
        "REVLIB_INSTALL",
    ):
        env.pop(key, None)
    return env


def make_venv(venv: Path, fresh: bool) -> Path:
    """The Colab-like venv at ``venv`` (created if missing or ``fresh``); returns its python."""
    python = venv / "bin" / "python"
    stamp = venv / ".colab-check"
    wanted = json.dumps(
        {"packages": sorted(set(COLAB_PACKAGES.values())), "constraints": CONSTRAINTS.read_text()}
    )
    if fresh or not (stamp.exists() and stamp.read_text() == wanted and python.exists()):
        shutil.rmtree(venv, ignore_errors=True)
        base = getattr(sys, "_base_executable", sys.executable)
        run([base, "-m", "venv", str(venv)])  # --system-site-packages is off by default
        index = os.environ.get(
            "COLAB_CHECK_EXTRA_INDEX_URL"
        )  # e.g. PyTorch's index of CPU builds of torch, in CI
        run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-c",
                str(CONSTRAINTS),
                *(["--extra-index-url", index] if index else []),
                *sorted(set(COLAB_PACKAGES.values())),
            ],
            env=clean_env(),
        )
        stamp.write_text(wanted)
    # revlib is what the notebooks install: start every check without it
    subprocess.run(
        [str(python), "-m", "pip", "uninstall", "--quiet", "--yes", "revlib"],
        env=clean_env(),
        capture_output=True,
    )
    return python


def copy_of_checkout(dest: Path) -> Path:
    """What a pip install of the repository sees: pyproject.toml, README.md and the revlib
    package."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(
        ROOT / "revlib", dest / "revlib", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    return dest


def kernel_spec(python: Path, where: Path) -> str:
    """A Jupyter kernel named colab-check that runs ``python``; returns its name (set
    JUPYTER_PATH=where)."""
    spec = where / "kernels" / "colab-check"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Colab-like",
                "language": "python",
            }
        )
    )
    return "colab-check"


# An IPython startup file of the Colab-like kernel: what Colab has imported when a notebook starts.
COLAB_STARTUP = (
    "import sys, types\n"
    "google = sys.modules.setdefault('google', types.ModuleType('google'))\n"
    "google.colab = sys.modules['google.colab'] = types.ModuleType('google.colab')"
    "  # simulated: this is not Colab\n"
)


def readme_snippet(readme: Path = ROOT / "README.md") -> str:
    """The Python example of the README's "Installing revlib in your own notebook" section."""
    text = readme.read_text()
    section = text.split("## Installing revlib in your own notebook", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    if not match:
        raise SystemExit(
            "README.md: no ```python example in 'Installing revlib in your own notebook'"
        )
    return match.group(1)


def check(notebook_paths: list[Path], venv: Path, fresh: bool, timeout: int) -> int:
    """Build the environment, run nbval over the notebooks in its kernel, run the README example;
    0 if all pass."""
    t0 = time.perf_counter()
    python = make_venv(venv, fresh)
    t_env = time.perf_counter() - t0
    failures = []
    with tempfile.TemporaryDirectory(prefix="colab-check-") as tmp:
        tmp = Path(tmp)
        checkout = copy_of_checkout(tmp / "checkout")
        startup = tmp / "ipython" / "profile_default" / "startup"
        startup.mkdir(parents=True)
        (startup / "00-google-colab.py").write_text(COLAB_STARTUP)
        env = {
            **clean_env(),
            **PORTABLE_ENV,
            # the setup cell installs this copy
            "REVLIB_INSTALL": f"revlib[train] @ {checkout.as_uri()}",
            "JUPYTER_PATH": str(tmp / "jupyter"),
            "IPYTHONDIR": str(tmp / "ipython"),
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }
        kernel = kernel_spec(python, tmp / "jupyter")
        # nbval runs here (the book's venv); the notebooks run in the Colab-like kernel, with the
        # portable CPU settings, so this is also the second, portable nbval pass (README, Testing).
        start = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "--nbval",
                "--nbval-kernel-name",
                kernel,
                "--nbval-sanitize-with",
                str(ROOT / "nbval_sanitize.cfg"),
                "--nbval-cell-timeout",
                str(timeout),
                "-p",
                "no:cacheprovider",
                "-q",
                *map(str, notebook_paths),
            ],
            cwd=ROOT,
            env=env,
        )
        t_nb = time.perf_counter() - start
        if proc.returncode != 0:
            failures.append("nbval in the Colab-like kernel (see above)")
        start = time.perf_counter()
        script = tmp / "readme_snippet.py"
        script.write_text(readme_snippet())
        proc = subprocess.run(
            [str(python), str(script)],
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=clean_env(),
        )
        t_readme = time.perf_counter() - start
        if proc.returncode != 0:
            last = proc.stderr.strip().splitlines()[-1] if proc.stderr else proc.returncode
            failures.append(f"README.md snippet: {last}")
            print(proc.stderr, flush=True)
    versions = subprocess.run(
        [
            str(python),
            "-c",
            "import sys, torch, torchvision; "
            "print(f'Python {sys.version.split()[0]}, torch {torch.__version__}, "
            "torchvision {torchvision.__version__}')",
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
    ).stdout.strip()
    print(
        f"\ncolab-check ({versions}): environment {t_env:.0f} s, notebooks {t_nb:.0f} s, "
        f"README example {t_readme:.0f} s, total {time.perf_counter() - t0:.0f} s"
    )
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    print(
        f"all {len(notebook_paths)} notebooks and the README example ran in the Colab-like "
        "environment"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "notebooks", nargs="*", type=Path, help="executed notebooks (default: book/*.ipynb)"
    )
    parser.add_argument(
        "--venv",
        type=Path,
        default=None,
        help="default: a folder in ~/.cache keyed by its contents",
    )
    parser.add_argument("--fresh", action="store_true", help="rebuild the environment from scratch")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args(argv)
    paths = [p.resolve() for p in args.notebooks] or sorted(notebooks.BOOK.glob("*.ipynb"))
    return check(paths, (args.venv or default_venv()).resolve(), args.fresh, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
