"""Simple baselines on the networks' own splits: where "good" is on a data set.

:func:`fit_baseline` fits scikit-learn's multinomial logistic regression or a
one-hidden-layer MLP on the flattened, standardised pixels of a training split
and scores it on the validation and test splits. The networks' accuracies are
read beside these, on the same images.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .data import ImageData

__all__ = ["BASELINES", "fit_baseline"]

BASELINES: tuple[str, ...] = ("Logistic regression", "MLP")


def _features(split: ImageData) -> np.ndarray:
    return split.images.reshape(len(split), -1).numpy().astype(np.float32) * np.float32(split.scale)


def fit_baseline(
    name: str, train: ImageData, val: ImageData, test: ImageData, seed: int = 0
) -> dict[str, Any]:
    """Fit baseline ``name`` of :data:`BASELINES` on ``train``; accuracies on ``val`` and ``test``.

    Logistic regression: L2 penalty ``C = 1``, L-BFGS. MLP: 256 ReLU units,
    Adam, early stopping on 10 % of ``train``. Both on pixels standardised with
    the training split's mean and deviation.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "Logistic regression":
        clf = LogisticRegression(C=1.0, max_iter=1000)
    elif name == "MLP":
        clf = MLPClassifier(
            hidden_layer_sizes=(256,), early_stopping=True, max_iter=200, random_state=seed
        )
    else:
        raise KeyError(
            f"baselines.fit_baseline: unknown baseline {name!r}; choose one of {BASELINES}"
        )
    t0 = time.perf_counter()
    model = make_pipeline(StandardScaler(), clf)
    model.fit(_features(train), train.targets.numpy())
    return {
        "val_acc": float(model.score(_features(val), val.targets.numpy())),
        "test_acc": float(model.score(_features(test), test.targets.numpy())),
        "train_images": len(train),
        "seconds": time.perf_counter() - t0,
    }
