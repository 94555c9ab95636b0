"""The procedural head phantom, built in code: :class:`BuiltinPhantom` and :func:`make_phantom`.

An ellipsoidal brain with cortex, nuclei, ventricles, veins and a calcification inside CSF,
skull and scalp, with sinuses and air cells below (see :class:`BuiltinPhantom`). The head is
evaluated analytically in any head orientation, in the canonical frame of
:mod:`qsmflow.simulate.head`, with the Challenge 2.0 susceptibility values
(:data:`qsmflow.simulate.head.CHIREF`).

:class:`HeadModelSource` (the Challenge 2.0 head model) is importable from here too; it lives in
:mod:`qsmflow.simulate.head_source`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..errors import QSMInputError
from ..physics.kernel import check_voxel_size
from .head import (
    CHIREF,
    LABEL,
    TEXTURED_LABELS,
    SimulatedHead,
    as_rotation,
    default_shape,
    grid_coords,
    smooth_random_field,
)
from .head_source import HeadModelSource
from .sampling import check_supersample

__all__ = ["BuiltinPhantom", "HeadModelSource", "make_phantom"]


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
        p = grid_coords(self.shape, self.vox, rotation)
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
        rot = as_rotation(rotation)
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
        amp = src.texture_level * np.maximum(np.abs(CHIREF), 0.1) * TEXTURED_LABELS
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
