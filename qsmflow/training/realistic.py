"""Training patches that look like measured data: realistic acquisitions through our own chain.

A recipe (``workflows/realistic-patches.toml``, read by :func:`load_recipe`) lists
acquisitions. Each one is simulated by :func:`qsmflow.simulate.realism.simulate_realistic`
(multi-echo GRE at 3 T or 7 T with noise, T2* decay, white-matter anisotropy, veins, sub-voxel
texture, a residual background field, dephasing and a phase offset) at its voxel size and B0
tilt, with the brain tissues' susceptibilities jittered per acquisition (``contrast``,
``offset_ppm``) so that the network learns the physics and not one head's values. It is then
processed exactly as ``qsmflow run`` processes measured data
(:func:`qsmflow.evaluation.realistic.process_acquisition`: our brain mask, the multi-echo field
fit, V-SHARP), so the inputs carry the chain's own errors: residual background field,
mask-edge damage from V-SHARP, anisotropy the scalar dipole model lacks, noise shaped by the
echo combination. Finally :func:`qsmflow.steps.patches.training_patches` cuts the local field
(ppm) and the true isotropic susceptibility (ppm) into a ``qsmflow-patches`` set inside the
V-SHARP mask, with the acquisition's B0 direction; ``qsmflow train`` reads these sets like the
pipeline's (``[data] patches``).

One patch set per acquisition, ``OUT/<name>/``; a set that already exists is kept (an
interrupted run resumes with the next acquisition). Every set's ``patches.json`` records the
acquisition (preset, voxel size, B0 direction, seed, the susceptibilities used) under
``sources``.

Cost at 1 mm: 2-4 min and ~9 GB per acquisition on 2 cores (the 2x supersampled simulation).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import QSMInputError

log = logging.getLogger(__name__)

__all__ = [
    "JITTERED_LABELS",
    "AcquisitionSpec",
    "RealisticPatchRecipe",
    "jittered_chiref",
    "load_recipe",
    "make_realistic_patch_sets",
    "tilted_b0",
]

#: Head-model labels whose susceptibility is jittered: the brain tissues and the veins
#: (1-11). Bone, air, calcification and the tissues outside the brain keep their values.
JITTERED_LABELS = tuple(range(1, 12))


@dataclass(frozen=True)
class AcquisitionSpec:
    """One simulated acquisition of a recipe.

    name : folder name of its patch set.
    preset : realism preset, ``"3t"`` or ``"7t"``
        (:data:`~qsmflow.simulate.realism.REALISM_PRESETS`).
    voxel_size : mm (three values).
    tilt_deg, azimuth_deg : B0 direction in array axes, tilted from axis 2 by ``tilt_deg`` towards
        the azimuth ``azimuth_deg`` (0 = axis 0) -- an oblique acquisition (the affine says so).
    seed : anatomy extras (fibres, veins, textures), noise and the susceptibility jitter.
    contrast : relative jitter of the jittered labels' susceptibility, uniform in +-contrast.
    offset_ppm : standard deviation (ppm) of an additive per-label offset.
    snr : first-echo SNR; None = the preset's.
    """

    name: str
    preset: str = "3t"
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)
    tilt_deg: float = 0.0
    azimuth_deg: float = 0.0
    seed: int = 0
    contrast: float = 0.0
    offset_ppm: float = 0.0
    snr: float | None = None


@dataclass(frozen=True)
class RealisticPatchRecipe:
    """Patch grid and acquisitions of a realistic training set (see :func:`load_recipe`)."""

    acquisitions: tuple[AcquisitionSpec, ...]
    patch_size: int = 32
    stride: int = 16
    min_mask_fraction: float = 0.125
    source: str | None = field(default=None, compare=False)


def tilted_b0(tilt_deg: float, azimuth_deg: float = 0.0) -> tuple[float, float, float]:
    """Unit B0 direction tilted ``tilt_deg`` from array axis 2 towards azimuth ``azimuth_deg``."""
    t, a = math.radians(tilt_deg), math.radians(azimuth_deg)
    return (math.sin(t) * math.cos(a), math.sin(t) * math.sin(a), math.cos(t))


def jittered_chiref(
    chiref: Sequence[float], contrast: float, offset_ppm: float, rng: np.random.Generator
) -> np.ndarray:
    """``chiref`` (ppm per label) with :data:`JITTERED_LABELS` scaled by 1 + U(-c, c) and
    shifted by N(0, offset_ppm); the other labels unchanged."""
    out = np.array(chiref, dtype=np.float64)
    labels = np.array(JITTERED_LABELS)
    out[labels] = out[labels] * (1 + rng.uniform(-contrast, contrast, labels.size))
    out[labels] += rng.normal(0.0, offset_ppm, labels.size) if offset_ppm > 0 else 0.0
    return out


_SPEC_KEYS = {f for f in AcquisitionSpec.__dataclass_fields__}
_RECIPE_KEYS = {"patch_size", "stride", "min_mask_fraction", "acquisitions"}


def _spec(entry: Any, i: int, src: str) -> AcquisitionSpec:
    if not isinstance(entry, dict):
        raise QSMInputError(f"acquisitions[{i}] is not a table", src)
    unknown = sorted(set(entry) - _SPEC_KEYS)
    if unknown:
        raise QSMInputError(
            f"acquisitions[{i}]: unknown key(s) {unknown} (known: {sorted(_SPEC_KEYS)})", src
        )
    if "name" not in entry:
        raise QSMInputError(f"acquisitions[{i}] has no name", src)
    values = dict(entry)
    vox = values.get("voxel_size", 1.0)
    vox = [float(vox)] * 3 if isinstance(vox, (int, float)) else [float(v) for v in vox]
    if len(vox) != 3 or not all(v > 0 for v in vox):
        raise QSMInputError(f"acquisitions[{i}]: voxel_size must be 1 or 3 values > 0 mm", src)
    values["voxel_size"] = tuple(vox)
    spec = AcquisitionSpec(**values)
    if spec.preset not in ("3t", "7t"):
        raise QSMInputError(f"acquisitions[{i}]: preset {spec.preset!r}; use 3t or 7t", src)
    if not 0 <= spec.tilt_deg <= 90:
        raise QSMInputError(f"acquisitions[{i}]: tilt_deg must be 0-90, got {spec.tilt_deg}", src)
    if not 0 <= spec.contrast < 1 or spec.offset_ppm < 0:
        raise QSMInputError(f"acquisitions[{i}]: contrast in [0, 1), offset_ppm >= 0", src)
    return spec


def load_recipe(path: str | os.PathLike) -> RealisticPatchRecipe:
    """Read a realistic-patch recipe TOML; errors name the file.

    Top level: ``patch_size`` (32), ``stride`` (16), ``min_mask_fraction`` (0.125); then one
    ``[[acquisitions]]`` table per acquisition with the fields of :class:`AcquisitionSpec`.
    """
    import tomllib

    p = Path(path)
    src = str(p)
    if not p.is_file():
        raise QSMInputError("recipe file not found", src)
    try:
        values = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise QSMInputError(f"not valid TOML ({exc})", src) from exc
    unknown = sorted(set(values) - _RECIPE_KEYS)
    if unknown:
        raise QSMInputError(f"unknown key(s) {unknown} (known: {sorted(_RECIPE_KEYS)})", src)
    entries = values.get("acquisitions")
    if not isinstance(entries, list) or not entries:
        raise QSMInputError("no [[acquisitions]] tables", src)
    specs = tuple(_spec(e, i, src) for i, e in enumerate(entries))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise QSMInputError(f"acquisition names must be unique, got {names}", src)
    return RealisticPatchRecipe(
        acquisitions=specs,
        patch_size=int(values.get("patch_size", 32)),
        stride=int(values.get("stride", 16)),
        min_mask_fraction=float(values.get("min_mask_fraction", 0.125)),
        source=src,
    )


def _acquire(spec: AcquisitionSpec, head_model_dir: Path, work: Path) -> dict[str, Any]:
    """Simulate ``spec``, run the chain and write the truth; returns files and provenance."""
    import nibabel as nib

    from ..evaluation.realistic import process_acquisition
    from ..simulate.head_source import _native_head
    from ..simulate.realism import simulate_realistic

    rng = np.random.default_rng([int(spec.seed), 0x5EA1])
    chiref = jittered_chiref(
        _native_head(str(head_model_dir))[2], spec.contrast, spec.offset_ppm, rng
    )
    b0 = tilted_b0(spec.tilt_deg, spec.azimuth_deg)
    gre = simulate_realistic(
        spec.preset,
        voxel_size=spec.voxel_size,
        directory=head_model_dir,
        seed=int(spec.seed),
        snr=spec.snr,
        chiref=chiref.tolist(),
        b0_dir=b0,
    )
    proc = process_acquisition(gre, work)
    chi_file = work / "chi_true.nii.gz"
    nib.save(nib.Nifti1Image(gre.chi.astype(np.float32), np.asarray(gre.affine)), chi_file)
    return {
        "local_field": proc.local_field,
        "mask": proc.mask,
        "chi": chi_file,
        "b0_dir": [float(x) for x in gre.b0_dir],
        "provenance": {
            "acquisition": {**asdict(spec), "voxel_size": list(spec.voxel_size)},
            "b0_dir": [float(x) for x in gre.b0_dir],
            "chiref_ppm": chiref.tolist(),
            "shape": list(gre.shape),
            "mask_voxels": int(proc.local_mask.sum()),
            "chain_seconds": proc.seconds,
            "realism": gre.extra.get("realism"),
        },
    }


def make_realistic_patch_sets(
    recipe: RealisticPatchRecipe,
    out_dir: str | os.PathLike,
    *,
    head_model_dir: str | os.PathLike | None = None,
    only: Sequence[str] | None = None,
    progress: bool = True,
) -> list[Path]:
    """Make (or keep) the patch set of every acquisition of ``recipe`` under ``out_dir``.

    ``only`` restricts the run to those acquisition names. Returns the patch-set folders in
    recipe order. An existing ``out_dir/<name>/patches.json`` means that set is done.
    """
    from ..simulate.head_model import default_head_model_dir
    from ..steps.patches import training_patches

    hm = Path(head_model_dir) if head_model_dir is not None else default_head_model_dir()
    if not (hm / "SegmentedModel.nii.gz").is_file():
        raise QSMInputError("the QSM Challenge 2.0 head model is not there", str(hm))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specs = [s for s in recipe.acquisitions if only is None or s.name in set(only)]
    if only is not None and len(specs) != len(set(only)):
        missing = sorted(set(only) - {s.name for s in specs})
        raise QSMInputError(f"no acquisition named {missing} in the recipe", recipe.source)
    done: list[Path] = []
    for i, spec in enumerate(specs, 1):
        target = out / spec.name
        if (target / "patches.json").is_file():
            if progress:
                print(f"[{i}/{len(specs)}] {spec.name}: kept (already made)", flush=True)
            done.append(target)
            continue
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f".{spec.name}-", dir=out) as work:
            acq = _acquire(spec, hm, Path(work))
            staged = Path(work) / "patches"
            res = training_patches(
                [acq["local_field"]],
                acq["chi"],
                acq["mask"],
                [acq["b0_dir"]],
                staged,
                patch_size=recipe.patch_size,
                stride=recipe.stride,
                min_mask_fraction=recipe.min_mask_fraction,
                source_files=[],
            )
            _record_provenance(staged, acq["provenance"], recipe)
            if target.exists():  # a folder without patches.json: an unfinished older run
                import shutil

                shutil.rmtree(target)
            os.replace(staged, target)  # same file system: the set appears complete or not at all
        if progress:
            print(
                f"[{i}/{len(specs)}] {spec.name}: {res.values['count']} patches in "
                f"{time.perf_counter() - t0:.0f} s",
                flush=True,
            )
        done.append(target)
    return done


def _record_provenance(target: Path, provenance: dict, recipe: RealisticPatchRecipe) -> None:
    """Add the acquisition's provenance to ``patches.json`` ``sources`` (atomic rewrite)."""
    from ..io.atomic import write_text_atomic

    meta_file = target / "patches.json"
    meta = json.loads(meta_file.read_text())
    meta.setdefault("sources", {})
    meta["sources"]["realistic_acquisition"] = provenance
    meta["sources"]["recipe"] = recipe.source
    write_text_atomic(meta_file, json.dumps(meta, indent=1, default=float))
