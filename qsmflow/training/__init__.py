"""Training data and training of the networks: patch sets, datasets, losses, trainer, checkpoints.

Modules that only need numpy (:mod:`qsmflow.training.patches`) must not import torch, so that
patch sets can be written and inspected without it; the torch-based modules import it themselves.
"""
