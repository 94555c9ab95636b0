"""Known-truth head phantoms for simulation: a procedural head built in code, the Challenge 2.0
head model resampled in any head orientation, and tissue parameters (M0, R2*) per label.

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
back with :func:`downsample_head` (:func:`block_average`, :func:`block_labels`).
:func:`upsample_head` reads an already resampled model as uniform voxels on such a grid.

Susceptibility values are the QSM Challenge 2.0 ``chiref`` values (ppm, relative to water; the
same numbering as :data:`qsmflow.simulate.head_model.LABEL_NAMES`). Outside the head chi = 0
(label 0); air *inside* the head (sinuses, mastoid cells) has chi = +9.2 ppm and bone -2.1 ppm.
The boundary between tissue and exterior air is therefore not a field source (the usual
simulation convention); the strong background fields come from the sinuses and bone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import QSMInputError
from ..physics.kernel import check_voxel_size
from .head_model import LABEL_NAMES, NATIVE_VOXEL_MM, HeadModel

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
_TEXTURED = np.array([lab not in (0, 14) for lab in range(17)])


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


def _as_rotation(rotation) -> np.ndarray:
    if rotation is None:
        return np.eye(3)
    r = np.asarray(rotation, dtype=np.float64)
    if r.shape != (3, 3) or not np.all(np.isfinite(r)):
        raise QSMInputError(f"rotation must be a finite 3x3 matrix, got shape {r.shape}")
    if np.max(np.abs(r.T @ r - np.eye(3))) > 1e-6 or np.linalg.det(r) < 0:
        raise QSMInputError("rotation must be a proper rotation matrix (R^T R = I, det = +1)")
    return r


def _grid_coords(shape, voxel_size, rotation, dtype=np.float32) -> np.ndarray:
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


def _ellipsoid_sd(q: np.ndarray, centre, semi) -> np.ndarray:
    """Approximate signed distance (mm, negative inside) to an axis-aligned ellipsoid.

    First-order estimate (f - 1) / |grad f| with f = |(q - c) / a|; accurate within a few mm of
    the surface, which is where it is used (layers up to 14 mm thick).
    """
    c = np.asarray(centre, dtype=np.float32).reshape(3, *([1] * (q.ndim - 1)))
    a = np.asarray(semi, dtype=np.float32).reshape(3, *([1] * (q.ndim - 1)))
    d = q - c
    k0 = np.sqrt(np.sum((d / a) ** 2, axis=0))
    k1 = np.sqrt(np.sum((d / a**2) ** 2, axis=0))
    return k0 * (k0 - 1) / np.maximum(k1, np.float32(1e-6))


def _inside_ellipsoid(q: np.ndarray, centre, semi) -> np.ndarray:
    c = np.asarray(centre, dtype=np.float32).reshape(3, *([1] * (q.ndim - 1)))
    a = np.asarray(semi, dtype=np.float32).reshape(3, *([1] * (q.ndim - 1)))
    return np.sum(((q - c) / a) ** 2, axis=0) <= 1.0


def _segment_distance(q: np.ndarray, a, b) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32).reshape(3, *([1] * (q.ndim - 1)))
    b = np.asarray(b, dtype=np.float32).reshape(3, *([1] * (q.ndim - 1)))
    ab = b - a
    t = np.clip(np.sum((q - a) * ab, axis=0) / max(float(np.sum(ab * ab)), 1e-12), 0, 1)
    return np.sqrt(np.sum((q - a - t * ab) ** 2, axis=0))


class _Grid:
    """Canonical coordinates of a (possibly rotated) grid, with bounding-box sub-blocks."""

    def __init__(self, shape, voxel_size, rotation, scale):
        self.shape = tuple(int(n) for n in shape)
        self.vox = np.asarray(voxel_size, dtype=np.float64)
        self.rot = rotation
        self.scale = np.asarray(scale, dtype=np.float64)  # anatomy coordinates q = p / scale
        self.centre = (np.asarray(self.shape) - 1) / 2.0
        p = _grid_coords(self.shape, self.vox, rotation)
        self.q = p / self.scale.astype(np.float32).reshape(3, 1, 1, 1)

    def block(self, lo_q, hi_q, margin_mm: float = 0.0):
        """Slices of the array covering the canonical box [lo_q, hi_q] (anatomy mm)."""
        lo, hi = np.asarray(lo_q, float), np.asarray(hi_q, float)
        corners = np.array(
            [[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
        )
        idx = (self.rot @ (corners * self.scale).T).T / self.vox + self.centre
        m = margin_mm / self.vox + 1
        a = np.floor(idx.min(0) - m).astype(int)
        b = np.ceil(idx.max(0) + m).astype(int) + 1
        a = np.clip(a, 0, self.shape)
        b = np.clip(b, 0, self.shape)
        if np.any(b <= a):
            return None
        return tuple(slice(int(i), int(j)) for i, j in zip(a, b, strict=True))

    def inside_ellipsoid(self, centre, semi) -> np.ndarray:
        """Boolean map of the canonical ellipsoid, evaluated in its bounding box only."""
        out = np.zeros(self.shape, dtype=bool)
        blk = self.block(np.subtract(centre, semi), np.add(centre, semi))
        if blk is not None:
            out[blk] = _inside_ellipsoid(self.q[(slice(None), *blk)], centre, semi)
        return out


# --------------------------------------------------------------------------- procedural head

# Anatomy in canonical mm (before the per-subject scale). Symmetric structures list the right
# one (x > 0); the left one is mirrored. Painted in this order (later ones win).
_BRAIN_CENTRE = (0.0, -1.0, 8.0)
_BRAIN_SEMI = (58.0, 76.0, 54.0)
_STEM_AXIS = (0.0, -20.0)  # (x, y) of the brainstem's vertical axis
_STEM_RADIUS = 11.0
_LOWER_HEAD = ((0.0, 10.0, -52.0), (64.0, 86.0, 40.0))  # skull base, face and neck tissue
_BROW = ((0.0, 80.0, -10.0), (18.0, 10.0, 13.0))  # bone around the frontal sinus
_CSF_MM, _SKULL_MM, _SCALP_MM = 3.0, 6.0, 5.0  # layer thicknesses outside the brain

_NUCLEI = [  # (label, centre, semi-axes, symmetric)
    ("putamen", (25.0, 4.0, 4.0), (5.0, 13.0, 9.0), True),
    ("globus_pallidus", (18.0, 0.0, 2.0), (3.5, 8.0, 5.0), True),
    ("caudate", (15.0, 10.0, 16.0), (4.5, 11.0, 7.0), True),
    ("thalamus", (9.0, -16.0, 8.0), (7.5, 13.0, 8.0), True),
    ("red_nucleus", (5.0, -20.0, -10.0), (3.5, 3.5, 3.5), True),
    ("sn_stn", (10.0, -16.0, -15.0), (3.0, 8.0, 3.0), True),
    ("sn_stn", (11.0, -11.0, -6.0), (2.5, 4.0, 2.5), True),
    ("dentate_nucleus", (14.0, -50.0, -24.0), (6.0, 7.0, 5.0), True),
    ("csf", (9.0, 0.0, 18.0), (4.5, 22.0, 7.0), True),  # lateral ventricles
    ("csf", (0.0, -10.0, 2.0), (1.5, 11.0, 7.0), False),  # third ventricle
    ("csf", (0.0, -42.0, -24.0), (4.0, 4.0, 6.0), False),  # fourth ventricle
    ("calcification", (0.0, -30.0, 10.0), (2.0, 2.0, 2.0), False),  # pineal
]
_CEREBELLUM = ((0.0, -50.0, -26.0), (46.0, 28.0, 20.0))
_SINUSES = [  # air pockets (label air, +9.2 ppm)
    ((0.0, 80.0, -10.0), (12.0, 5.0, 8.0), False),  # frontal sinus
    ((0.0, 22.0, -60.0), (11.0, 10.0, 8.0), False),  # sphenoid sinus
    ((16.0, 50.0, -66.0), (10.0, 13.0, 12.0), True),  # maxillary / ethmoid
    ((52.0, -22.0, -46.0), (7.0, 8.0, 6.0), True),  # mastoid air cells / ear canal
]


def _ellipse_point(theta_deg, offset, x=0.0):
    """Point on the brain's mid-sagittal outline (y-z plane) pushed ``offset`` mm outward."""
    t = np.deg2rad(theta_deg)
    cy, cz = _BRAIN_CENTRE[1], _BRAIN_CENTRE[2]
    return (
        x,
        cy + (_BRAIN_SEMI[1] + offset) * np.cos(t),
        cz + (_BRAIN_SEMI[2] + offset) * np.sin(t),
    )


def _surface_point(polar_deg, azimuth_deg, depth):
    """Point ``depth`` mm below the brain ellipsoid surface (polar angle from the vertex)."""
    t, a = np.deg2rad(polar_deg), np.deg2rad(azimuth_deg)
    u = np.array([np.sin(t) * np.cos(a), np.sin(t) * np.sin(a), np.cos(t)])
    semi = np.asarray(_BRAIN_SEMI)
    return tuple(np.asarray(_BRAIN_CENTRE) + u * (semi - depth))


def _vessels() -> list[tuple[list[tuple[float, float, float]], float, float]]:
    """Vessel centre lines: (points, radius mm, chi ppm)."""
    v = []
    # superior sagittal sinus down to the torcula, in the dura just outside the brain
    v.append(([_ellipse_point(t, 3.0) for t in np.linspace(25, 195, 14)], 3.0, 0.30))
    for s in (1, -1):
        # transverse + sigmoid sinuses
        pts = [(0.0, -78.0, -6.0)]
        for psi in np.linspace(20, 70, 4):
            r = np.deg2rad(psi)
            pts.append((s * 60.0 * np.sin(r), -1 - 78.0 * np.cos(r), -6.0))
        pts.append((s * 50.0, -24.0, -36.0))
        v.append((pts, 2.5, 0.30))
        # internal cerebral vein, thalamostriate vein, basal vein of Rosenthal
        v.append(([(s * 2.5, 4.0, 18.0), (s * 2.5, -18.0, 16.0), (0.0, -28.0, 13.0)], 1.2, 0.25))
        v.append(([(s * 14.0, 2.0, 20.0), (s * 4.0, 4.0, 18.0)], 1.0, 0.25))
        v.append(
            ([(s * 16.0, 0.0, -4.0), (s * 14.0, -16.0, 0.0), (s * 6.0, -28.0, 10.0)], 1.0, 0.22)
        )
    # straight sinus
    v.append(([(0.0, -28.0, 13.0), (0.0, -50.0, 4.0), (0.0, -76.0, -5.0)], 2.0, 0.30))
    # cortical veins draining towards the vertex, 1 mm below the brain surface
    for az in (20, 65, 115, 160, 200, 245, 295, 340):
        v.append(([_surface_point(p, az, 1.0) for p in np.linspace(75, 15, 6)], 1.0, 0.22))
    return v


def _mirror(items):
    out = []
    for lab, c, a, sym in items:
        out.append((lab, c, a))
        if sym:
            out.append((lab, (-c[0], c[1], c[2]), a))
    return out


@dataclass(frozen=True)
class BuiltinPhantom:
    """The procedural head phantom, built in code (no data files); see the module docstring.

    Anatomy: ellipsoidal brain (mid-sagittal fissure, gyral cortex of varying thickness, sulcal
    CSF, cerebellum, brainstem) inside CSF (3 mm), skull (6 mm, -2.1 ppm) and scalp (5 mm); skull
    base and face tissue below the brain with frontal, sphenoid, maxillary and mastoid air
    (+9.2 ppm); lateral, third and fourth ventricles; caudate, putamen, globus pallidus (0.13),
    thalamus, red nucleus, SN/STN, dentate nuclei; a pineal calcification; dural sinuses and
    cortical/deep veins (0.22-0.30 ppm, partial-volume weighted chi). Each ``seed`` gives a
    different subject (head size +-5 % per axis, structure positions +-1 mm, cortex pattern).

    voxel_size : mm (scalar or per axis); default 2 mm.
    shape : array shape; default covers 192 x 224 x 192 mm (96 x 112 x 96 at 2 mm).
    seed : subject anatomy, texture.
    texture : add within-tissue texture (smooth random field, ``texture_level`` x |chi| with a
        floor of 0.1 ppm, i.e. 0.005 ppm std in white matter at the default 5 %).
    """

    voxel_size: float | Sequence[float] = 2.0
    shape: Sequence[int] | None = None
    seed: int = 0
    texture: bool = False
    texture_level: float = 0.05

    def realise(self, rotation=None, *, supersample: int = 1) -> SimulatedHead:
        """The phantom with the head rotated by ``rotation`` (canonical -> array frame).

        ``supersample=s`` builds it on the grid ``s`` times finer (voxel ``voxel_size / s``,
        shape ``s * shape``) with the same centre, so that :func:`block_average` of the result
        lines up exactly with the target grid (see :func:`downsample_head`).
        """
        s = check_supersample(supersample)
        rot = _as_rotation(rotation)
        if s == 1:
            return _build_phantom(self, rot)
        vox, shape = self.grid()
        fine = replace(self, voxel_size=tuple(vox / s), shape=tuple(s * n for n in shape))
        return _build_phantom(fine, rot)

    def grid(self) -> tuple[np.ndarray, tuple[int, int, int]]:
        """Voxel size (mm) and shape of the target grid."""
        vox = check_voxel_size(np.broadcast_to(np.asarray(self.voxel_size, dtype=float), (3,)))
        shape = tuple(int(n) for n in self.shape) if self.shape is not None else default_shape(vox)
        if len(shape) != 3 or min(shape) < 1:
            raise QSMInputError(f"phantom shape must be three positive integers, got {shape}")
        return vox, shape


def make_phantom(
    voxel_size: float | Sequence[float] = 2.0,
    shape: Sequence[int] | None = None,
    *,
    seed: int = 0,
    texture: bool = False,
    texture_level: float = 0.05,
    rotation=None,
) -> SimulatedHead:
    """Build the procedural head phantom (see :class:`BuiltinPhantom`)."""
    src = BuiltinPhantom(voxel_size, shape, seed, texture, texture_level)
    return src.realise(rotation)


def _build_phantom(src: BuiltinPhantom, rot: np.ndarray) -> SimulatedHead:
    vox, shape = src.grid()
    ss = np.random.SeedSequence([int(src.seed), 0x51A])
    rng = np.random.default_rng(ss)
    seeds = rng.integers(0, 2**31, size=8)
    scale = rng.uniform(0.95, 1.05, size=3)
    g = _Grid(shape, vox, rot, scale)
    q = g.q
    hvox = float(np.mean(vox / scale))

    # brain: bumpy ellipsoid united with the brainstem cylinder
    sd_ell = _ellipsoid_sd(q, _BRAIN_CENTRE, _BRAIN_SEMI)
    near = sd_ell < 20
    bump = np.zeros(shape, np.float32)
    bump[near] = np.clip(
        1.5 * smooth_random_field(q[:, near], seed=seeds[0], correlation_mm=12.0, n_waves=16), -3, 3
    )
    sd_ell -= bump
    del bump
    sd_stem = np.sqrt((q[0] - _STEM_AXIS[0]) ** 2 + (q[1] - _STEM_AXIS[1]) ** 2) - _STEM_RADIUS
    sd_stem = np.maximum(sd_stem, q[2] - _BRAIN_CENTRE[2])  # only below the brain centre
    sd_brain = np.minimum(sd_ell, sd_stem)
    del sd_stem

    labels = np.zeros(shape, np.uint8)
    head = (sd_brain <= _CSF_MM + _SKULL_MM + _SCALP_MM) | g.inside_ellipsoid(*_LOWER_HEAD)
    brow = g.inside_ellipsoid(*_BROW) & (sd_brain > _CSF_MM)
    head |= brow
    labels[head] = LABEL["muscle"]
    labels[(sd_brain > _CSF_MM) & (sd_brain <= _CSF_MM + _SKULL_MM)] = LABEL["bone"]
    labels[brow] = LABEL["bone"]
    labels[(sd_brain > 0) & (sd_brain <= _CSF_MM)] = LABEL["csf"]
    for c, a, sym in _SINUSES:
        for cc in [c, (-c[0], c[1], c[2])] if sym else [c]:
            blk = g.block(np.subtract(cc, a), np.add(cc, a), 2 * hvox)
            if blk is None:
                continue
            m = _inside_ellipsoid(q[(slice(None), *blk)], cc, a) & (sd_brain[blk] > _CSF_MM + 0.5)
            labels[blk][m] = LABEL["air"]
    brain = sd_brain <= 0
    labels[brain] = LABEL["white_matter"]

    # cortex of varying thickness (1.5-5.5 mm), sulcal CSF pockets, mid-sagittal fissure
    shell = brain & (sd_ell > -8)
    qs = q[:, shell]
    thick = np.clip(
        3.0 + 1.2 * smooth_random_field(qs, seed=seeds[1], correlation_mm=8.0), 1.5, 5.5
    )
    sulc = smooth_random_field(qs, seed=seeds[2], correlation_mm=5.0, n_waves=24)
    sde = sd_ell[shell]
    sub = np.full(qs.shape[1], LABEL["white_matter"], np.uint8)
    sub[sde > -thick] = LABEL["grey_matter"]
    sub[(sde > -0.8 * thick) & (sulc > 1.0)] = LABEL["csf"]
    stem_only = sd_ell[shell] > 0  # brainstem below the cerebrum: white matter
    sub[stem_only] = LABEL["white_matter"]
    labels[shell] = sub
    del qs, sulc, sde, sub, thick
    half_w = max(1.0, 0.5 * hvox)
    fissure = (
        brain
        & (np.abs(q[0]) < half_w)
        & ((q[2] > 30) | ((np.abs(q[1] - _BRAIN_CENTRE[1]) > 45) & (q[2] > -10)))
        & (sd_ell > -45)
    )
    labels[fissure] = LABEL["csf"]

    # cerebellum: grey matter with a white-matter core
    cb = g.inside_ellipsoid(*_CEREBELLUM) & brain & (sd_ell <= 0)
    labels[cb] = LABEL["grey_matter"]
    labels[cb & g.inside_ellipsoid(_CEREBELLUM[0], np.multiply(_CEREBELLUM[1], 0.5))] = LABEL[
        "white_matter"
    ]

    # deep grey nuclei, ventricles, calcification (positions jittered per subject)
    for lab, c, a in _mirror(_NUCLEI):
        c = np.asarray(c) + rng.uniform(-1.0, 1.0, size=3)
        a = np.maximum(np.asarray(a), 0.5 * hvox)
        blk = g.block(c - a, c + a, 2 * hvox)
        if blk is None:
            continue
        m = _inside_ellipsoid(q[(slice(None), *blk)], c, a) & brain[blk]
        labels[blk][m] = LABEL[lab]

    chi = CHIREF[labels].astype(np.float32)

    # vessels: partial-volume chi, label blood where the voxel is at least half vessel
    for pts, radius, chi_v in _vessels():
        pts = np.asarray(pts, dtype=np.float64)
        for a, b in zip(pts[:-1], pts[1:], strict=True):
            blk = g.block(np.minimum(a, b) - radius, np.maximum(a, b) + radius, 2 * hvox)
            if blk is None:
                continue
            d = _segment_distance(q[(slice(None), *blk)], a, b)
            occ = np.clip((radius - d) / hvox + 0.5, 0, 1)
            lab_b = labels[blk]
            ok = (lab_b != LABEL["air"]) & (lab_b != 0) & (occ > 0)
            cur = chi[blk]
            occ = np.where(ok, occ, 0).astype(np.float32)
            # keep the larger vessel weight where vessels cross
            prev_v = lab_b == LABEL["blood"]
            new = cur * (1 - occ) + np.float32(chi_v) * occ
            cur[...] = np.where(prev_v, np.maximum(cur, new), new)
            lab_b[ok & (occ >= 0.5)] = LABEL["blood"]

    texture_field = None
    if src.texture and src.texture_level > 0:
        head_now = labels > 0
        t = np.zeros(shape, np.float32)
        t[head_now] = smooth_random_field(q[:, head_now], seed=seeds[3], correlation_mm=4.0)
        amp = src.texture_level * np.maximum(np.abs(CHIREF), 0.1) * _TEXTURED
        chi += (amp[labels] * t).astype(np.float32)
        texture_field = np.zeros(shape, np.float32)
        texture_field[head_now] = smooth_random_field(
            q[:, head_now], seed=seeds[4], correlation_mm=5.0
        )

    return SimulatedHead(
        chi=chi.astype(np.float32),
        labels=labels,
        brain_mask=brain,
        voxel_size=tuple(float(v) for v in vox),
        chiref=CHIREF.copy(),
        rotation=rot.copy(),
        tissue_texture=texture_field,
        texture_level=float(src.texture_level if src.texture else 0.0),
        description=f"qsmflow procedural head phantom (seed {src.seed})",
    )


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


@lru_cache(maxsize=2)
def _native_head(directory: str):
    """Native 0.64 mm labels with exterior air relabelled 0, brain mask and chiref (cached)."""
    from .head_model import _load_native

    labels, brain, chiref = _load_native(directory)
    labels = labels.copy()
    labels[exterior_mask(labels)] = 0
    return labels, brain, chiref


@dataclass(frozen=True)
class HeadModelSource:
    """The Challenge 2.0 head model (see :mod:`qsmflow.simulate.head_model`) as a phantom source.

    Each orientation is resampled straight from the native 0.64 mm segmentation (labels and
    brain mask nearest neighbour, chi = chiref[label] linearly interpolated) onto a grid of
    ``voxel_size`` mm centred on the native volume's centre. Exterior air (air connected to the
    array border, 9.2 ppm in the model) becomes label 0 with chi 0, so the box of air around the
    head does not act as a field source. ``margin_mm`` enlarges the grid on every side so that a
    rotated head stays in the field of view.
    """

    directory: str | os.PathLike | None = None
    voxel_size: float | Sequence[float] = 2.0
    margin_mm: float = 0.0
    seed: int = 0
    texture: bool = False
    texture_level: float = 0.05
    chiref: Sequence[float] | None = None

    def realise(self, rotation=None, *, supersample: int = 1) -> SimulatedHead:
        """The head model with the head rotated by ``rotation`` (canonical -> array frame).

        ``supersample=s`` resamples it onto the grid ``s`` times finer (voxel
        ``voxel_size / s``, shape exactly ``s`` times the target shape, same centre), so that
        :func:`block_average` of the result lines up exactly with the target grid.
        """
        from .head_model import default_head_model_dir

        s = check_supersample(supersample)
        rot = _as_rotation(rotation)
        d = Path(self.directory) if self.directory is not None else default_head_model_dir()
        labels0, brain0, chiref0 = _native_head(str(d))
        ref = np.asarray(self.chiref if self.chiref is not None else chiref0, dtype=np.float64)
        if ref.shape != (17,):
            raise QSMInputError(f"chiref must have 17 entries (label 0..16), got {ref.shape}")
        ref = ref.copy()
        ref[0] = 0.0
        vox = check_voxel_size(np.broadcast_to(np.asarray(self.voxel_size, dtype=float), (3,)))
        n_in = np.asarray(labels0.shape)
        pad = np.ceil(self.margin_mm / vox).astype(int)
        shape = np.round(n_in * NATIVE_VOXEL_MM / vox).astype(int) + 2 * pad
        shape = tuple(int(s * n) for n in shape)
        vox = vox / s
        c_in = (n_in - 1) / 2.0
        c_out = (np.asarray(shape) - 1) / 2.0
        # native index = (R^T V (o - c_out)) / 0.64 + c_in
        matrix = (rot.T * vox[None, :]) / NATIVE_VOXEL_MM
        offset = c_in - matrix @ c_out
        kw = dict(output_shape=shape, mode="constant", cval=0.0)
        labels = ndimage.affine_transform(labels0, matrix, offset, order=0, **kw).astype(np.uint8)
        brain = ndimage.affine_transform(brain0.astype(np.uint8), matrix, offset, order=0, **kw) > 0
        chi = ndimage.affine_transform(
            ref.astype(np.float32)[labels0], matrix, offset, order=1, prefilter=False, **kw
        ).astype(np.float32)
        texture_field = None
        if self.texture and self.texture_level > 0:
            rng = np.random.default_rng(np.random.SeedSequence([int(self.seed), 0x4EAD]))
            s1, s2 = rng.integers(0, 2**31, size=2)
            head = labels > 0
            p = _grid_coords(shape, vox, rot)[:, head]
            t = np.zeros(shape, np.float32)
            t[head] = smooth_random_field(p, seed=s1, correlation_mm=4.0)
            amp = self.texture_level * np.maximum(np.abs(ref), 0.1) * _TEXTURED
            chi += (amp[labels] * t).astype(np.float32)
            texture_field = np.zeros(shape, np.float32)
            texture_field[head] = smooth_random_field(p, seed=s2, correlation_mm=5.0)
        return SimulatedHead(
            chi=chi,
            labels=labels,
            brain_mask=brain,
            voxel_size=tuple(float(v) for v in vox),
            chiref=ref,
            rotation=rot.copy(),
            tissue_texture=texture_field,
            texture_level=float(self.texture_level if self.texture else 0.0),
            description="QSM Challenge 2.0 head model (Marques et al. 2021)",
        )


# --------------------------------------------------------------------------- generic rotation


def rotate_model(model: HeadModel, rotation, *, order: int = 1) -> SimulatedHead:
    """Resample ``model`` with the head rotated by ``rotation`` about the array centre.

    chi (and the tissue texture) are interpolated linearly, labels and the brain mask by nearest
    neighbour, onto the same grid; what leaves the grid is lost, what enters is outside (0).
    ``order`` is the spline order for chi (1 = linear, 3 = cubic).
    The rotation is composed with the model's own one (``SimulatedHead.rotation``).
    """
    rot = _as_rotation(rotation)
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


# --------------------------------------------------------------------------- supersampling


def check_supersample(supersample) -> int:
    """``supersample`` as an int >= 1 (refuses fractions, booleans and non-numbers)."""
    if isinstance(supersample, bool) or not isinstance(supersample, int | np.integer):
        raise QSMInputError(f"supersample must be an integer >= 1, got {supersample!r}")
    if not 1 <= supersample <= 8:
        raise QSMInputError(f"supersample must be 1-8, got {supersample}")
    return int(supersample)


def _blocks(a: np.ndarray, s: int) -> np.ndarray:
    """View (X, Y, Z, s, s, s) of ``a`` (shape (s X, s Y, s Z)): the sub-voxels of each voxel."""
    x, y, z = (n // s for n in a.shape)
    if a.shape != (s * x, s * y, s * z):
        raise QSMInputError(f"shape {a.shape} is not a multiple of the supersampling factor {s}")
    return a.reshape(x, s, y, s, z, s).transpose(0, 2, 4, 1, 3, 5)


def block_average(a: np.ndarray, s: int) -> np.ndarray:
    """Mean over ``s x s x s`` blocks: the value of each voxel of the ``s`` times coarser grid.

    With both grids centred alike (voxel ``(shape - 1) / 2`` at the same point) the fine voxels
    ``s i .. s i + s - 1`` are exactly the sub-voxels of coarse voxel ``i``.
    """
    a = np.asarray(a)
    if s == 1:
        return a
    _blocks(a, s)  # checks the shape
    out = a if a.dtype.kind in "fc" else a.astype(np.float32)
    for axis in range(3):  # strided sums along one axis at a time (fast, keeps float32)
        parts = [
            out[tuple(slice(k, None, s) if i == axis else slice(None) for i in range(3))]
            for k in range(s)
        ]
        acc = parts[0].copy()
        for p in parts[1:]:
            acc += p
        out = acc
    out *= out.dtype.type(1.0 / s**3)
    return out


def block_labels(labels: np.ndarray, s: int) -> np.ndarray:
    """Label of each coarse voxel: the most frequent label of its head sub-voxels (label 0 only
    when all sub-voxels are outside the head, so ``labels > 0`` marks every voxel with signal).
    Ties go to the sub-voxel that comes first in array order."""
    labels = np.asarray(labels)
    if s == 1:
        return labels
    b = _blocks(labels, s).reshape(*(n // s for n in labels.shape), s**3)
    counts = np.zeros(b.shape, dtype=np.uint16)
    for j in range(s**3):
        counts += b == b[..., j : j + 1]
    counts[b == 0] = 0
    idx = np.argmax(counts, axis=-1)
    return np.take_along_axis(b, idx[..., None], axis=-1)[..., 0]


def upsample_head(model: HeadModel, s: int) -> SimulatedHead:
    """Nearest-neighbour upsampling by ``s`` (each voxel becomes ``s^3`` equal sub-voxels of
    ``voxel_size / s``): the piecewise-constant 'voxel = box' reading of a resampled model."""
    s = check_supersample(s)

    def rep(a):
        return None if a is None else np.repeat(np.repeat(np.repeat(a, s, 0), s, 1), s, 2)

    base = dict(
        chi=rep(np.asarray(model.chi, dtype=np.float32)),
        labels=rep(np.asarray(model.labels, dtype=np.uint8)),
        brain_mask=rep(np.asarray(model.brain_mask, dtype=bool)),
        voxel_size=tuple(float(v) / s for v in model.voxel_size),
        chiref=np.asarray(model.chiref, dtype=np.float64),
    )
    if isinstance(model, SimulatedHead):
        return replace(model, **base, tissue_texture=rep(model.tissue_texture))
    return SimulatedHead(**base)


def downsample_head(model: SimulatedHead, s: int) -> SimulatedHead:
    """The head on the ``s`` times coarser grid: chi and tissue texture block-averaged (partial
    volume), labels by :func:`block_labels`, brain mask where at least half the sub-voxels are
    brain."""
    s = check_supersample(s)
    if s == 1:
        return model
    tex = model.tissue_texture
    return replace(
        model,
        chi=block_average(model.chi, s).astype(np.float32),
        labels=block_labels(model.labels, s).astype(np.uint8),
        brain_mask=block_average(model.brain_mask.astype(np.float32), s) >= 0.5,
        voxel_size=tuple(float(v) * s for v in model.voxel_size),
        tissue_texture=None if tex is None else block_average(tex, s).astype(np.float32),
    )
