r"""Stability of residual networks read as ODEs: Jacobian spectra and perturbation growth.

For :math:`\dot Y = f(Y)`, a small perturbation obeys
:math:`\dot{\delta Y} = J\,\delta Y` with :math:`J = \partial f/\partial Y`. Haber
and Ruthotto (2017) ask that :math:`\max_i \operatorname{Re}\lambda_i(J) \le 0`
(no growth) and close to 0 (no decay either), so that deep networks neither
explode nor forget their input.

* :func:`jacobian`, :func:`eigenvalues`, :func:`max_real_part`: the Jacobian of
  a right-hand side at one state (``torch.autograd.functional.jacobian``), its
  eigenvalues, and the largest real part. The blocks of :mod:`revlib.core.ode` give
  their right-hand side as ``block.rhs``.
* :func:`perturbation_growth`, :func:`lyapunov_exponent`: push a tiny
  perturbation through the layers of a network (exactly linearised, with
  forward-mode differentiation, or as a finite difference) and measure
  :math:`\lVert\delta Y_j\rVert/\lVert\delta Y_0\rVert` at each depth; the empirical
  Lyapunov exponent is :math:`\lambda = \log(\lVert\delta Y_N\rVert/\lVert\delta Y_0\rVert)/(N h)`,
  so that :math:`\lVert\delta Y(t)\rVert \approx e^{\lambda t}\lVert\delta Y(0)\rVert`.

All of it works on small convolutional states (shape ``(1, C, H, W)``) and on
2-D toy states (shape ``(1, 2)``); the state ``x`` is one sample with its
batch dimension. Use float64 for eigenvalues that should be read to
round-off.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["jacobian", "eigenvalues", "max_real_part", "perturbation_growth", "lyapunov_exponent"]

Map = Callable[[Tensor], Tensor]


def jacobian(fn: Map, x: Tensor) -> Tensor:
    """The Jacobian :math:`\\partial\\,\\mathrm{fn}(x)/\\partial x` as an ``(n, n)`` matrix, n =
    ``x.numel()``.

    ``fn`` maps a tensor of ``x``'s shape to one of the same number of entries
    (a right-hand side such as ``block.rhs``).
    """
    shape = x.shape
    flat = x.detach().reshape(-1)

    def flat_fn(v: Tensor) -> Tensor:
        return fn(v.reshape(shape)).reshape(-1)

    # one tensor in, one out: the Jacobian is one tensor (torch leaves jacobian unannotated)
    J: Tensor = torch.autograd.functional.jacobian(  # type: ignore[no-untyped-call]
        flat_fn, flat, vectorize=True
    )
    if J.shape != (flat.numel(), flat.numel()):
        raise ValueError(
            "jacobian: fn must keep the number of entries, got a Jacobian of shape "
            f"{tuple(J.shape)}"
        )
    return J


def eigenvalues(fn_or_matrix: Map | Tensor, x: Tensor | None = None) -> Tensor:
    """Eigenvalues (complex) of a square matrix, or of ``jacobian(fn, x)``."""
    if isinstance(fn_or_matrix, Tensor):
        J = fn_or_matrix
    elif x is None:
        raise TypeError("eigenvalues: give the state x at which to take the Jacobian of fn")
    else:
        J = jacobian(fn_or_matrix, x)
    ev: Tensor = torch.linalg.eigvals(J)  # torch.linalg's functions are typed Any
    return ev


def max_real_part(fn_or_matrix: Map | Tensor, x: Tensor | None = None) -> float:
    """:math:`\\max_i \\operatorname{Re}\\lambda_i` of a matrix, or of the Jacobian of ``fn`` at
    ``x``."""
    return eigenvalues(fn_or_matrix, x).real.max().item()


def _layers(layers: Map | Iterable[Map], depth: int | None) -> list[Map]:
    """A list of maps: a sequence as given (cut to ``depth``), or one map repeated ``depth``
    times."""
    if isinstance(layers, (list, tuple, torch.nn.ModuleList, torch.nn.Sequential)):
        seq = list(layers)
        if depth is not None and depth > len(seq):
            raise ValueError(
                f"perturbation_growth: depth {depth} exceeds the {len(seq)} layers given"
            )
        return seq if depth is None else seq[:depth]
    if callable(layers):
        if depth is None:
            raise ValueError(
                "perturbation_growth: give depth when layers is a single map applied repeatedly"
            )
        return [layers] * depth
    return _layers(list(layers), depth)


def perturbation_growth(
    layers: Map | Iterable[Map],
    x: Tensor,
    depth: int | None = None,
    direction: Tensor | None = None,
    eps: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """:math:`\\lVert\\delta Y_j\\rVert / \\lVert\\delta Y_0\\rVert` for j = 0, ..., depth (a tensor
    of depth + 1 values).

    Args:
        layers: one map applied ``depth`` times (a block), or a sequence of maps
            (e.g. a ``ReversibleSequence.blocks`` or an ``nn.Sequential``).
        x: the starting state (one sample, with its batch dimension).
        depth: how many layers to apply (default: all of a sequence).
        direction: the initial perturbation (default: a random direction).
        eps: ``None`` (default) for the exact linearisation by forward-mode
            differentiation (:func:`torch.func.jvp`); a number for a finite
            perturbation of that norm (two forward passes).
        generator: random generator for the default direction.
    """
    maps = _layers(layers, depth)
    if direction is None:
        direction = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
    v = direction / direction.norm()
    y = x.detach()
    norms = [1.0]
    with torch.no_grad():
        if eps is None:
            for f in maps:
                with warnings.catch_warnings():
                    # torch's forward-mode AD loads its decompositions through torch.jit.script once
                    warnings.filterwarnings(
                        "ignore",
                        message=r"`torch\.jit\.script` is deprecated",
                        category=FutureWarning,
                    )
                    # torch types jvp's result as a pair or, with has_aux, a triple: here a pair
                    y, v = torch.func.jvp(f, (y,), (v,))  # type: ignore[misc]
                norms.append(v.norm().item())
        else:
            z = y + eps * v
            for f in maps:
                y, z = f(y), f(z)
                norms.append(((z - y).norm() / eps).item())
    return torch.tensor(norms, dtype=torch.float64)


def lyapunov_exponent(
    layers: Map | Iterable[Map],
    x: Tensor,
    depth: int | None = None,
    h: float = 1.0,
    **kwargs: Any,
) -> float:
    """The empirical Lyapunov exponent
    :math:`\\log(\\lVert\\delta Y_N\\rVert/\\lVert\\delta Y_0\\rVert)/(N h)`.

    ``h`` is the step size, so the exponent is per unit of ODE time (``h=1``:
    per layer). Other arguments as for :func:`perturbation_growth`.
    """
    growth = perturbation_growth(layers, x, depth, **kwargs)
    steps = len(growth) - 1
    if steps == 0:
        raise ValueError("lyapunov_exponent: no layers to apply")
    return math.log(growth[-1].item()) / (steps * h)
