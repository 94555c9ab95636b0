"""The QSM Challenge 2.0 head model as a phantom source in any head orientation.

:class:`HeadModelSource` resamples each orientation straight from the native 0.64 mm
segmentation (see :mod:`qsmflow.simulate.head_model` for loading it), so a rotated orientation
is not blurred by an extra interpolation of the reference one. Frames as in
:mod:`qsmflow.simulate.head`. The realism options (WM susceptibility anisotropy, sub-voxel
texture, veins; all off by default) are described in :mod:`qsmflow.simulate.realism`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import QSMInputError
from ..physics.kernel import check_voxel_size
from .head import (
    TEXTURED_LABELS,
    SimulatedHead,
    as_rotation,
    exterior_mask,
    grid_coords,
    smooth_random_field,
)
from .head_model import NATIVE_VOXEL_MM
from .realism import (
    FibreAnisotropy,
    RealisticHead,
    Vessel,
    fibre_directions,
    plane_wave_field,
    rasterise_vessels,
    vessel_centrelines,
)
from .sampling import check_supersample

WM_PARCELLATION_FILE = "white_matter_mask.nii.gz"
BLOOD_LABEL = 11


@lru_cache(maxsize=2)
def _native_head(directory: str):
    """Native 0.64 mm labels with exterior air relabelled 0, brain mask and chiref (cached)."""
    from .head_model import _load_native

    labels, brain, chiref = _load_native(directory)
    labels = labels.copy()
    labels[exterior_mask(labels)] = 0
    return labels, brain, chiref


@lru_cache(maxsize=2)
def _native_wm_parcels(directory: str) -> np.ndarray:
    """The native WM parcellation (uint8, 1-11, 0 outside WM; cached)."""
    import nibabel as nib

    path = Path(directory) / WM_PARCELLATION_FILE
    if not path.is_file():
        raise QSMInputError("WM parcellation not found (needed for WM anisotropy)", str(path))
    parcels = np.rint(np.asarray(nib.load(path).dataobj)).astype(np.uint8)
    labels, _, _ = _native_head(directory)
    if parcels.shape != labels.shape:
        raise QSMInputError(
            f"WM parcellation shape {parcels.shape} differs from the segmentation's {labels.shape}",
            str(path),
        )
    return parcels


def _native_midline_mm(directory: str) -> float:
    """Canonical x (mm) of the mid-sagittal plane: the median x of the corpus callosum."""
    parcels = _native_wm_parcels(directory)
    x = np.nonzero(np.isin(parcels, (1, 2, 3)))[0]
    return float((np.median(x) - (parcels.shape[0] - 1) / 2.0) * NATIVE_VOXEL_MM)


@lru_cache(maxsize=4)
def _native_vessels(directory: str, seed: int, n_cortical: int, chi_range, diameter_range):
    labels, brain, _ = _native_head(directory)
    parcels = (
        _native_wm_parcels(directory)
        if (Path(directory) / WM_PARCELLATION_FILE).is_file()
        else None
    )
    return vessel_centrelines(
        labels,
        brain,
        NATIVE_VOXEL_MM,
        wm_parcels=parcels,
        seed=seed,
        n_cortical=n_cortical,
        chi_range_ppm=chi_range,
        diameter_range_mm=diameter_range,
    )


@dataclass(frozen=True)
class HeadModelSource:
    """The Challenge 2.0 head model (see :mod:`qsmflow.simulate.head_model`) as a phantom source.

    Each orientation is resampled straight from the native 0.64 mm segmentation (labels and
    brain mask nearest neighbour, chi = chiref[label] linearly interpolated) onto a grid of
    ``voxel_size`` mm centred on the native volume's centre. Exterior air (air connected to the
    array border, 9.2 ppm in the model) becomes label 0 with chi 0, so the box of air around the
    head does not act as a field source. ``margin_mm`` enlarges the grid on every side so that a
    rotated head stays in the field of view.

    Realism options (all off by default; see :mod:`qsmflow.simulate.realism`), realised on the
    grid the head is realised on (the supersampled one in :func:`simulate_gre`) and defined in
    the canonical frame, so they rotate with the head:

    wm_anisotropy_ppm : chi_par - chi_perp (ppm) of WM fibres (0 = isotropic; the presets use
        0.015). Needs ``white_matter_mask.nii.gz`` beside the model. The head's ``chi`` stays
        the isotropic (mean) susceptibility; :func:`simulate_gre` adds the anisotropic field.
    fibre_directions : per-parcel fibre directions (canonical frame) replacing
        :data:`~qsmflow.simulate.realism.FIBRE_DIRECTIONS` (and the random ones of parcel 11).
    subvoxel_texture_level : relative amplitude of a fine chi texture (std
        ``level * max(|chiref|, 0.1)`` ppm per tissue, 0 = off) of correlation length
        ``subvoxel_texture_mm`` (mm).
    vessels : add veins (label 11; :func:`~qsmflow.simulate.realism.vessel_centrelines`):
        ``n_cortical_veins`` along the cortical surface plus 3 deep ones, chi uniform in
        ``vessel_chi_ppm`` (ppm), diameter uniform in ``vessel_diameter_mm`` (mm).
    """

    directory: str | os.PathLike | None = None
    voxel_size: float | Sequence[float] = 2.0
    margin_mm: float = 0.0
    seed: int = 0
    texture: bool = False
    texture_level: float = 0.05
    chiref: Sequence[float] | None = None
    wm_anisotropy_ppm: float = 0.0
    fibre_directions: Mapping[int, Sequence[float]] | None = None
    subvoxel_texture_level: float = 0.0
    subvoxel_texture_mm: float = 0.75
    vessels: bool = False
    n_cortical_veins: int = 48
    vessel_chi_ppm: tuple[float, float] = (0.30, 0.45)
    vessel_diameter_mm: tuple[float, float] = (0.5, 1.5)

    def _directory(self) -> Path:
        from .head_model import default_head_model_dir

        return Path(self.directory) if self.directory is not None else default_head_model_dir()

    def _check_realism(self) -> None:
        for name in ("wm_anisotropy_ppm", "subvoxel_texture_level", "subvoxel_texture_mm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not np.isfinite(value) or value < 0:
                raise QSMInputError(f"{name} must be a finite number >= 0, got {value!r}")
        if not self.subvoxel_texture_mm > 0:
            raise QSMInputError(
                f"subvoxel_texture_mm must be > 0 mm, got {self.subvoxel_texture_mm}"
            )
        if isinstance(self.n_cortical_veins, bool) or int(self.n_cortical_veins) < 0:
            raise QSMInputError(f"n_cortical_veins must be >= 0, got {self.n_cortical_veins!r}")
        for name in ("vessel_chi_ppm", "vessel_diameter_mm"):
            lo_hi = np.asarray(getattr(self, name), dtype=float)
            if lo_hi.shape != (2,) or not np.all(np.isfinite(lo_hi)) or lo_hi[0] > lo_hi[1]:
                raise QSMInputError(f"{name} must be a (low, high) pair, got {getattr(self, name)}")
        if not 0 < self.vessel_diameter_mm[0]:
            raise QSMInputError(f"vessel diameters must be > 0 mm, got {self.vessel_diameter_mm}")

    @property
    def realistic(self) -> bool:
        """Whether any realism option is on."""
        return bool(self.wm_anisotropy_ppm > 0 or self.subvoxel_texture_level > 0 or self.vessels)

    def vessel_centrelines(self) -> tuple[Vessel, ...]:
        """The veins of this source (canonical mm; empty unless ``vessels``)."""
        if not self.vessels:
            return ()
        self._check_realism()
        return _native_vessels(
            str(self._directory()),
            int(self.seed),
            int(self.n_cortical_veins),
            tuple(float(x) for x in self.vessel_chi_ppm),
            tuple(float(x) for x in self.vessel_diameter_mm),
        )

    def realise(self, rotation=None, *, supersample: int = 1) -> SimulatedHead:
        """The head model with the head rotated by ``rotation`` (canonical -> array frame).

        ``supersample=s`` resamples it onto the grid ``s`` times finer (voxel
        ``voxel_size / s``, shape exactly ``s`` times the target shape, same centre), so that
        :func:`block_average` of the result lines up exactly with the target grid. With a
        realism option on, the result is a :class:`~qsmflow.simulate.realism.RealisticHead`.
        """
        s = check_supersample(supersample)
        rot = as_rotation(rotation)
        self._check_realism()
        d = self._directory()
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
            p = grid_coords(shape, vox, rot)[:, head]
            t = np.zeros(shape, np.float32)
            t[head] = smooth_random_field(p, seed=s1, correlation_mm=4.0)
            amp = self.texture_level * np.maximum(np.abs(ref), 0.1) * TEXTURED_LABELS
            chi += (amp[labels] * t).astype(np.float32)
            texture_field = np.zeros(shape, np.float32)
            texture_field[head] = smooth_random_field(p, seed=s2, correlation_mm=5.0)
        base = dict(
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
        if not self.realistic:
            return SimulatedHead(**base)

        realism: dict = {}
        if self.subvoxel_texture_level > 0:
            ss = np.random.SeedSequence([int(self.seed), 0x5B7E])
            t = plane_wave_field(
                shape,
                vox,
                rot,
                seed=int(ss.generate_state(1)[0]),
                correlation_mm=self.subvoxel_texture_mm,
                n_waves=128,
            )
            amp = self.subvoxel_texture_level * np.maximum(np.abs(ref), 0.1) * TEXTURED_LABELS
            t *= amp.astype(np.float32)[labels]
            chi += t
            del t
            realism["subvoxel_texture"] = {
                "level": float(self.subvoxel_texture_level),
                "correlation_mm": float(self.subvoxel_texture_mm),
            }
        if self.vessels:
            veins = self.vessel_centrelines()
            idx, frac, chi_v = rasterise_vessels(veins, shape, vox, rot)
            flat_chi, flat_labels = chi.reshape(-1), labels.reshape(-1)
            flat_chi[idx] = (1 - frac) * flat_chi[idx] + frac * chi_v
            flat_labels[idx[frac >= 0.5]] = BLOOD_LABEL
            realism["vessels"] = {
                "cortical": sum(v.kind == "cortical" for v in veins),
                "deep": sum(v.kind == "deep" for v in veins),
                "length_mm": round(sum(v.length_mm for v in veins), 1),
                "chi_ppm": [float(x) for x in self.vessel_chi_ppm],
                "diameter_mm": [float(x) for x in self.vessel_diameter_mm],
                "volume_ml": round(float(frac.sum()) * float(np.prod(vox)) / 1000, 3),
            }
        anisotropy = None
        if self.wm_anisotropy_ppm > 0:
            anisotropy = self._anisotropy(str(d), shape, vox, rot, matrix, offset, brain)
            realism["wm_anisotropy"] = {
                "dchi_ppm": float(self.wm_anisotropy_ppm),
                "fibre_directions": "given" if self.fibre_directions else "anatomical",
            }
        return RealisticHead(**base, anisotropy=anisotropy, realism=realism)

    def _anisotropy(self, directory, shape, vox, rot, matrix, offset, brain) -> FibreAnisotropy:
        """Fibre directions of the WM voxels inside the brain, rotated into the array frame."""
        parcels0 = _native_wm_parcels(directory)
        parcels = ndimage.affine_transform(
            parcels0, matrix, offset, order=0, output_shape=shape, mode="constant", cval=0
        )
        index = np.flatnonzero((parcels > 0) & brain)
        parcel = parcels.reshape(-1)[index]
        del parcels
        # canonical position of each voxel: R^T (index - centre) * voxel
        centre = (np.asarray(shape) - 1) / 2.0
        ijk = np.unravel_index(index, shape)
        arr = np.stack([(ijk[i] - centre[i]) * vox[i] for i in range(3)]).astype(np.float32)
        canonical = rot.T.astype(np.float32) @ arr
        del arr, ijk
        n_can = fibre_directions(
            parcel,
            canonical,
            midline_x_mm=_native_midline_mm(directory),
            seed=self.seed,
            directions=self.fibre_directions,
        )
        direction = (n_can @ rot.T.astype(np.float32)).astype(np.float32)  # n_arr = R n
        return FibreAnisotropy(
            shape=tuple(shape),
            index=index,
            direction=direction,
            dchi=np.full(index.size, self.wm_anisotropy_ppm, np.float32),
        )
