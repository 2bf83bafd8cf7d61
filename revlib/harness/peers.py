"""revlib beside its peers: one model built in each library (:data:`PEERS`, each with what its
adapter builds).

The model is a stack of additive coupling blocks, ``y1 = x1 + F(x2)``,
``y2 = x2 + G(y1)``, with the *same* modules F and G handed to every library,
so gradients and buffers are read from those objects whatever a library calls
its parameters. Where a library has a switch for random layers the adapter
turns it on, as a user with dropout would. PyPI's revlib (HomebrewNLP's)
cannot be installed beside this one: :func:`load_revlib_pypi` installs it into
a private folder and loads its one module under another name. The checks
against autograd are in :mod:`revlib.harness.peer_checks`; :func:`held_bytes`
measures what one forward leaves allocated for the backward (the profiler's
memory events, which also see tensors a library keeps on its autograd node).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor, nn

__all__ = [
    "LIBRARIES",
    "PEERS",
    "PINNED",
    "Peer",
    "PeerUnavailable",
    "PlainCoupling",
    "preact_half",
    "plain_half",
    "peers_folder",
    "load",
    "load_revlib_pypi",
    "missing",
    "build",
    "held_bytes",
    "training_step",
]

PINNED = {"memcnn": "1.5.2", "revtorch": "0.2.4", "FrEIA": "0.2", "revlib": "1.7.2"}
"""PyPI distribution -> the version every number of the chapter was taken with (``revlib``
here is HomebrewNLP's)."""


@dataclass(frozen=True)
class Peer:
    """One library of the comparison.

    Attributes:
        key: the name used in tables and JSON files.
        label: the name shown to a reader.
        distribution: its PyPI distribution, or ``None`` (torch itself, this revlib).
        version: the pinned version, or ``None``.
        url: its repository (``None`` for this revlib: the book's own, in _config.yml).
        settings: what the adapter builds, in words.
    """

    key: str
    label: str
    distribution: str | None
    version: str | None
    url: str | None
    settings: str


PEERS: dict[str, Peer] = {
    p.key: p
    for p in (
        Peer(
            "autograd",
            "plain autograd",
            None,
            None,
            "https://github.com/pytorch/pytorch",
            "nn.Sequential of the coupling blocks; everything stored (the reference)",
        ),
        Peer(
            "revlib",
            "revlib (this book)",
            None,
            None,
            None,
            'ReversibleSequence([AdditiveCoupling(F, G), ...]), mode "reversible"',
        ),
        Peer(
            "checkpoint",
            "torch.utils.checkpoint",
            None,
            None,
            "https://github.com/pytorch/pytorch",
            "checkpoint(block, x, use_reentrant=False) per block",
        ),
        Peer(
            "memcnn",
            f"MemCNN {PINNED['memcnn']}",
            "memcnn",
            PINNED["memcnn"],
            "https://github.com/silvandeleemput/memcnn",
            "InvertibleModuleWrapper(AdditiveCoupling(F, G), keep_input=False, "
            "preserve_rng_state=True) per block",
        ),
        Peer(
            "revtorch",
            f"RevTorch {PINNED['revtorch']}",
            "revtorch",
            PINNED["revtorch"],
            "https://github.com/RobinBruegger/RevTorch",
            "ReversibleSequence(ModuleList([ReversibleBlock(F, G, fix_random_seed=True), ...]))",
        ),
        Peer(
            "revlib_pypi",
            f"PyPI revlib {PINNED['revlib']}",
            "revlib",
            PINNED["revlib"],
            "https://github.com/HomebrewNLP/revlib",
            "ReversibleSequential(F1, G1, F2, G2, ...), memory_mode autograd_function",
        ),
        Peer(
            "freia",
            f"FrEIA {PINNED['FrEIA']}",
            "FrEIA",
            PINNED["FrEIA"],
            "https://github.com/vislearn/FrEIA",
            "SequenceINN(C, H, W) with NICECouplingBlock(subnet_constructor: F, G) per block",
        ),
    )
}

LIBRARIES = tuple(PEERS)
"""Every library's key, the reference first."""


class PeerUnavailable(ImportError):
    """A peer library cannot be loaded here; the message says why and how to get it."""


# ----------------------------------------------------------------------------- the model


def preact_half(channels: int) -> nn.Sequential:
    """F or G of benchmarks/step_time.py: BN-ReLU-conv3x3-BN-ReLU-conv3x3 on one half of the
    channels (the pre-activation basic block of the official RevNet code)."""
    return nn.Sequential(
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
    )


def plain_half(channels: int, dropout: float = 0.0) -> nn.Sequential:
    """conv3x3-ReLU-(dropout)-conv3x3: F or G without state, or with dropout only."""
    layers: list[nn.Module] = [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Conv2d(channels, channels, 3, padding=1))
    return nn.Sequential(*layers)


class PlainCoupling(nn.Module):
    """``y1 = x1 + F(x2)``, ``y2 = x2 + G(y1)`` on the two halves of dimension 1, with plain
    autograd: the reference, written with torch only."""

    def __init__(self, f: nn.Module, g: nn.Module) -> None:
        super().__init__()
        self.f = f
        self.g = g

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = x.chunk(2, dim=1)
        y1 = x1 + self.f(x2)
        y2 = x2 + self.g(y1)
        return torch.cat([y1, y2], dim=1)


class _Checkpointed(nn.Module):
    """Each block under non-reentrant :func:`torch.utils.checkpoint.checkpoint`."""

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        from torch.utils.checkpoint import checkpoint

        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False)
        return x


class _FirstOutput(nn.Module):
    """A FrEIA network, returning its output without the log-Jacobian-determinant."""

    def __init__(self, inn: nn.Module) -> None:
        super().__init__()
        self.inn = inn

    def forward(self, x: Tensor) -> Tensor:
        return self.inn(x)[0]


# ------------------------------------------------------------------------ loading peers


def peers_folder() -> Path:
    """Where :func:`load_revlib_pypi` installs PyPI's revlib: ``$REVLIB_PEERS_DIR``, or
    ``revlib-peers`` in the user's cache folder."""
    env = os.environ.get("REVLIB_PEERS_DIR")
    if env:
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "revlib-peers"


_PYPI_REVLIB_MODULE = "revlib_pypi_core"


def load_revlib_pypi(install: bool = True, folder: Path | None = None) -> ModuleType:
    """HomebrewNLP's revlib (PyPI ``revlib``, :data:`PINNED` version), as module
    ``revlib_pypi_core``, without touching this revlib.

    Both are imported as ``revlib``, so it cannot be pip-installed beside this one.
    It is installed with ``pip install --no-deps --target FOLDER`` into
    ``folder/revlib-VERSION`` (default :func:`peers_folder`; done once, when
    ``install`` is true and the folder lacks it). Its package ``__init__``
    re-exports ``revlib.core`` by absolute import, which would find this revlib's
    ``revlib.core``; everything it defines is in its ``core.py``, which imports
    only torch, so that one file is loaded, under the name ``revlib_pypi_core``.
    The package folder is never put on ``sys.path``.

    Raises :class:`PeerUnavailable` when it is not there and cannot be installed
    (offline, say), with pip's last line.
    """
    if _PYPI_REVLIB_MODULE in sys.modules:
        return sys.modules[_PYPI_REVLIB_MODULE]
    version = PINNED["revlib"]
    target = (folder or peers_folder()) / f"revlib-{version}"
    core = target / "revlib" / "core.py"
    stamp = target / f"revlib-{version}.dist-info"
    if not (core.exists() and stamp.exists()):
        if not install:
            raise PeerUnavailable(f"PyPI revlib {version} is not installed in {target}")
        _install_into(target, f"revlib=={version}")
        if not core.exists():
            raise PeerUnavailable(f"PyPI revlib {version}: no revlib/core.py in {target}")
    spec = importlib.util.spec_from_file_location(_PYPI_REVLIB_MODULE, core)
    if spec is None or spec.loader is None:  # pragma: no cover
        raise PeerUnavailable(f"cannot load {core}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_PYPI_REVLIB_MODULE] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[_PYPI_REVLIB_MODULE]
        raise PeerUnavailable(f"PyPI revlib {version}: {type(err).__name__}: {err}") from err
    setattr(module, "__version__", version)  # noqa: B010 (a module, not a class)
    return module


def _install_into(target: Path, requirement: str) -> None:
    """``pip install --no-deps --target`` into a new folder beside ``target``, renamed to
    ``target`` when complete (pip writes the ``.dist-info`` folder last): two processes
    installing at once (the two nbval passes of ``make test``) never see a half-written
    folder, and the second one's copy is dropped."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}-", dir=target.parent) as tmp:
        staging = Path(tmp) / "target"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--target",
                str(staging),
                requirement,
            ],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout or "no output").strip().splitlines()
            raise PeerUnavailable(
                f"{requirement} could not be installed into {target} "
                f"(pip: {lines[-1] if lines else proc.returncode})"
            )
        if any(target.glob("*.dist-info")):
            return  # another process finished first: keep its copy, drop this one
        shutil.rmtree(target, ignore_errors=True)  # a folder left incomplete, if any
        try:
            staging.rename(target)
        except OSError:
            if not any(target.glob("*.dist-info")):  # not another process's copy
                raise


_IMPORT_NAMES = {"memcnn": "memcnn", "revtorch": "revtorch", "freia": "FrEIA"}


def load(key: str, install: bool = True) -> ModuleType:
    """The module of peer ``key`` (``torch`` for autograd and checkpoint, ``revlib`` for ours).

    A wrong installed version is refused: the chapter's numbers belong to the
    pinned one. Raises :class:`PeerUnavailable` with the way to get it.
    """
    if key in ("autograd", "checkpoint"):
        return torch
    if key == "revlib":
        return importlib.import_module("revlib")
    if key == "revlib_pypi":
        return load_revlib_pypi(install=install)
    peer = PEERS[key]
    try:
        with warnings.catch_warnings():
            # MemCNN 1.5.2 uses torch.cuda.amp.custom_fwd, which torch 2.4+ calls deprecated
            warnings.simplefilter("ignore", FutureWarning)
            module = importlib.import_module(_IMPORT_NAMES[key])
            if key == "freia":
                importlib.import_module("FrEIA.framework")
                importlib.import_module("FrEIA.modules")
    except ImportError as err:
        raise PeerUnavailable(
            f"{peer.label} is not installed (pip install --no-deps "
            f"{peer.distribution}=={peer.version}; it is in requirements.txt)"
        ) from err
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    have: str | None
    try:
        have = installed_version(peer.distribution or "")
    except PackageNotFoundError:
        have = getattr(module, "__version__", None)
    if have != peer.version:
        raise PeerUnavailable(
            f"{peer.distribution} {have} is installed; the chapter needs "
            f"{peer.version} (pip install {peer.distribution}=={peer.version})"
        )
    return module


def missing(key: str, install: bool = True) -> str | None:
    """Why peer ``key`` cannot be used here, or ``None`` if it can."""
    try:
        load(key, install=install)
    except PeerUnavailable as err:
        return str(err)
    return None


def build(
    key: str, pairs: Sequence[tuple[nn.Module, nn.Module]], shape: Sequence[int]
) -> nn.Module:
    """The coupling stack of ``pairs`` (F and G of each block, used as they are, not copied) in
    library ``key``, as a module from ``(N, *shape)`` to ``(N, *shape)``.

    ``shape`` is one example's shape, channels first (FrEIA needs it to build).
    """
    lib = load(key)
    if key == "autograd":
        return nn.Sequential(*[PlainCoupling(f, g) for f, g in pairs])
    if key == "revlib":
        return lib.ReversibleSequence(
            [lib.AdditiveCoupling(f, g) for f, g in pairs], mode="reversible"
        )
    if key == "checkpoint":
        return _Checkpointed([PlainCoupling(f, g) for f, g in pairs])
    if key == "memcnn":
        return nn.Sequential(
            *[
                lib.InvertibleModuleWrapper(
                    lib.AdditiveCoupling(Fm=f, Gm=g),
                    keep_input=False,
                    keep_input_inverse=False,
                    preserve_rng_state=True,
                )
                for f, g in pairs
            ]
        )
    if key == "revtorch":
        blocks = [
            lib.ReversibleBlock(f, g, split_along_dim=1, fix_random_seed=True) for f, g in pairs
        ]
        return lib.ReversibleSequence(nn.ModuleList(blocks))
    if key == "revlib_pypi":
        halves = [m for pair in pairs for m in pair]
        return lib.ReversibleSequential(
            *halves, split_dim=1, memory_mode=lib.MemoryModes.autograd_function
        )
    if key == "freia":
        framework = importlib.import_module("FrEIA.framework")
        modules = importlib.import_module("FrEIA.modules")
        subnets = iter([m for pair in pairs for m in pair])  # FrEIA asks for F, then G

        def given(_in: int, _out: int) -> nn.Module:
            return next(subnets)

        inn = framework.SequenceINN(*shape)
        for _ in pairs:
            inn.append(modules.NICECouplingBlock, subnet_constructor=given)
        return _FirstOutput(inn)
    raise KeyError(f"unknown library {key!r}; one of {LIBRARIES}")


# ------------------------------------------------------------------------------ one step


def training_step(
    model: nn.Module,
    x: Tensor,
    autocast: bool = False,
    loss_of: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Forward (under CPU autocast to bfloat16 if ``autocast``), the loss mean(y^2) in float32
    or wider, and its backward (outside autocast, as usual); returns the loss."""
    region = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with region:
        y = model(x)
    y = y if y.dtype in (torch.float32, torch.float64) else y.float()
    loss = (loss_of or (lambda t: t.square().mean()))(y)
    loss.backward()
    return loss.detach()


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send file descriptor 2 to the null device: the profiler's C++ side prints a line at
    every start and stop, which a notebook would show as the cell's output."""
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(null)
        os.close(saved)


def held_bytes(model: nn.Module, x: Tensor, calls: int = 2) -> int:
    """Bytes that one forward of ``model`` on a copy of ``x`` leaves allocated (its output
    included, the input not): what the CPU allocator allocated during the call and had not
    freed when it returned, at the last of ``calls`` calls: the steady state of a training
    loop (a first call may allocate something the library then keeps for good: PyPI's
    revlib keeps a generator state on each half-step module, which later calls replace).

    Counted from the profiler's memory events, so every tensor counts however a
    library keeps it (saved for backward, an attribute of its autograd node, a
    closure), once. The copy of ``x`` is made inside the profiled region, so that
    a library that frees its input (MemCNN does) is seen freeing it, and its bytes
    are then subtracted if it is still allocated. (A block allocated before the
    profiler started and freed while it runs may be reported with the size of an
    older block at the same address; nothing allocated outside is freed inside here.)
    The graph is freed afterwards.
    """
    from torch.profiler import ProfilerActivity, profile

    counts = []
    for _ in range(calls):
        with warnings.catch_warnings(), _quiet_stderr():
            warnings.simplefilter("ignore")
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                fresh = x.detach().clone().requires_grad_(x.requires_grad)
                with torch.enable_grad():
                    out = model(fresh)
        # every allocation and free is charged, once, to the innermost event running it
        total = sum(int(e.self_cpu_memory_usage) for e in prof.events())
        counts.append(total - fresh.untyped_storage().nbytes())
        del out, fresh
    return counts[-1]
