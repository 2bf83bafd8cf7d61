"""revlib and its peers checked against plain autograd, case by case.

:func:`check` runs one :class:`Case` (:data:`CASES`) for one library of
:mod:`revlib.harness.peers` in float64 (the autocast case in float32) and
returns a :class:`Verdict`: ``pass``, ``fail`` (with what differs), ``error``
(what was raised) or ``n/a`` (with the reason); :func:`check_all` runs every
case for every library named.
"""

from __future__ import annotations

import logging
import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .peers import LIBRARIES, build, missing, plain_half, preact_half, training_step

__all__ = ["CASES", "Case", "Verdict", "check", "check_all"]


Status = Literal["pass", "fail", "error", "n/a"]


@dataclass(frozen=True)
class Verdict:
    """The result of one case for one library: ``status`` and, in words, why."""

    status: Status
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.status}: {self.detail}" if self.detail else self.status


@dataclass(frozen=True)
class Case:
    """A situation every library is put in, and what it must reproduce of plain autograd.

    Attributes:
        key: the name in tables.
        title: a few words for a table's header.
        question: what is checked, as a question.
        half: builds F or G on ``channels`` channels.
        dtype: float64, except for autocast.
        autocast: forward under ``torch.autocast("cpu", torch.bfloat16)``.
        input_grad: whether the input requires grad (``False``: the stack is the
            network's first layer, followed by a 1x1 convolution).
        compare_input_grad: compare the input's gradient too (only the plain case
            does, so that one difference there does not repeat in every column).
        hooks: put two forward hooks on F's first layer: one scales its output
            (it changes F), one counts its calls (an observer, as a logger is).
        buffers: compare the buffers (BatchNorm's running statistics) too.
        compiled: run ``torch.compile(model, backend="aot_eager")`` (Dynamo and AOT
            autograd, without Inductor's code generation, which adds no new semantics
            and minutes of C++ compilation on a CPU); the verdict counts graph breaks.
        tolerance: the largest relative gradient difference that passes.
    """

    key: str
    title: str
    question: str
    half: Callable[[int], nn.Module]
    dtype: torch.dtype = torch.float64
    autocast: bool = False
    input_grad: bool = True
    compare_input_grad: bool = False
    hooks: bool = False
    buffers: bool = False
    compiled: bool = False
    tolerance: float = 1e-9


CASES: dict[str, Case] = {
    c.key: c
    for c in (
        Case(
            "plain",
            "plain stack",
            "Same gradients as autograd, the parameters' and the input's, for F, G = "
            "conv-ReLU-conv?",
            plain_half,
            compare_input_grad=True,
        ),
        Case(
            "batchnorm",
            "BatchNorm (train)",
            "Same gradients, and running statistics updated once, as by autograd?",
            preact_half,
            buffers=True,
        ),
        Case(
            "dropout",
            "dropout",
            "Same gradients as autograd when the generator is seeded identically?",
            lambda c: plain_half(c, dropout=0.3),
        ),
        Case(
            "hook",
            "forward hook in F",
            "Same gradients with a hook that changes F, and an observing hook called as often?",
            plain_half,
            hooks=True,
        ),
        Case(
            "first_layer",
            "input without grad",
            "Do F and G get their gradients when the input does not require grad?",
            plain_half,
            input_grad=False,
        ),
        Case(
            "autocast",
            "autocast bf16 (CPU)",
            "Same gradients as autograd under CPU autocast to bfloat16 (float32 weights)?",
            plain_half,
            dtype=torch.float32,
            autocast=True,
            tolerance=1e-3,
        ),
        Case(
            "compile",
            "torch.compile",
            "Same gradients under torch.compile (aot_eager), and how many graph breaks?",
            plain_half,
            compiled=True,
        ),
    )
}


@dataclass
class _Counter:
    calls: int = 0

    def __call__(self, module: nn.Module, args: Any, output: Tensor) -> None:
        self.calls += 1


@dataclass
class _Run:
    """What one training step left: gradients and buffers of F and G, the input's gradient,
    the observing hook's calls."""

    grads: list[Tensor | None]
    buffers: list[Tensor]
    input_grad: Tensor | None
    hook_calls: int
    extra: dict[str, Any] = field(default_factory=dict)


BLOCKS, CHANNELS, SIZE, BATCH = 3, 8, 6, 4


def _pairs(case: Case, seed: int) -> tuple[list[tuple[nn.Module, nn.Module]], _Counter]:
    torch.manual_seed(seed)
    half = CHANNELS // 2
    pairs = [
        (case.half(half).to(case.dtype), case.half(half).to(case.dtype)) for _ in range(BLOCKS)
    ]
    counter = _Counter()
    if case.hooks:
        for f, _g in pairs:
            first = next(iter(f.children()))
            first.register_forward_hook(lambda m, a, out: out * 1.5)
            first.register_forward_hook(counter)
    return pairs, counter


def _run(key: str, case: Case, seed: int = 0) -> _Run:
    pairs, counter = _pairs(case, seed)
    stack = build(key, pairs, (CHANNELS, SIZE, SIZE))
    model: nn.Module = stack
    if not case.input_grad:
        torch.manual_seed(seed + 1)
        model = nn.Sequential(stack, nn.Conv2d(CHANNELS, CHANNELS, 1).to(case.dtype))
    model.train()
    if case.compiled:
        torch._dynamo.reset()
        counters().clear()
        # its one-time notice on machines without CUDA is not a result
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        model = torch.compile(model, backend="aot_eager")  # type: ignore[assignment]
    gen = torch.Generator().manual_seed(seed + 2)
    x = torch.randn(BATCH, CHANNELS, SIZE, SIZE, generator=gen, dtype=case.dtype)
    x.requires_grad_(case.input_grad)
    torch.manual_seed(seed + 3)  # the dropout masks
    random.seed(seed + 3)  # RevTorch's fix_random_seed draws its seeds from Python's random
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        training_step(model, x, autocast=case.autocast)
    modules = [m for pair in pairs for m in pair]
    grads = [p.grad for m in modules for p in m.parameters()]
    buffers = [b.detach().clone() for m in modules for b in m.buffers()]
    extra = {"graph_breaks": sum(counters()["graph_break"].values())} if case.compiled else {}
    return _Run(grads, buffers, x.grad if case.input_grad else None, counter.calls, extra)


def counters() -> Any:
    """Dynamo's counters (``counters()["graph_break"]``: the graph breaks since the last
    ``clear()``)."""
    from torch._dynamo.utils import counters as dynamo_counters

    return dynamo_counters


def _relative(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    scale = max(float(t.abs().max()) for t in b) or 1.0
    diffs = [float((u.double() - v.double()).abs().max()) for u, v in zip(a, b, strict=True)]
    return max(diffs) / scale


def _multiple(a: Tensor, b: Tensor) -> str:
    """``" (2x autograd's)"`` when ``a`` is a whole multiple of ``b``, else ``""``."""
    k = float((a * b).sum() / (b * b).sum())
    if round(k) not in (0, 1) and _relative([a], [round(k) * b]) < 1e-9:
        return f" ({round(k)}x autograd's)"
    return ""


def _own_masks_error(key: str, case: Case, seed: int = 0) -> float:
    """Relative difference between library ``key``'s directional derivative along a random
    direction and a central difference of its own loss, every evaluation drawing the same
    random numbers: small when its gradient is that of the masks its forward drew."""
    pairs, _ = _pairs(case, seed)
    model = build(key, pairs, (CHANNELS, SIZE, SIZE)).train()
    gen = torch.Generator().manual_seed(seed + 2)
    x = torch.randn(BATCH, CHANNELS, SIZE, SIZE, generator=gen, dtype=case.dtype)
    x.requires_grad_(True)
    params = [p for pair in pairs for m in pair for p in m.parameters()]

    def loss() -> Tensor:
        torch.manual_seed(seed + 3)
        random.seed(seed + 3)
        return model(x.detach().clone().requires_grad_(torch.is_grad_enabled())).square().mean()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss().backward()
        direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        slope = sum(float((g * d).sum()) for g, d in zip(grads, direction, strict=True))
        eps = 1e-6
        with torch.no_grad():
            for p, d in zip(params, direction, strict=True):
                p.add_(eps * d)
            up = float(loss())
            for p, d in zip(params, direction, strict=True):
                p.sub_(2 * eps * d)
            down = float(loss())
            for p, d in zip(params, direction, strict=True):
                p.add_(eps * d)
    central = (up - down) / (2 * eps)
    return abs(slope - central) / max(abs(central), 1e-12)


def _compare(key: str, case: Case, run: _Run, ref: _Run) -> Verdict:
    problems = []
    none = sum(g is None for g in run.grads)
    if none:
        problems.append(f"{none} of {len(run.grads)} parameters of F and G got no gradient")
    else:
        grads = [g for g in run.grads if g is not None]
        ref_grads = [g for g in ref.grads if g is not None]
        err = _relative(grads, ref_grads)
        if not err <= case.tolerance:
            problems.append(f"gradients differ (relative {err:.0e})")
            if case.key == "dropout":
                own = _own_masks_error(key, case)
                problems.append(
                    "but they are the gradient of the masks its forward drew"
                    if own < 1e-6
                    else f"not even the gradient of the masks its forward drew ({own:.0e})"
                )
    if case.compare_input_grad and ref.input_grad is not None:
        if run.input_grad is None:
            problems.append("the input got no gradient")
        elif not _relative([run.input_grad], [ref.input_grad]) <= case.tolerance:
            problems.append(
                "the input's gradient differs" + _multiple(run.input_grad, ref.input_grad)
            )
    if case.buffers:
        float_ref = [b for b in ref.buffers if b.is_floating_point()]
        float_run = [b for b in run.buffers if b.is_floating_point()]
        counts = [int(b) for b in run.buffers if not b.is_floating_point()]
        ref_counts = [int(b) for b in ref.buffers if not b.is_floating_point()]
        if counts != ref_counts:
            problems.append(f"BatchNorm counted {max(counts)} batches, autograd {max(ref_counts)}")
        elif _relative(float_run, float_ref) > case.tolerance:
            problems.append("running statistics differ")
    if case.hooks and run.hook_calls != ref.hook_calls:
        problems.append(
            f"the observing hook ran {run.hook_calls // BLOCKS}x per block, autograd's "
            f"{ref.hook_calls // BLOCKS}x"
        )
    if case.compiled:
        breaks = run.extra["graph_breaks"]
        problems.append(f"{breaks} graph break{'s' if breaks != 1 else ''}")
    if problems and not (case.compiled and len(problems) == 1):
        return Verdict("fail", "; ".join(problems))
    return Verdict("pass", "; ".join(problems))


_REFERENCE: dict[str, _Run] = {}


def check(key: str, case: Case | str, install: bool = True) -> Verdict:
    """Run ``case`` for library ``key`` and compare it with plain autograd run from the same
    weights, input and random state (see :class:`Case`).

    ``n/a`` when the library is not available here (the reason is the detail);
    ``error`` when it raised (the exception is the detail).
    """
    case = CASES[case] if isinstance(case, str) else case
    reason = missing(key, install=install)
    if reason is not None:
        return Verdict("n/a", reason)
    if case.key not in _REFERENCE or CASES.get(case.key) is not case:
        _REFERENCE[case.key] = _run("autograd", case)
    reference = _REFERENCE[case.key]
    try:
        run = _run(key, case)
        return _compare(key, case, run, reference)
    except Exception as err:  # a library's own error is a result here
        message = str(err).strip().splitlines()
        return Verdict("error", f"{type(err).__name__}: {message[0] if message else ''}"[:160])


def check_all(
    keys: Sequence[str] = LIBRARIES[1:], cases: Sequence[str] = tuple(CASES), install: bool = True
) -> dict[str, dict[str, Verdict]]:
    """``{library: {case: Verdict}}`` for every library and case."""
    return {key: {case: check(key, case, install=install) for case in cases} for key in keys}
