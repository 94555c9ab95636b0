"""Known-truth simulation: head phantoms, multi-echo GRE forward simulation, BIDS writing.

* :mod:`.phantom` - the procedural head phantom (:func:`make_phantom`, :class:`BuiltinPhantom`),
  the Challenge 2.0 head model in any orientation (:class:`HeadModelSource`), tissue M0/R2*.
* :mod:`.head_model` - loading the Challenge 2.0 head model (:func:`load_head_model`).
* :mod:`.gre` - :func:`simulate_gre`: multi-echo magnitude/phase with noise, true total and
  local fields, head rotations or oblique B0 directions.
* :mod:`.bids` - :class:`BIDSWriter`: a BIDS dataset with the truth as a derivative.
"""

from .bids import BIDSWriter, write_bids_dataset
from .gre import GREData, head_rotations, oblique_affine, rotation_to_z, simulate_gre
from .head_model import LABEL_NAMES, HeadModel, load_head_model
from .phantom import (
    BuiltinPhantom,
    HeadModelSource,
    SimulatedHead,
    make_phantom,
    rotate_model,
    tissue_parameters,
)

__all__ = [
    "BIDSWriter",
    "BuiltinPhantom",
    "GREData",
    "HeadModel",
    "HeadModelSource",
    "LABEL_NAMES",
    "SimulatedHead",
    "head_rotations",
    "load_head_model",
    "make_phantom",
    "oblique_affine",
    "rotate_model",
    "rotation_to_z",
    "simulate_gre",
    "tissue_parameters",
    "write_bids_dataset",
]
