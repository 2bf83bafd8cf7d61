"""The networks the harness trains, by name: one registry for the experiments and the studies.

A name is a model function of :mod:`revlib.models` (``"resnet32"``,
``"revnet38"``, ``"hamiltonian74"``, ...) or the papers' name of one of them
(``"ResNet-32"``, ``"RevNet-38"``, ``"Hamiltonian-74"``, ``"Midpoint-26"``,
``"Leapfrog-26"``). :func:`build` makes it for a data set's classes and
channels, with every width times one factor (so networks of equal parameter
budget stay equal) and, for the ODE networks, the block options of
:class:`revlib.models.ode.ODENet`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .. import models
from ..core.modes import Mode
from ..models.ode import CHANG_CONFIGS, ODENet
from ..models.revnet import CIFAR_CONFIGS, PreActNet

__all__ = [
    "MODEL_NAMES",
    "PAPER_NAMES",
    "UnknownModelError",
    "is_reversible",
    "is_ode",
    "scaled",
    "build",
]

MODEL_NAMES: tuple[str, ...] = (*CIFAR_CONFIGS, *CHANG_CONFIGS)
"""Every model function of :mod:`revlib.models` the harness builds (the papers' CIFAR tables)."""

PAPER_NAMES: dict[str, str] = {
    "ResNet-32": "resnet32",
    "RevNet-38": "revnet38",
    "Hamiltonian-74": "hamiltonian74",
    "Midpoint-26": "midpoint26",
    "Leapfrog-26": "leapfrog26",
}
"""The papers' names of the networks that chapter 7 trains, and their model functions."""


class UnknownModelError(ValueError):
    """:func:`build` got a name that is neither a model of :mod:`revlib.models` nor a paper's."""


def _key(name: str) -> str:
    key = PAPER_NAMES.get(name, name)
    if key not in MODEL_NAMES or not callable(getattr(models, key, None)):
        raise UnknownModelError(
            f"networks.build: unknown model {name!r}; choose one of "
            f"{', '.join((*PAPER_NAMES, *MODEL_NAMES))}"
        )
    return key


def is_reversible(name: str) -> bool:
    """Whether the network has a ``mode="reversible"`` (every ODE network and RevNet does)."""
    key = _key(name)
    return key in CHANG_CONFIGS or bool(CIFAR_CONFIGS[key]["reversible"])


def is_ode(name: str) -> bool:
    """Whether the network is one of Chang et al.'s (trained with weight smoothness)."""
    return _key(name) in CHANG_CONFIGS


def scaled(widths: tuple[int, ...], factor: float) -> tuple[int, ...]:
    """Every width times ``factor``, rounded to an even number (for two halves), at least 2."""
    return tuple(max(2, 2 * int(round(w * factor / 2))) for w in widths)


def build(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    width: float = 1.0,
    mode: Mode | None = None,
    **ode_options: Any,
) -> nn.Module:
    """Network ``name`` for ``num_classes`` classes and ``in_channels`` input channels.

    ``width`` multiplies every width (:func:`scaled`); at 1 the network is the
    model function's, parameter for parameter. ``mode`` is the backward mode of
    a reversible network (default: the model function's); a ResNet has only
    ``"autograd"``. ``ode_options`` (``h``, ``activation``, ``transition``) go
    to :class:`~revlib.models.ode.ODENet`.

    Raises :class:`UnknownModelError` naming the networks there are.
    """
    key = _key(name)
    if key in CIFAR_CONFIGS:
        if ode_options:
            raise TypeError(
                f"networks.build: {name} takes no ODE options ({', '.join(ode_options)})"
            )
        cfg = dict(CIFAR_CONFIGS[key])
        if not cfg["reversible"] and mode not in (None, "autograd"):
            raise ValueError(f"networks.build: {name} has only mode 'autograd', not {mode!r}")
        cfg["channels"] = scaled(cfg["channels"], width)
        return PreActNet(
            strides=(1, 2, 2),
            num_classes=num_classes,
            in_channels=in_channels,
            mode=mode or "reversible",
            **cfg,
        )
    cfg = {**CHANG_CONFIGS[key], **ode_options}
    cfg["widths"] = scaled(cfg["widths"], width)
    return ODENet(
        **cfg, num_classes=num_classes, in_channels=in_channels, mode=mode or "reversible"
    )
