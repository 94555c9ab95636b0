"""What every head phantom shares: the canonical frame, tissue values, :class:`SimulatedHead`.

The sources are :class:`qsmflow.simulate.phantom.BuiltinPhantom` (a procedural head built in
code) and :class:`qsmflow.simulate.head_source.HeadModelSource` (the Challenge 2.0 head model
resampled in any head orientation); supersampling lives in :mod:`qsmflow.simulate.sampling`.

Frames and rotations
--------------------
Every phantom is defined in its *canonical frame*: millimetres in RAS-like array axes
(axis 0 = left->right, 1 = posterior->anterior, 2 = inferior->superior) with the origin at the
centre of the output array, voxel ``(shape - 1) / 2``. A head rotation ``R`` (3x3, proper) places
the head in a new array frame: the point ``p`` (mm, canonical) lies at ``R @ p`` in the rotated
array, so ``chi_rot(x) = chi(R.T @ x)``. For the scanner the rotated array is an ordinary axial
acquisition (B0 along array axis 2); the head, not the field of view, has moved.

Both sources here evaluate the rotated head directly from their definition (the procedural
phantom analytically, the head model from its native 0.64 mm segmentation), so a rotated
orientation is not blurred by an extra interpolation of the reference one.
:func:`rotate_model` resamples any :class:`HeadModel` (linear for chi, nearest for labels).

Both sources also realise the head on a grid ``s`` times finer than their target grid
(``realise(rotation, supersample=s)``: voxel ``voxel_size / s``, shape exactly ``s`` times the
target shape, same centre), whose ``s^3`` blocks are the target voxels; the simulation computes
fields and signal there (:mod:`qsmflow.simulate.gre`, "Supersampling") and brings the truth
back with :func:`~qsmflow.simulate.sampling.downsample_head` (``block_average``,
``block_labels``); ``upsample_head`` reads an already resampled model as uniform voxels on
such a grid.

Susceptibility values are the QSM Challenge 2.0 ``chiref`` values (ppm, relative to water; the
same numbering as :data:`qsmflow.simulate.head_model.LABEL_NAMES`). Outside the head chi = 0
(label 0); air *inside* the head (sinuses, mastoid cells) has chi = +9.2 ppm and bone -2.1 ppm.
The boundary between tissue and exterior air is therefore not a field source (the usual
simulation convention); the strong background fields come from the sinuses and bone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from ..errors import QSMInputError
from ..physics.kernel import check_voxel_size
from .head_model import LABEL_NAMES, HeadModel

#: Challenge 2.0 reference susceptibility (ppm) per label; index 0 = outside the head.
CHIREF = np.array(
    [0.0, 0.044, 0.1305, 0.038, 0.1, 0.152, 0.111, 0.02, -0.03, 0.02, 0.019, 0.19, 0.019,
     -2.1, 9.2, 0.0, -3.3]
)  # fmt: skip

LABEL = {name: value for value, name in LABEL_NAMES.items()}

#: Tissue parameters per label: (M0, R2 [1/s], R2' at 3 T [1/s]).
#: M0 is a proton-density-like amplitude (T1 weighting neglected; CSF = 1). R2* at field strength
#: B0 is modelled as R2 + R2'(3 T) * B0 / 3: the field-independent part R2 plus the reversible
#: part R2', which scales about linearly with B0 (iron, myelin, deoxyhaemoglobin). This gives
#: R2* at 3 T of about WM 21, cortex 16, caudate 20, putamen 23, GP 33, thalamus 19.5, RN 28,
#: SN 32, CSF 2, venous blood 30, muscle 35 1/s and at 7 T about WM 33, cortex 24, putamen 38,
#: GP 60 1/s (literature: 3 T WM 20-21, GM 15-17, GP 30-35; 7 T WM 30-35, GP 65-80 1/s).
TISSUE_PARAMETERS: dict[int, tuple[float, float, float]] = {
    0: (0.0, 0.0, 0.0),  # outside the head
    1: (0.80, 12.0, 8.0),  # caudate
    2: (0.74, 13.0, 20.0),  # globus pallidus
    3: (0.78, 12.0, 11.0),  # putamen
    4: (0.75, 13.0, 15.0),  # red nucleus
    5: (0.75, 13.0, 15.0),  # dentate nucleus
    6: (0.74, 13.0, 19.0),  # SN + STN
    7: (0.76, 12.0, 7.5),  # thalamus
    8: (0.69, 12.0, 9.0),  # white matter
    9: (0.80, 10.0, 6.0),  # grey matter
    10: (1.00, 1.0, 1.0),  # CSF
    11: (0.85, 10.0, 20.0),  # venous blood
    12: (0.90, 15.0, 15.0),  # fat (chemical shift not simulated)
    13: (0.05, 300.0, 300.0),  # bone: essentially no signal
    14: (0.0, 0.0, 0.0),  # air: no signal
    15: (0.70, 30.0, 5.0),  # muscle / scalp
    16: (0.10, 100.0, 200.0),  # calcification
}

#: Field of view (mm) of the procedural phantom's default grid; 96 x 112 x 96 voxels at 2 mm.
DEFAULT_FOV_MM = (192.0, 224.0, 192.0)


#: Labels that receive within-tissue texture (all head labels except air).
TEXTURED_LABELS = np.array([lab not in (0, 14) for lab in range(17)])


def tissue_parameters(b0_tesla: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """M0 and R2* (1/s) per label (arrays of 17, index = label) at field strength ``b0_tesla``."""
    if not np.isfinite(b0_tesla) or not (0.05 <= b0_tesla <= 25):
        raise QSMInputError(f"field strength B0 = {b0_tesla!r} T is not a plausible value")
    table = np.array([TISSUE_PARAMETERS[i] for i in range(17)], dtype=np.float64)
    m0 = table[:, 0]
    r2s = table[:, 1] + table[:, 2] * (b0_tesla / 3.0)
    return m0, r2s


@dataclass(frozen=True)
class SimulatedHead(HeadModel):
    """A :class:`HeadModel` in a known head orientation, with optional tissue texture.

    rotation : 3x3 head rotation from the canonical frame into this array frame (identity for
        the reference orientation); rotation centre = array centre ``(shape - 1) / 2``.
    tissue_texture : unit-variance smooth random field (or None) that modulates M0 and R2*
        (see :func:`qsmflow.simulate.gre.tissue_maps`).
    texture_level : relative texture amplitude used for chi (and M0, R2*); 0 = none.
    description : what the phantom is.
    """

    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    tissue_texture: np.ndarray | None = None
    texture_level: float = 0.0
    description: str = ""

    @property
    def head_mask(self) -> np.ndarray:
        return self.labels > 0


# --------------------------------------------------------------------------- geometry helpers


def default_shape(voxel_size: Sequence[float], fov_mm: Sequence[float] = DEFAULT_FOV_MM):
    """Even number of voxels covering ``fov_mm`` at ``voxel_size``."""
    vox = check_voxel_size(voxel_size)
    return tuple(int(2 * max(4, round(f / v / 2))) for f, v in zip(fov_mm, vox, strict=True))


def as_rotation(rotation) -> np.ndarray:
    """``rotation`` (None = identity) as a checked proper 3x3 rotation matrix."""
    if rotation is None:
        return np.eye(3)
    r = np.asarray(rotation, dtype=np.float64)
    if r.shape != (3, 3) or not np.all(np.isfinite(r)):
        raise QSMInputError(f"rotation must be a finite 3x3 matrix, got shape {r.shape}")
    if np.max(np.abs(r.T @ r - np.eye(3))) > 1e-6 or np.linalg.det(r) < 0:
        raise QSMInputError("rotation must be a proper rotation matrix (R^T R = I, det = +1)")
    return r


def grid_coords(shape, voxel_size, rotation, dtype=np.float32) -> np.ndarray:
    """(3, X, Y, Z) canonical-frame coordinates (mm) of every voxel of the rotated array."""
    vox = np.asarray(voxel_size, dtype=np.float64)
    centre = (np.asarray(shape) - 1) / 2.0
    axes = [
        ((np.arange(n) - c) * v).astype(dtype) for n, c, v in zip(shape, centre, vox, strict=True)
    ]
    rt = rotation.T  # p_canonical = R^T p_array
    out = np.empty((3, *shape), dtype=dtype)
    for i in range(3):
        out[i] = (
            rt[i, 0] * axes[0][:, None, None]
            + rt[i, 1] * axes[1][None, :, None]
            + rt[i, 2] * axes[2][None, None, :]
        )
    return out


def smooth_random_field(
    coords_mm: np.ndarray, *, seed, correlation_mm: float = 6.0, n_waves: int = 32
) -> np.ndarray:
    """Zero-mean, unit-variance smooth Gaussian-like random field at ``coords_mm`` (3, ...).

    A sum of ``n_waves`` random plane waves whose wave vectors follow the spectrum of a Gaussian
    covariance exp(-r^2 / (2 l^2)), l = ``correlation_mm``. It is a function of position, so it
    moves with the head under rotation (unlike a filtered noise image). Deterministic in ``seed``.
    """
    rng = np.random.default_rng(seed)
    k = rng.normal(0.0, 1.0 / correlation_mm, size=(n_waves, 3)).astype(np.float32)
    ph = rng.uniform(0, 2 * np.pi, size=n_waves).astype(np.float32)
    c = np.asarray(coords_mm, dtype=np.float32)
    out = np.zeros(c.shape[1:], dtype=np.float32)
    for j in range(n_waves):
        out += np.cos(k[j, 0] * c[0] + k[j, 1] * c[1] + k[j, 2] * c[2] + ph[j])
    out *= np.float32(np.sqrt(2.0 / n_waves))
    return out


# --------------------------------------------------------------------------- Challenge 2.0 model


def exterior_mask(labels: np.ndarray) -> np.ndarray:
    """Voxels outside the head: label 0, and air (label 14) connected to the array border."""
    labels = np.asarray(labels)
    out = labels == 0
    air = labels == LABEL["air"]
    if not air.any():
        return out
    comp, _ = ndimage.label(air)
    faces = [comp[0], comp[-1], comp[:, 0], comp[:, -1], comp[:, :, 0], comp[:, :, -1]]
    border = np.unique(np.concatenate([f.ravel() for f in faces]))
    border = border[border > 0]
    if border.size:
        out |= np.isin(comp, border)
    return out


# --------------------------------------------------------------------------- generic rotation


def rotate_model(model: HeadModel, rotation, *, order: int = 1) -> SimulatedHead:
    """Resample ``model`` with the head rotated by ``rotation`` about the array centre.

    chi (and the tissue texture) are interpolated linearly, labels and the brain mask by nearest
    neighbour, onto the same grid; what leaves the grid is lost, what enters is outside (0).
    ``order`` is the spline order for chi (1 = linear, 3 = cubic).
    The rotation is composed with the model's own one (``SimulatedHead.rotation``).
    """
    rot = as_rotation(rotation)
    vox = np.asarray(model.voxel_size, dtype=np.float64)
    shape = model.chi.shape
    c = (np.asarray(shape) - 1) / 2.0
    # input index = V^-1 R^T V (o - c) + c
    matrix = (rot.T * vox[None, :]) / vox[:, None]
    offset = c - matrix @ c
    kw = dict(mode="constant", cval=0.0)
    chi = ndimage.affine_transform(model.chi, matrix, offset, order=order, **kw)
    labels = ndimage.affine_transform(model.labels, matrix, offset, order=0, **kw)
    brain = ndimage.affine_transform(
        model.brain_mask.astype(np.uint8), matrix, offset, order=0, **kw
    )
    prev = getattr(model, "rotation", np.eye(3))
    tex = getattr(model, "tissue_texture", None)
    if tex is not None:
        tex = ndimage.affine_transform(tex, matrix, offset, order=1, prefilter=False, **kw)
    base = dict(
        chi=chi.astype(np.float32),
        labels=labels.astype(np.uint8),
        brain_mask=brain > 0,
        voxel_size=tuple(float(v) for v in vox),
        chiref=np.asarray(model.chiref, dtype=np.float64),
    )
    if isinstance(model, SimulatedHead):
        return replace(model, **base, rotation=rot @ prev, tissue_texture=tex)
    return SimulatedHead(**base, rotation=rot @ prev)
