"""The QSM Challenge 2.0 head model (Marques et al. 2021) as a known-truth phantom.

The model is a 0.64 mm isotropic whole-head segmentation (16 labels) with a reference
susceptibility per label (``chiref``, ppm, relative to water; air 9.2, bone -2.1). It is *not*
shipped with qsmflow: pass the folder holding ``SegmentedModel.nii.gz``, ``BrainMask.nii.gz`` and
``SusceptibilityValues.mat`` (in the test data this is ``$QSMFLOW_TEST_DATA/qsm2_head_model``).

Resampling follows the reference vectors (shared/reference/isdu README): the susceptibility map
is built at 0.64 mm and zoomed with linear interpolation, labels and brain mask with nearest
neighbour, to ``voxel_size`` mm (``scipy.ndimage.zoom`` rounds the grid, so the true spacing
differs from ``voxel_size`` by < 0.2 % at 1 mm).

Exterior air. The segmentation has no "outside" label: the air around the head is label 14
(air, 9.2 ppm) like the sinuses. Left as is, the edge of the finite box would become a 9.2 ppm
susceptibility step (a false field source once the forward model zero-pads). By default the air
connected to the box border is relabelled 0 with chi = 0: susceptibilities are then relative to
the surrounding medium, the head surface is not a field source, and internal air (sinuses, ear
canals, mastoids) and bone still are. ``exterior="air"`` keeps the raw segmentation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import QSMInputError

NATIVE_VOXEL_MM = 0.64

#: Label numbers of the head model (index = label value).
LABEL_NAMES = {
    1: "caudate",
    2: "globus_pallidus",
    3: "putamen",
    4: "red_nucleus",
    5: "dentate_nucleus",
    6: "sn_stn",
    7: "thalamus",
    8: "white_matter",
    9: "grey_matter",
    10: "csf",
    11: "blood",
    12: "fat",
    13: "bone",
    14: "air",
    15: "muscle",
    16: "calcification",
}


@dataclass(frozen=True)
class HeadModel:
    """A resampled head model.

    chi : (X, Y, Z) float32 susceptibility in ppm, whole head (air and bone included).
    labels : (X, Y, Z) uint8 label map (see :data:`LABEL_NAMES`).
    brain_mask : (X, Y, Z) bool brain mask.
    voxel_size : mm per axis.
    chiref : (17,) float64 chi per label, index 0 (outside the head) = 0.
    """

    chi: np.ndarray
    labels: np.ndarray
    brain_mask: np.ndarray
    voxel_size: tuple[float, float, float]
    chiref: np.ndarray

    @property
    def affine(self) -> np.ndarray:
        """Axis-aligned RAS affine for this grid (B0 along array axis 2)."""
        return np.diag([*self.voxel_size, 1.0])

    @property
    def chi_brain(self) -> np.ndarray:
        """Susceptibility inside the brain mask, 0 elsewhere (the local-field sources)."""
        return np.where(self.brain_mask, self.chi, 0).astype(np.float32)


def default_head_model_dir() -> Path:
    """``$QSMFLOW_TEST_DATA/qsm2_head_model`` (default ``../shared/data`` beside the repo)."""
    root = os.environ.get("QSMFLOW_TEST_DATA")
    base = Path(root) if root else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return base / "qsm2_head_model"


def read_chiref(path: Path) -> np.ndarray:
    """chi per label (ppm) from ``SusceptibilityValues.mat``; index 0 = outside head = 0."""
    import scipy.io as sio

    m = sio.loadmat(str(path), squeeze_me=True, struct_as_record=False)
    if "label" not in m:
        raise QSMInputError("no 'label' struct array", str(path))
    chiref = np.zeros(len(m["label"]) + 1)
    for i, lab in enumerate(m["label"], start=1):
        chiref[i] = float(lab.chiref)
    return chiref


AIR_LABEL = 14


def _exterior_air(labels: np.ndarray) -> np.ndarray:
    """Air voxels connected (6-neighbourhood) to the border of the box."""
    from scipy import ndimage

    air = labels == AIR_LABEL
    components, _ = ndimage.label(air)
    border = np.concatenate(
        [
            components[[0, -1]].ravel(),
            components[:, [0, -1]].ravel(),
            components[..., [0, -1]].ravel(),
        ]
    )
    touching = np.unique(border[border > 0])
    return np.isin(components, touching)


@lru_cache(maxsize=4)
def _load_native(directory: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import nibabel as nib

    d = Path(directory)
    files = [d / "SegmentedModel.nii.gz", d / "BrainMask.nii.gz", d / "SusceptibilityValues.mat"]
    for f in files:
        if not f.exists():
            raise QSMInputError("head model file not found", str(f))
    labels = np.asarray(nib.load(files[0]).dataobj).astype(np.uint8)
    brain = np.asarray(nib.load(files[1]).dataobj) > 0.5
    chiref = read_chiref(files[2])
    return labels, brain, chiref


def load_head_model(
    directory: str | os.PathLike | None = None,
    voxel_size: float | Sequence[float] = 1.0,
    *,
    chiref: Sequence[float] | None = None,
    exterior: str = "zero",
) -> HeadModel:
    """Load the head model and resample it to ``voxel_size`` mm (scalar or per axis).

    ``chiref`` overrides the per-label susceptibilities (17 values, index 0 = outside head).
    ``exterior``: ``"zero"`` (default) relabels the air around the head 0 with chi 0;
    ``"air"`` keeps it as air (9.2 ppm) up to the box edge.
    """
    from scipy import ndimage

    directory = Path(directory) if directory is not None else default_head_model_dir()
    labels0, brain0, chiref0 = _load_native(str(directory))
    ref = np.asarray(chiref if chiref is not None else chiref0, dtype=np.float64)
    if ref.shape != (17,):
        raise QSMInputError(f"chiref must have 17 entries (label 0..16), got {ref.shape}")
    vox = np.broadcast_to(np.asarray(voxel_size, dtype=np.float64), (3,))
    zoom = NATIVE_VOXEL_MM / vox
    if exterior == "zero":
        labels0 = np.where(_exterior_air(labels0), 0, labels0).astype(np.uint8)
    elif exterior != "air":
        raise QSMInputError(f"exterior must be 'zero' or 'air', got {exterior!r}")
    chi0 = ref[labels0]
    if np.allclose(zoom, 1.0):
        chi, labels, brain = chi0, labels0, brain0
    else:
        chi = ndimage.zoom(chi0, zoom, order=1)
        labels = ndimage.zoom(labels0, zoom, order=0)
        brain = ndimage.zoom(brain0.astype(np.uint8), zoom, order=0) > 0
    return HeadModel(
        chi=chi.astype(np.float32),
        labels=labels.astype(np.uint8),
        brain_mask=brain,
        voxel_size=tuple(float(v) for v in vox),
        chiref=ref,
    )
