"""Training for notebooks: the papers' SGD recipes, mixed precision, exact resume, curves.

Example::

    from revlib import models
    from revlib.harness import data, train
    tr, te = data.load("cifar10")
    device = revlib.default_device()
    loaders = (
        data.TensorLoader(tr, 100, device=device),
        data.TensorLoader(te, 500, shuffle=False, augment=False, device=device),
    )
    trainer = train.Trainer(
        models.revnet38(), train.recipe("revnet"), device=device, amp="auto",
        checkpoint_path="runs/revnet38.pt", metrics_path="runs/revnet38.csv",
    )
    trainer.resume_if_exists()        # a Colab session that was cut off continues where it stopped
    history = trainer.fit(*loaders)   # list of per-epoch dicts
    train.plot_history(history)

The package has one module per job, and re-exports their public names:

* :mod:`~revlib.harness.train.recipes`: :class:`Recipe`, :data:`RECIPES`,
  :func:`recipe`, weight-decay groups, the smoothness loss, BatchNorm momentum;
* :mod:`~revlib.harness.train.checkpoints`: atomic files, metric files, the
  random state a resume restores;
* :mod:`~revlib.harness.train.trainer`: :class:`Trainer`, :func:`evaluate`;
* :mod:`~revlib.harness.train.plots`: :func:`plot_history`.
"""

from . import checkpoints, plots, recipes, trainer
from .checkpoints import *  # noqa: F401,F403
from .plots import *  # noqa: F401,F403
from .recipes import *  # noqa: F401,F403
from .trainer import *  # noqa: F401,F403

__all__ = [*recipes.__all__, *checkpoints.__all__, *trainer.__all__, *plots.__all__]
