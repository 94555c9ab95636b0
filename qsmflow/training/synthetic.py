"""Augmented ISDU-QSMNet training pairs simulated patch by patch from known-truth phantoms.

This is the data behind qsmflow's shipped ISDU-QSMNet weights (``workflows/train-isdu-cpu.toml``).
Unlike :class:`~qsmflow.training.dataset.SimulatedPatchDataset` (whole-phantom fields, cached),
every item is simulated on its own P^3 patch, so each patch can have its own B0 direction,
contrast, texture and noise:

1. pick a source (weighted): the QSM Challenge 2.0 head model resampled to one of several
   voxel sizes (isotropic and anisotropic), or the procedural built-in phantom
   (:mod:`qsmflow.simulate.phantom`, several anatomies);
2. crop a P^3 patch whose brain fraction exceeds ``min_mask_fraction``; flip each axis with
   probability 1/2;
3. contrast: head-model patches take a random susceptibility per label (``chiref * U(1 -
   contrast, 1 + contrast) + N(0, label_offset_ppm)``, partial volume by a 0.5-voxel Gaussian),
   built-in phantom patches a random global scale; then a smooth random texture (Gaussian-filtered
   white noise, correlation length 1-3 voxels, std ``U(texture_std_ppm)``) inside the brain;
4. B0: a random direction within ``max_tilt_deg`` of array axis 2;
5. field: ``phi = F^-1 D F chi`` on the patch (periodic, D(0) = 0, i.e. exactly the forward
   model of the network's data-consistency step, which is periodic on its grid), then Gaussian
   noise with std ``U(noise_std_ppm)`` and the brain mask.

Items follow :mod:`qsmflow.training.dataset`'s layout (``phi``, ``chi``, ``mask``, ``kernel``
with D(0) = ``kernel_k0``, ``b0_dir``, ``index``), ppm throughout, and are a pure function of
(``seed``, epoch, index): call :meth:`set_epoch` (the trainer does) for fresh patches every
epoch; runs are reproducible and resume exactly. Sources are loaded lazily once per process.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from ..errors import QSMInputError
from ..models.kernels import ISDU_KERNEL_K0, isdu_kernel
from ..physics.kernel import dipole_kernel
from .dataset import SimulatedCrops, _item, _mix_seed, random_b0_dirs

#: Head-model voxel sizes (mm per array axis) used by default: isotropic and thick-slice grids.
DEFAULT_HEAD_MODEL_VOXELS: tuple[tuple[float, float, float], ...] = (
    (1.0, 1.0, 1.0),
    (0.8, 0.8, 0.8),
    (1.2, 1.2, 1.2),
    (0.9, 0.9, 1.8),
    (1.0, 1.0, 1.4),
)

#: Head-model labels whose susceptibility is randomised (brain tissues, vessels, calcification).
_TISSUE_LABELS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 16)


class _Source:
    """One volume to crop from: chi (ppm, brain only) or labels + chiref, brain mask, voxels."""

    def __init__(
        self,
        name: str,
        mask: np.ndarray,
        voxel_size: Sequence[float],
        *,
        chi: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        chiref: np.ndarray | None = None,
    ) -> None:
        self.name = name
        self.mask = np.ascontiguousarray(mask, dtype=bool)
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.chi = chi
        self.labels = labels
        self.chiref = chiref
        # candidate patch origins are drawn around brain voxels (cheap rejection sampling)
        self.brain_index = np.flatnonzero(self.mask)


@lru_cache(maxsize=8)
def _head_model_source(directory: str | None, vox: tuple[float, float, float]) -> _Source:
    """The head model's brain labels at ``vox`` mm (cached: train and validation share it)."""
    from ..simulate.head_model import load_head_model

    head = load_head_model(directory, vox)
    return _Source(
        f"head_model@{'x'.join(f'{v:g}' for v in vox)}mm",
        head.brain_mask,
        head.voxel_size,
        labels=np.where(head.brain_mask, head.labels, 0).astype(np.uint8),
        chiref=head.chiref.astype(np.float32),
    )


class PhantomPatchDataset(SimulatedCrops):
    """Training pairs simulated patch by patch with augmentation (see the module docstring).

    Parameters
    ----------
    length : items per epoch.
    patch_size : P (voxels).
    seed : all randomness is a function of (seed, epoch, index).
    head_model_dir : folder of the QSM Challenge 2.0 head model (``SegmentedModel.nii.gz`` ...);
        None: ``$QSMFLOW_TEST_DATA/qsm2_head_model``; "" : do not use the head model.
    head_model_voxels : voxel sizes (mm) the head model is resampled to (one source each).
    n_builtin : built-in phantom anatomies (phantom seeds 1000 * seed + s).
    builtin_voxel : voxel size (mm) of the built-in phantoms.
    head_model_weight : probability of drawing from the head model (when both are present).
    max_tilt_deg : largest angle between B0 and array axis 2.
    contrast : relative range of the per-label susceptibility scaling.
    label_offset_ppm : std of an additive per-label susceptibility offset.
    texture_std_ppm : (low, high) range of the texture std.
    noise_std_ppm : (low, high) range of the field noise std (ppm of B0).
    min_mask_fraction : crops need more than this fraction of brain voxels.
    kernel_k0 : D(0) of the returned kernels (the fields use D(0) = 0).
    """

    def __init__(
        self,
        length: int,
        patch_size: int = 32,
        *,
        seed: int = 0,
        head_model_dir: str | os.PathLike | None = None,
        head_model_voxels: Sequence[Sequence[float]] = DEFAULT_HEAD_MODEL_VOXELS,
        n_builtin: int = 2,
        builtin_voxel: float = 1.0,
        head_model_weight: float = 0.75,
        max_tilt_deg: float = 45.0,
        contrast: float = 0.5,
        label_offset_ppm: float = 0.01,
        texture_std_ppm: Sequence[float] = (0.0, 0.02),
        noise_std_ppm: Sequence[float] = (0.0, 0.004),
        min_mask_fraction: float = 0.125,
        kernel_k0: float = ISDU_KERNEL_K0,
    ) -> None:
        super().__init__(length, patch_size, seed, max_tilt_deg, min_mask_fraction, kernel_k0)
        if not 0 <= float(contrast) < 1:
            raise QSMInputError(f"contrast must be in [0, 1), got {contrast!r}")
        if not 0 <= float(head_model_weight) <= 1:
            raise QSMInputError(f"head_model_weight must be in [0, 1], got {head_model_weight!r}")
        for key, rng_ in (("texture_std_ppm", texture_std_ppm), ("noise_std_ppm", noise_std_ppm)):
            lo_hi = tuple(float(v) for v in rng_)
            if len(lo_hi) != 2 or not 0 <= lo_hi[0] <= lo_hi[1]:
                raise QSMInputError(
                    f"{key} must be (low, high) with 0 <= low <= high, got {rng_!r}"
                )
        if int(n_builtin) < 0:
            raise QSMInputError(f"n_builtin must be >= 0, got {n_builtin!r}")
        self.head_model_dir = head_model_dir
        self.head_model_voxels = tuple(tuple(float(v) for v in vs) for vs in head_model_voxels)
        for vs in self.head_model_voxels:
            if len(vs) != 3 or min(vs) <= 0:
                raise QSMInputError(f"head_model_voxels entries need 3 sizes > 0 mm, got {vs}")
        self.n_builtin = int(n_builtin)
        self.builtin_voxel = float(builtin_voxel)
        self.head_model_weight = float(head_model_weight)
        self.contrast = float(contrast)
        self.label_offset_ppm = float(label_offset_ppm)
        self.texture_std_ppm = tuple(float(v) for v in texture_std_ppm)
        self.noise_std_ppm = tuple(float(v) for v in noise_std_ppm)
        self.epoch = 0
        self._head: list[_Source] | None = None
        self._builtin: list[_Source] | None = None
        if self.head_model_dir == "" and self.n_builtin == 0:
            raise QSMInputError("no sources: enable the head model or n_builtin >= 1")

    # ------------------------------------------------------------------ bookkeeping
    def set_epoch(self, epoch: int) -> None:
        """Items of epoch ``epoch`` (new crops, contrasts, directions, noise every epoch)."""
        self.epoch = int(epoch)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "phantom-patches",
            "count": self.length,
            "patch_size": self.patch_size,
            "seed": self.seed,
            "head_model": self.head_model_dir != "",
            "head_model_voxels": [list(v) for v in self.head_model_voxels],
            "n_builtin": self.n_builtin,
            "builtin_voxel": self.builtin_voxel,
            "head_model_weight": self.head_model_weight,
            "max_tilt_deg": self.max_tilt_deg,
            "contrast": self.contrast,
            "label_offset_ppm": self.label_offset_ppm,
            "texture_std_ppm": list(self.texture_std_ppm),
            "noise_std_ppm": list(self.noise_std_ppm),
            "kernel_k0": self.kernel_k0,
        }

    # ------------------------------------------------------------------ sources
    def head_sources(self) -> list[_Source]:
        if self._head is None:
            self._head = []
            if self.head_model_dir != "":
                directory = None if self.head_model_dir is None else str(self.head_model_dir)
                self._head = [_head_model_source(directory, vox) for vox in self.head_model_voxels]
        return self._head

    def builtin_sources(self) -> list[_Source]:
        if self._builtin is None:
            from ..simulate.phantom import make_phantom

            self._builtin = []
            for s in range(self.n_builtin):
                head = make_phantom(self.builtin_voxel, seed=1000 * self.seed + s, texture=True)
                mask = np.asarray(head.brain_mask, dtype=bool)
                self._builtin.append(
                    _Source(
                        f"builtin{s}",
                        mask,
                        head.voxel_size,
                        chi=np.where(mask, head.chi, 0).astype(np.float32),
                    )
                )
        return self._builtin

    def _pick_source(self, rng: np.random.Generator) -> _Source:
        heads, builtins = self.head_sources(), self.builtin_sources()
        use_head = bool(heads) and (not builtins or rng.random() < self.head_model_weight)
        pool = heads if use_head else builtins
        return pool[int(rng.integers(len(pool)))]

    def _crop(self, src: _Source, rng: np.random.Generator) -> tuple[slice, ...]:
        p = self.patch_size
        shape = np.asarray(src.mask.shape)
        best: tuple[slice, ...] = ()
        best_frac = -1.0
        for _ in range(30):
            centre = np.array(np.unravel_index(rng.choice(src.brain_index), src.mask.shape))
            lo = np.clip(centre - p // 2 + rng.integers(-p // 4, p // 4 + 1, size=3), 0, None)
            lo = np.minimum(lo, np.maximum(shape - p, 0))
            sl = tuple(slice(int(a), int(a) + p) for a in lo)
            frac = np.count_nonzero(src.mask[sl]) / float(p) ** 3
            if frac > self.min_mask_fraction:
                return sl
            if frac > best_frac:
                best, best_frac = sl, frac
        return best  # the most brain found in 30 tries

    def _padded(self, a: np.ndarray) -> np.ndarray:
        p = self.patch_size
        if a.shape == (p, p, p):
            return a
        out = np.zeros((p, p, p), dtype=a.dtype)
        out[: a.shape[0], : a.shape[1], : a.shape[2]] = a
        return out

    # ------------------------------------------------------------------ items
    def sample(self, index: int) -> dict[str, Any]:
        """The numpy arrays of item ``index`` of the current epoch (for tests and tools)."""
        rng = _mix_seed(self.seed, 0x5A7E, self.epoch, index)
        src = self._pick_source(rng)
        sl = self._crop(src, rng)
        mask = self._padded(src.mask[sl])
        if src.labels is not None:
            assert src.chiref is not None
            values = src.chiref.copy()
            for lab in _TISSUE_LABELS:
                values[lab] = values[lab] * rng.uniform(
                    1 - self.contrast, 1 + self.contrast
                ) + rng.normal(0.0, self.label_offset_ppm)
            labels = self._padded(src.labels[sl])
            chi = ndimage.gaussian_filter(values[labels], 0.5, mode="nearest")
        else:
            assert src.chi is not None
            chi = self._padded(src.chi[sl]) * np.float32(rng.uniform(0.7, 1.3))
        tex_std = rng.uniform(*self.texture_std_ppm)
        if tex_std > 0:
            tex = ndimage.gaussian_filter(
                rng.standard_normal(mask.shape).astype(np.float32), rng.uniform(1.0, 3.0)
            )
            tex *= np.float32(tex_std / max(float(tex.std()), 1e-12))
            chi = chi + tex
        chi = (chi * mask).astype(np.float32)
        for axis in range(3):
            if rng.random() < 0.5:
                chi, mask = np.flip(chi, axis), np.flip(mask, axis)
        chi, mask = np.ascontiguousarray(chi), np.ascontiguousarray(mask)
        b0 = random_b0_dirs(1, self.max_tilt_deg, rng)[0]
        # periodic on the patch, as the network's data-consistency step (not the zero-padded
        # physics.forward.forward_field); kept as written: the shipped weights were trained on
        # these exact float32 patches
        d0 = dipole_kernel(chi.shape, src.voxel_size, b0, dc_value=0.0)
        phi = np.fft.ifftn(d0 * np.fft.fftn(chi)).real.astype(np.float32)
        noise = rng.uniform(*self.noise_std_ppm)
        if noise > 0:
            phi += np.float32(noise) * rng.standard_normal(phi.shape).astype(np.float32)
        phi *= mask
        return {
            "phi": phi,
            "chi": chi,
            "mask": mask,
            "b0_dir": b0,
            "voxel_size": src.voxel_size,
            "source": src.name,
            "noise_std_ppm": noise,
        }

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = self.item_index(index)
        s = self.sample(index)
        kernel = isdu_kernel(s["phi"].shape, s["voxel_size"], s["b0_dir"], k0=self.kernel_k0)[0]
        return _item(s["phi"], s["chi"], s["mask"], kernel, s["b0_dir"], index)

    @property
    def normalisation(self) -> dict[str, dict[str, float]]:
        """Mean/std (ppm) of chi and phi in the mask over 64 items of epoch 0 (deterministic)."""
        saved, self.epoch = self.epoch, 0
        try:
            chis, phis = [], []
            for i in range(min(64, self.length)):
                s = self.sample(i)
                m = s["mask"]
                chis.append(s["chi"][m].astype(np.float64))
                phis.append(s["phi"][m].astype(np.float64))
        finally:
            self.epoch = saved
        out = {}
        for key, vals in (("chi", chis), ("field", phis)):
            v = np.concatenate(vals)
            out[key] = {"mean": float(v.mean()), "std": float(v.std()), "count": int(v.size)}
        return out


def default_data_dir() -> Path:
    """``$QSMFLOW_TEST_DATA`` (default ``../shared/data`` beside the repository)."""
    root = os.environ.get("QSMFLOW_TEST_DATA")
    return Path(root) if root else Path(__file__).resolve().parents[2].parent / "shared" / "data"


__all__ = ["DEFAULT_HEAD_MODEL_VOXELS", "PhantomPatchDataset", "default_data_dir"]
