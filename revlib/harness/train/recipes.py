"""The papers' SGD recipes and what goes with them: weight decay, smoothness, BatchNorm momentum.

``"revnet"`` is the official RevNet CIFAR recipe (Gomez et al. 2017): SGD with
momentum 0.9, batch 100, learning rate 0.1, divided by 10 after 40k and 60k of
80k iterations, weight decay 2e-4 on the convolution and fully connected
weights only. ``"chang"`` is Chang et al.'s (2018): the same plus weight
smoothness 2e-4. ``recipe(name, iterations=n)`` scales the milestones to a
shorter run (same fractions, 1/2 and 3/4 of the run).

Weight decay goes to every parameter with two or more dimensions (convolution
kernels, including kernels that a custom layer keeps as a raw
``nn.Parameter``, and fully connected weight matrices), and not to BatchNorm
scales and shifts, biases or scalar step sizes (:func:`parameter_groups`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from torch import Tensor, nn

__all__ = [
    "DecayFilter",
    "LrScale",
    "Recipe",
    "RECIPES",
    "recipe",
    "parameter_groups",
    "decayed_parameter_names",
    "smoothness_hook",
    "set_bn_momentum",
]

DecayFilter = Callable[[str, nn.Parameter], bool]
LrScale = Callable[[str, nn.Parameter], float]


@dataclass(frozen=True)
class Recipe:
    """An SGD recipe with a piecewise-constant learning rate, counted in iterations.

    The learning rate for update number ``step`` (0-based) is
    ``lr * lr_factor ** (number of milestones <= step)``: with the RevNet
    recipe, updates 0..39,999 use 0.1, updates 40,000..59,999 use 0.01 and
    updates 60,000..79,999 use 0.001.
    """

    name: str = "revnet"
    iterations: int = 80_000
    batch_size: int = 100
    lr: float = 0.1
    milestones: tuple[int, ...] = (40_000, 60_000)
    lr_factor: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    smoothness: float = 0.0
    source: str = ""

    def lr_at(self, step: int) -> float:
        """Learning rate of update number ``step`` (0-based)."""
        return self.lr * self.lr_factor ** sum(step >= m for m in self.milestones)

    def scaled(self, iterations: int, batch_size: int | None = None) -> Recipe:
        """The same recipe over ``iterations`` updates, milestones at the same fractions of it."""
        iterations = int(iterations)
        if iterations < 1:
            raise ValueError(f"iterations must be positive, got {iterations}")
        ms = tuple(int(round(m * iterations / self.iterations)) for m in self.milestones)
        return replace(
            self,
            iterations=iterations,
            milestones=ms,
            batch_size=self.batch_size if batch_size is None else int(batch_size),
            name=self.name
            if iterations == self.iterations
            else f"{self.name} scaled to {iterations} it",
        )

    def to_dict(self) -> dict:
        """The fields as JSON types (milestones as a list)."""
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d


RECIPES: dict[str, Recipe] = {
    "revnet": Recipe(
        "revnet",
        source="Gomez et al. 2017, official RevNet code (CIFAR): SGD momentum 0.9, batch 100, "
        "lr 0.1 -> 0.01 -> 0.001 at 40k/60k of 80k iterations, wd 2e-4 on conv and FC weights",
    ),
    "chang": Recipe(
        "chang",
        smoothness=2e-4,
        source="Chang et al. 2018 (CIFAR): the RevNet recipe plus weight smoothness 2e-4",
    ),
    "chang_stl10": Recipe(
        "chang_stl10",
        iterations=20_000,
        batch_size=128,
        milestones=(10_000, 15_000),
        weight_decay=5e-4,
        smoothness=3e-4,
        source="Chang et al. 2018 (STL-10, secondary source): batch 128, wd 5e-4, smoothness 3e-4, "
        "20k steps; the milestones (1/2 and 3/4 of the run) are ours, not the paper's",
    ),
}


def recipe(
    name: str | Recipe = "revnet", iterations: int | None = None, batch_size: int | None = None
) -> Recipe:
    """A recipe from :data:`RECIPES`, optionally scaled to ``iterations`` updates
    (:meth:`Recipe.scaled`)."""
    r = name if isinstance(name, Recipe) else RECIPES[name]
    if iterations is not None or batch_size is not None:
        r = r.scaled(r.iterations if iterations is None else iterations, batch_size)
    return r


def _decays(name: str, p: nn.Parameter) -> bool:
    return p.ndim >= 2


def decayed_parameter_names(
    model: nn.Module, decay_filter: DecayFilter | None = None
) -> tuple[list[str], list[str]]:
    """(names with weight decay, names without), as :func:`parameter_groups` splits them.

    Each trainable parameter appears once (``named_parameters`` skips shared ones).
    """
    decide = decay_filter or _decays
    yes: list[str] = []
    no: list[str] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (yes if decide(name, p) else no).append(name)
    return yes, no


def parameter_groups(
    model: nn.Module,
    weight_decay: float,
    decay_filter: DecayFilter | None = None,
    lr_scale: LrScale | None = None,
) -> list[dict]:
    """SGD parameter groups: weights with decay, everything else without.

    By default a parameter is decayed when it has two or more dimensions:
    convolution kernels and fully connected weights, but not BatchNorm's scale
    and shift, biases, or scalars such as a learnable step size. Pass
    ``decay_filter(name, param) -> bool`` to choose differently. Parameters
    shared between modules appear once. ``lr_scale(name, param) -> float``
    splits the groups further by a factor on the learning rate, stored as the
    group's ``"lr_scale"`` (the :class:`~revlib.harness.train.Trainer` sets each
    group's learning rate to the recipe's times it).
    """
    params = dict(model.named_parameters())
    decay, no_decay = decayed_parameter_names(model, decay_filter)
    groups: dict[tuple[bool, float], dict] = {}
    for decayed, names in ((True, decay), (False, no_decay)):
        for n in names:
            scale = 1.0 if lr_scale is None else float(lr_scale(n, params[n]))
            group = groups.setdefault(
                (decayed, scale),
                {
                    "params": [],
                    "weight_decay": weight_decay if decayed else 0.0,
                    "name": ("decay" if decayed else "no_decay")
                    + ("" if scale == 1.0 else f" lr x{scale:g}"),
                    "lr_scale": scale,
                },
            )
            group["params"].append(params[n])
    return list(groups.values())


def smoothness_hook(rate: float, h: float | None = None) -> Callable[[nn.Module], Tensor]:
    """``extra_loss(model)`` for Chang et al.'s weight smoothness decay
    (:func:`revlib.core.smoothness.weight_smoothness`).

    ``rate`` is in the convention of Chang et al.'s code, like the weight
    decay: the coefficient of ``tf.nn.l2_loss`` (half the squared norm), so
    ``rate = 2e-4`` adds ``1e-4 * sum_j ||K_j - K_{j+1}||^2`` to the loss. Any
    callable ``extra_loss(model) -> Tensor`` may be given to the trainer
    instead.
    """
    from ...core.smoothness import weight_smoothness

    def extra(model: nn.Module) -> Tensor:
        return weight_smoothness(model, rate / 2, h=h)

    extra.__name__ = f"weight_smoothness(rate={rate:g})"
    return extra


def set_bn_momentum(model: nn.Module, momentum: float) -> nn.Module:
    """Set the running-statistics momentum of every BatchNorm layer (PyTorch's convention).

    The official RevNet code uses a decay of 0.99 (momentum 0.01 here): right
    for 80k iterations, but after a run of a hundred steps the running
    statistics are still mostly their initial values and the eval-mode accuracy
    is meaningless. Short runs (``--fast``, the book's CPU runs) use 0.1.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum
    return model
