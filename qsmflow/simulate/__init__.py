"""Known-truth simulation: head phantoms, multi-echo GRE forward simulation, BIDS writing.

* :mod:`.head` - what every phantom shares: canonical frame, tissue chi/M0/R2*,
  :class:`SimulatedHead`, :func:`rotate_model`.
* :mod:`.phantom` - the procedural head phantom (:func:`make_phantom`, :class:`BuiltinPhantom`).
* :mod:`.head_source` - the Challenge 2.0 head model in any orientation (:class:`HeadModelSource`).
* :mod:`.sampling` - supersampled heads and back (:func:`block_average`, :func:`downsample_head`).
* :mod:`.head_model` - loading the Challenge 2.0 head model (:func:`load_head_model`).
* :mod:`.gre` - :func:`simulate_gre`: multi-echo magnitude/phase with noise, true total and
  local fields, head rotations or oblique B0 directions.
* :mod:`.bids` - :class:`BIDSWriter`: a BIDS dataset with the truth as a derivative.
* :mod:`.orientations` - B0-direction files and orientation sets.
* :mod:`.dataset` - :func:`~qsmflow.simulate.dataset.simulate_dataset`: subjects x orientations
  simulated and written (what ``qsmflow simulate`` runs).
* :mod:`.realism` - what measured data has and clean simulation lacks (WM susceptibility
  anisotropy, sub-voxel texture, veins, residual background field) and the presets
  :data:`REALISM_PRESETS` / :func:`simulate_realistic` (``qsmflow simulate --realism``).
"""

from .bids import BIDSWriter, write_bids_dataset
from .gre import GREData, head_rotations, oblique_affine, rotation_to_z, simulate_gre
from .head import SimulatedHead, rotate_model, tissue_parameters
from .head_model import LABEL_NAMES, HeadModel, load_head_model
from .head_source import HeadModelSource
from .phantom import BuiltinPhantom, make_phantom
from .realism import REALISM_PRESETS, simulate_realistic

__all__ = [
    "BIDSWriter",
    "BuiltinPhantom",
    "GREData",
    "HeadModel",
    "HeadModelSource",
    "LABEL_NAMES",
    "REALISM_PRESETS",
    "SimulatedHead",
    "head_rotations",
    "load_head_model",
    "make_phantom",
    "oblique_affine",
    "rotate_model",
    "rotation_to_z",
    "simulate_gre",
    "simulate_realistic",
    "tissue_parameters",
    "write_bids_dataset",
]
