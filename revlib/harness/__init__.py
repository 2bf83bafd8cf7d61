"""The book's harness: training, data sets, experiments and notebook helpers.

Not part of the core: these modules need the ``revlib[train]`` extra
(torchvision, numpy, tqdm, matplotlib, scikit-learn) and are imported on
demand, e.g. ``from revlib.harness import train``. ``python -m
revlib.harness.experiments`` runs one experiment of the book;
``python -m revlib.harness.fmnist_grid`` runs chapter 7's Fashion-MNIST grid,
its length chosen by a pilot (:mod:`revlib.harness.fmnist_grid`, on the
resumable grid of :mod:`revlib.harness.grid`).
"""
