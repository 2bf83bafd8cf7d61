"""The book's harness: training, data sets, experiments and notebook helpers.

Not part of the core: these modules need the ``revlib[train]`` extra
(torchvision, numpy, tqdm, matplotlib, scikit-learn) and are imported on
demand, e.g. ``from revlib.harness import train``. ``python -m
revlib.harness.experiments`` runs one experiment of the book;
``python -m revlib.harness.fmnist_study grid`` runs chapter 7's Fashion-MNIST
grid (:mod:`revlib.harness.fmnist_study`) and ``python -m
revlib.harness.studies grid`` the digits studies.
"""
