"""Torch datasets of ISDU-QSMNet training pairs: on-disk patch sets and on-the-fly simulation.

Every item is a dict of float32 tensors (plus two bookkeeping entries)::

    phi    (1, P, P, P)  local field, ppm of B0, 0 outside the mask
    chi    (1, P, P, P)  target susceptibility, ppm (COSMOS for patch sets)
    mask   (1, P, P, P)  0/1
    kernel (1, P, P, P)  real dipole kernel D(k) of this patch's B0 direction on the P^3 patch
                         grid, FFT layout (k = 0 at [0, 0, 0]), D(0) = ``kernel_k0`` (default
                         1/3, the ISDU convention; built by
                         :func:`qsmflow.models.kernels.isdu_kernel`, as at inference)
    b0_dir (3,)          B0 direction (unit vector, array axes) the kernel was built from
    index  ()            int64 index of the item in the dataset

so that the default ``collate_fn`` stacks them into (B, 1, P, P, P) batches for
``ISDUQSMNet(phi, mask, kernel)``. Kernels are cached per distinct (patch size, voxel size,
B0 direction) -- a patch set has one direction per orientation, so a handful of kernels.

Augmentation (:class:`PatchDataset`, ``augment=True``; off by default as in the reference,
which trains without augmentation): an independent random flip of each array axis. Flipping
axis ``a`` of both chi and phi maps k_a -> -k_a, which is the same as negating component ``a``
of the B0 direction, so the B0 direction (and therefore the kernel) is flipped with the
arrays and phi = F^-1 D F chi stays consistent. Axis permutations are not offered (they
would also permute an anisotropic voxel size). The flips are a pure function of (``seed``,
epoch, index): call :meth:`PatchDataset.set_epoch` before each epoch (the trainer does), so
runs are reproducible and independent of the number of loader workers.

:class:`SimulatedPatchDataset` builds training pairs from the procedural head phantom
(:mod:`qsmflow.simulate.phantom`) without any data files: for each of ``n_subjects`` subjects
(phantom seeds) and ``n_orientations`` random B0 directions per subject (tilt up to
``max_tilt_deg`` from the array's axis 2), the local field of the brain's susceptibility is
computed once on the whole phantom (:func:`qsmflow.physics.forward.forward_field`, zero
padded, D(0) = 0) and cached; item ``i`` is a random crop (mask fraction above
``min_mask_fraction``) of subject/orientation ``i mod (n_subjects * n_orientations)``, with
optional Gaussian noise added to the field inside the mask. Everything is a pure function of
(``seed``, ``i``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence, Sized
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import QSMInputError
from ..models.kernels import ISDU_KERNEL_K0, isdu_kernel
from ..physics.kernel import normalise_b0_dir
from .patch_store import PatchSet, read_patch_set


def _mix_seed(*parts: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]))


class KernelCache:
    """ISDU dipole kernels (1, P, P, P) float32 (:func:`~qsmflow.models.kernels.isdu_kernel`)
    keyed by (shape, voxel size, B0 direction); ``k0`` is their value at k = 0."""

    def __init__(self, k0: float = ISDU_KERNEL_K0) -> None:
        self.k0 = float(k0)
        self._cache: dict[tuple, torch.Tensor] = {}

    def __call__(
        self, shape: Sequence[int], voxel_size: Sequence[float], b0_dir: Sequence[float]
    ) -> torch.Tensor:
        b = normalise_b0_dir(b0_dir)
        # round so that float32 copies of one direction share an entry
        key = (
            tuple(int(s) for s in shape),
            tuple(round(float(v), 6) for v in voxel_size),
            tuple(round(float(x), 6) for x in b),
        )
        k = self._cache.get(key)
        if k is None:
            k = isdu_kernel(key[0], key[1], key[2], k0=self.k0)[0]
            self._cache[key] = k
        return k

    def __len__(self) -> int:
        return len(self._cache)


def _item(
    phi: np.ndarray,
    chi: np.ndarray,
    mask: np.ndarray,
    kernel: torch.Tensor,
    b0: np.ndarray,
    index: int,
) -> dict[str, torch.Tensor]:
    return {
        "phi": torch.from_numpy(np.array(phi, dtype=np.float32, order="C"))[None],
        "chi": torch.from_numpy(np.array(chi, dtype=np.float32, order="C"))[None],
        "mask": torch.from_numpy(np.array(mask, dtype=np.float32, order="C"))[None],
        "kernel": kernel,
        "b0_dir": torch.as_tensor(np.asarray(b0, dtype=np.float32)),
        "index": torch.tensor(int(index), dtype=torch.int64),
    }


def combine_stats(stats: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Pool ``{"mean", "std", "count"}`` (population statistics) of several sets exactly."""
    n = np.array([float(s["count"]) for s in stats])
    m = np.array([float(s["mean"]) for s in stats])
    v = np.array([float(s["std"]) ** 2 for s in stats])
    total = n.sum()
    if total <= 0:
        raise QSMInputError("no voxels to pool normalisation statistics over")
    mean = float((n * m).sum() / total)
    var = float((n * (v + (m - mean) ** 2)).sum() / total)
    return {"mean": mean, "std": float(np.sqrt(var)), "count": int(total)}


class PatchDataset(Dataset):
    """Training pairs from one or more ``qsmflow-patches`` folders (memory-mapped).

    Parameters
    ----------
    directories : a folder or a list of folders written by
        :func:`qsmflow.training.patch_store.write_patch_set` (the Nipype training-data workflow).
        All must have the same patch size; voxel sizes may differ (each set's kernels use its
        own ``voxel_size_mm``). Item ``i`` runs over the sets in the given order.
    kernel_k0 : D(0) of the kernels (1/3: the ISDU convention; 0: qsmflow's physics default).
    augment : random flips (see the module docstring); default off.
    seed : seed of the augmentation.
    mmap : memory-map the arrays (default) instead of reading them into memory.
    """

    def __init__(
        self,
        directories: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        kernel_k0: float = ISDU_KERNEL_K0,
        augment: bool = False,
        seed: int = 0,
        mmap: bool = True,
    ) -> None:
        if isinstance(directories, (str, os.PathLike)):
            directories = [directories]
        if not directories:
            raise QSMInputError("no patch-set folder given")
        self.sets: list[PatchSet] = [read_patch_set(d, mmap=mmap) for d in directories]
        sizes = {s.patch_size for s in self.sets}
        if len(sizes) > 1:
            raise QSMInputError(
                f"patch sets have different patch sizes {sorted(sizes)}: "
                + ", ".join(f"{s.path} ({s.patch_size})" for s in self.sets)
            )
        self.patch_size = sizes.pop()
        self.offsets = np.cumsum([0] + [len(s) for s in self.sets])
        self.voxel_sizes = [
            tuple(float(v) for v in np.broadcast_to(s.meta["voxel_size_mm"], (3,)))
            for s in self.sets
        ]
        self.kernel_k0 = float(kernel_k0)
        self.kernels = KernelCache(self.kernel_k0)
        self.augment = bool(augment)
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw of ``epoch`` (no effect without ``augment``)."""
        self.epoch = int(epoch)

    def locate(self, index: int) -> tuple[int, int]:
        """(set number, row in that set) of item ``index``."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} patches")
        index %= n
        s = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return s, int(index - self.offsets[s])

    @property
    def normalisation(self) -> dict[str, dict[str, float]]:
        """Pooled ``{"field": {...}, "chi": {...}}`` mean/std (ppm) over the masks of all sets."""
        return {
            key: combine_stats([s.normalisation[key] for s in self.sets])
            for key in ("field", "chi")
        }

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "patches",
            "folders": [str(s.path) for s in self.sets],
            "count": len(self),
            "patch_size": self.patch_size,
            "kernel_k0": self.kernel_k0,
            "augment": self.augment,
        }

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        s, row = self.locate(int(index))
        ps = self.sets[s]
        phi = np.asarray(ps.field[row], dtype=np.float32)
        chi = np.asarray(ps.chi[row], dtype=np.float32)
        mask = np.asarray(ps.mask[row])
        b0 = np.asarray(ps.b0_dir[row], dtype=np.float64)
        if self.augment:
            flips = _mix_seed(self.seed, 0xF11B, self.epoch, int(index) % len(self)).integers(
                0, 2, size=3
            )
            axes = tuple(int(a) for a in np.flatnonzero(flips))
            if axes:
                phi, chi, mask = (np.flip(a, axis=axes) for a in (phi, chi, mask))
                b0 = b0.copy()
                b0[list(axes)] *= -1
        kernel = self.kernels(phi.shape, self.voxel_sizes[s], b0)
        return _item(phi * (mask != 0), chi, mask != 0, kernel, b0, index)


def check_crop_settings(
    length: int, patch_size: int, max_tilt_deg: float, min_mask_fraction: float
) -> None:
    """Common checks of the simulated datasets' settings (QSMInputError on a bad value)."""
    if int(length) < 1:
        raise QSMInputError(f"length must be >= 1, got {length!r}")
    if int(patch_size) < 8:
        raise QSMInputError(f"patch_size must be >= 8, got {patch_size!r}")
    if not 0 <= float(max_tilt_deg) <= 90:
        raise QSMInputError(f"max_tilt_deg must be in [0, 90], got {max_tilt_deg!r}")
    if not 0 <= float(min_mask_fraction) < 1:
        raise QSMInputError(f"min_mask_fraction must be in [0, 1), got {min_mask_fraction!r}")


class SimulatedCrops(Dataset):
    """Settings shared by the simulated datasets (crops of P^3 voxels with random B0).

    ``length`` items, ``patch_size`` P (voxels), ``seed`` of all randomness, ``max_tilt_deg``
    the largest angle between B0 and array axis 2, ``min_mask_fraction`` the brain fraction a
    crop must exceed, ``kernel_k0`` the value at k = 0 of the returned kernels.
    """

    def __init__(
        self,
        length: int,
        patch_size: int,
        seed: int,
        max_tilt_deg: float,
        min_mask_fraction: float,
        kernel_k0: float,
    ) -> None:
        check_crop_settings(length, patch_size, max_tilt_deg, min_mask_fraction)
        self.length = int(length)
        self.patch_size = int(patch_size)
        self.seed = int(seed)
        self.max_tilt_deg = float(max_tilt_deg)
        self.min_mask_fraction = float(min_mask_fraction)
        self.kernel_k0 = float(kernel_k0)

    def __len__(self) -> int:
        return self.length

    def item_index(self, index: int) -> int:
        """``index`` in ``[0, length)`` (negative indices count from the end)."""
        n = self.length
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        return int(index) % n


def random_b0_dirs(n: int, max_tilt_deg: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` unit vectors tilted uniformly on the cap of half-angle ``max_tilt_deg`` about z."""
    cos_max = np.cos(np.deg2rad(max_tilt_deg))
    cz = rng.uniform(cos_max, 1.0, size=n)
    az = rng.uniform(0.0, 2 * np.pi, size=n)
    sz = np.sqrt(np.clip(1 - cz**2, 0, None))
    return np.stack([sz * np.cos(az), sz * np.sin(az), cz], axis=1)


class SimulatedPatchDataset(SimulatedCrops):
    """Training pairs cropped from the built-in phantom, made on the fly (no data files).

    Parameters
    ----------
    length : number of items.
    patch_size : P (voxels); the phantom is zero-padded if P exceeds its shape.
    seed : everything (subjects, B0 directions, crops, noise) is a function of (seed, index).
    n_subjects : phantom anatomies (phantom seeds ``seed * 1000 + s``).
    n_orientations : B0 directions per subject.
    max_tilt_deg : largest angle between B0 and array axis 2.
    voxel_size : phantom voxel size, mm (isotropic). The default 2 mm grid is 96 x 112 x 96.
    phantom_shape : phantom array shape (default: 192 x 224 x 192 mm field of view).
    texture : within-tissue texture of the phantom's chi.
    noise_std_ppm : std of Gaussian noise added to the field inside the mask.
    min_mask_fraction : crops need strictly more than this fraction of brain voxels.
    kernel_k0 : D(0) of the returned kernels (the simulated fields themselves use D(0)=0).

    Subject/orientation fields are cached per process (a few MB each).
    """

    def __init__(
        self,
        length: int,
        patch_size: int = 64,
        *,
        seed: int = 0,
        n_subjects: int = 2,
        n_orientations: int = 5,
        max_tilt_deg: float = 30.0,
        voxel_size: float = 2.0,
        phantom_shape: Sequence[int] | None = None,
        texture: bool = True,
        noise_std_ppm: float = 0.0,
        min_mask_fraction: float = 0.125,
        kernel_k0: float = ISDU_KERNEL_K0,
    ) -> None:
        super().__init__(length, patch_size, seed, max_tilt_deg, min_mask_fraction, kernel_k0)
        if int(n_subjects) < 1 or int(n_orientations) < 1:
            raise QSMInputError("n_subjects and n_orientations must be >= 1")
        if not float(noise_std_ppm) >= 0:
            raise QSMInputError(f"noise_std_ppm must be >= 0, got {noise_std_ppm!r}")
        if not float(voxel_size) > 0:
            raise QSMInputError(f"voxel_size must be > 0 mm, got {voxel_size!r}")
        self.n_subjects = int(n_subjects)
        self.n_orientations = int(n_orientations)
        self.voxel_size = float(voxel_size)
        self.phantom_shape = None if phantom_shape is None else tuple(int(s) for s in phantom_shape)
        self.texture = bool(texture)
        self.noise_std_ppm = float(noise_std_ppm)
        self.b0_dirs = random_b0_dirs(
            self.n_subjects * self.n_orientations,
            self.max_tilt_deg,
            _mix_seed(self.seed, 0xB0D1),
        ).reshape(self.n_subjects, self.n_orientations, 3)
        self.kernels = KernelCache(self.kernel_k0)
        self._subjects: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._fields: dict[tuple[int, int], np.ndarray] = {}

    def set_epoch(self, epoch: int) -> None:
        """Items do not depend on the epoch (kept for the trainer's interface)."""

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "simulated",
            "count": self.length,
            "patch_size": self.patch_size,
            "seed": self.seed,
            "n_subjects": self.n_subjects,
            "n_orientations": self.n_orientations,
            "max_tilt_deg": self.max_tilt_deg,
            "voxel_size": self.voxel_size,
            "phantom_shape": self.phantom_shape,
            "texture": self.texture,
            "noise_std_ppm": self.noise_std_ppm,
            "kernel_k0": self.kernel_k0,
        }

    # ------------------------------------------------------------------ phantom and fields
    def subject(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        """(chi inside the brain (ppm, float32), brain mask (bool)) of subject ``s``."""
        got = self._subjects.get(s)
        if got is None:
            from ..simulate.phantom import make_phantom

            head = make_phantom(
                voxel_size=self.voxel_size,
                shape=self.phantom_shape,
                seed=self.seed * 1000 + s,
                texture=self.texture,
            )
            mask = np.asarray(head.brain_mask, dtype=bool)
            got = (np.where(mask, head.chi, 0).astype(np.float32), mask)
            self._subjects[s] = got
        return got

    def field(self, s: int, o: int) -> np.ndarray:
        """Local field (ppm, float32, 0 outside the mask) of subject ``s`` in orientation ``o``."""
        got = self._fields.get((s, o))
        if got is None:
            from ..physics.forward import forward_field

            chi, mask = self.subject(s)
            vox = (self.voxel_size,) * 3
            got = forward_field(chi, vox, self.b0_dirs[s, o], dc_value=0.0) * mask
            got = got.astype(np.float32)
            self._fields[(s, o)] = got
        return got

    @property
    def normalisation(self) -> dict[str, dict[str, float]]:
        """Mean/std (ppm) of chi over the brain masks of all subjects (``field``: orientation 0)."""
        chis, fields = [], []
        for s in range(self.n_subjects):
            chi, mask = self.subject(s)
            chis.append(chi[mask].astype(np.float64))
            fields.append(self.field(s, 0)[mask].astype(np.float64))
        out = {}
        for key, vals in (("chi", chis), ("field", fields)):
            v = np.concatenate(vals)
            out[key] = {"mean": float(v.mean()), "std": float(v.std()), "count": int(v.size)}
        return out

    def _crop_origin(self, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        p = self.patch_size
        hi = np.maximum(np.asarray(mask.shape) - p, 0)
        best, best_frac = None, -1.0
        for _ in range(50):
            o = np.array([rng.integers(0, h + 1) for h in hi])
            sub = mask[o[0] : o[0] + p, o[1] : o[1] + p, o[2] : o[2] + p]
            frac = np.count_nonzero(sub) / float(p) ** 3
            if frac > self.min_mask_fraction:
                return o
            if frac > best_frac:
                best, best_frac = o, frac
        return best

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = self.item_index(index)
        combo = index % (self.n_subjects * self.n_orientations)
        s, o = divmod(combo, self.n_orientations)
        chi, mask = self.subject(s)
        field = self.field(s, o)
        rng = _mix_seed(self.seed, 0x51A7, index)
        a, b, c = self._crop_origin(mask, rng)
        p = self.patch_size
        out = []
        for arr in (field, chi, mask):
            sub = arr[a : a + p, b : b + p, c : c + p]
            patch = np.zeros((p, p, p), dtype=arr.dtype)
            patch[: sub.shape[0], : sub.shape[1], : sub.shape[2]] = sub
            out.append(patch)
        phi, chi_p, mask_p = out
        if self.noise_std_ppm > 0:
            noise = rng.standard_normal(phi.shape).astype(np.float32)
            phi = (phi + np.float32(self.noise_std_ppm) * noise) * mask_p
        b0 = self.b0_dirs[s, o]
        kernel = self.kernels(phi.shape, (self.voxel_size,) * 3, b0)
        return _item(phi, chi_p, mask_p, kernel, b0, index)


class MixedDataset(Dataset):
    """Several training datasets as one (e.g. realistic patch sets plus simulated phantoms).

    Items of all parts must have the same patch size. ``set_epoch`` reaches every part;
    ``normalisation`` is the first part's (the patch sets' statistics when they come first).
    """

    def __init__(self, parts: Sequence[Dataset]) -> None:
        if not parts:
            raise QSMInputError("MixedDataset needs at least one dataset")
        sizes = {getattr(p, "patch_size", None) for p in parts}
        if len(sizes) != 1:
            raise QSMInputError(
                f"datasets to mix have different patch sizes {sorted(map(str, sizes))}"
            )
        self.parts = list(parts)
        self.patch_size = sizes.pop()
        self.offsets = np.cumsum([0] + [len(cast(Sized, p)) for p in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def set_epoch(self, epoch: int) -> None:
        for p in self.parts:
            fn = getattr(p, "set_epoch", None)
            if callable(fn):
                fn(epoch)

    @property
    def normalisation(self) -> Any:
        return getattr(self.parts[0], "normalisation", None)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "MixedDataset",
            "count": len(self),
            "parts": [json.loads(describe_dataset(p)) for p in self.parts],
        }

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(index)
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        item = self.parts[part][index - int(self.offsets[part])]
        item["index"] = torch.tensor(index, dtype=torch.int64)
        return item


def describe_dataset(dataset: Dataset) -> str:
    """A JSON string describing ``dataset`` (for checkpoints and logs)."""
    describe = getattr(dataset, "describe", None)
    info = describe() if callable(describe) else {"kind": type(dataset).__name__}
    info.setdefault("count", len(cast(Sized, dataset)))
    return json.dumps(info, default=str, sort_keys=True)


__all__ = [
    "KernelCache",
    "MixedDataset",
    "PatchDataset",
    "SimulatedCrops",
    "SimulatedPatchDataset",
    "combine_stats",
    "describe_dataset",
    "random_b0_dirs",
]
