"""A whole simulated BIDS dataset: subjects x head orientations, forward-simulated and written.

:func:`simulate_dataset` is what ``qsmflow simulate`` runs: it checks every option before
writing anything, then simulates each subject (a different anatomy per subject) in each
orientation with :func:`qsmflow.simulate.gre.simulate_gre` and writes it with
:class:`qsmflow.simulate.bids.BIDSWriter`. Units: echo times in s, B0 in T, voxel size in mm,
rotations in degrees, fields and chi in ppm.

``realism="3t"`` or ``"7t"`` (head model only) simulates data that stands in for measured data:
the preset of :data:`qsmflow.simulate.realism.REALISM_PRESETS` (WM anisotropy, sub-voxel
texture, veins, residual background field, tissue texture, smooth phase offset, dephasing, and
the preset's B0, echo times and SNR). Echo times, B0 and SNR given explicitly override the
preset's; ``texture`` and ``dephasing`` are on with a preset whatever their flags say.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..errors import QSMInputError
from ..physics import units
from ..physics.geometry import rotation_angle_deg
from ..physics.kernel import check_voxel_size
from .bids import BIDSWriter
from .gre import DEFAULT_TE_S, GREData, head_rotations, rotation_to_z, simulate_gre
from .head_model import default_head_model_dir
from .head_source import WM_PARCELLATION_FILE, HeadModelSource
from .orientations import read_b0_dirs, tilt_deg
from .phantom import BuiltinPhantom
from .realism import GRE_KEYS, REALISM_PRESETS, SOURCE_KEYS, realism_parameters
from .sampling import check_supersample

__all__ = [
    "PHANTOMS",
    "ORIENTATION_MODES",
    "REALISM",
    "RunStats",
    "SimulatedDataset",
    "simulate_dataset",
]

#: Phantom sources: the procedural head, or the Challenge 2.0 head model (needs its files).
PHANTOMS = ("builtin", "head-model")
#: rotate: the head rotates, axial affine; oblique: the head stays, the affine is oblique.
ORIENTATION_MODES = ("rotate", "oblique")
#: Receiver phase offset at TE = 0.
PHASE_OFFSETS = ("smooth", "none")
#: Realistic-acquisition presets (:data:`qsmflow.simulate.realism.REALISM_PRESETS`).
REALISM = tuple(REALISM_PRESETS)
#: Defaults of the options a realism preset sets unless they are given.
DEFAULT_B0_TESLA = 3.0
DEFAULT_SNR = 100.0

_HEAD_MODEL_FILES = ("SegmentedModel.nii.gz", "BrainMask.nii.gz", "SusceptibilityValues.mat")


@dataclass(frozen=True)
class RunStats:
    """What one simulated run looks like (printed by ``qsmflow simulate``)."""

    run: str  #: ``sub-XX[_acq-oriN]``
    tilt_deg: float  #: B0 tilt from the head's z axis, degrees
    rotation_deg: float  #: head rotation angle, degrees
    max_total_ppm: float  #: max |total field| in the brain, ppm
    max_local_ppm: float  #: max |local field| in the brain, ppm
    noise_sigma: float  #: noise standard deviation (magnitude units)
    shape: tuple[int, ...]  #: grid shape (voxels)


@dataclass(frozen=True)
class SimulatedDataset:
    """Where the dataset went and what it holds."""

    root: Path
    subjects: int
    runs: list[RunStats]
    files: int  #: files written (raw and truth)
    voxel_size_mm: tuple[float, float, float]
    snr: float | None  #: None = noise-free
    parameters: dict = field(default_factory=dict)  #: as recorded in simulation.json

    @property
    def truth_dir(self) -> Path:
        """The truth derivative (chi, fields, labels, masks, geometry)."""
        return self.root / "derivatives" / "qsmflow-simulation"


def _voxel_size(voxel_size: Sequence[float]) -> tuple[float, float, float]:
    if len(voxel_size) not in (1, 3):
        raise QSMInputError("--voxel-size takes one value or three (mm)")
    vox = tuple(voxel_size) if len(voxel_size) == 3 else (voxel_size[0],) * 3
    check_voxel_size(vox)
    return vox


def _check_head_model(head_model_dir: str | os.PathLike | None, wm_parcels: bool = False) -> None:
    d = Path(head_model_dir) if head_model_dir else default_head_model_dir()
    for name in _HEAD_MODEL_FILES + ((WM_PARCELLATION_FILE,) if wm_parcels else ()):
        if not (d / name).is_file():
            raise QSMInputError("head model file not found (see --head-model-dir)", str(d / name))


def _run_stats(run: str, data: GREData) -> RunStats:
    b = data.brain_mask
    return RunStats(
        run=run,
        tilt_deg=float(tilt_deg(data.b0_dir_canonical)[0]),
        rotation_deg=rotation_angle_deg(data.rotation),
        max_total_ppm=float(np.abs(data.total_field[b]).max()) if b.any() else 0.0,
        max_local_ppm=float(np.abs(data.local_field[b]).max()) if b.any() else 0.0,
        noise_sigma=data.noise_sigma,
        shape=data.shape,
    )


def simulate_dataset(
    output_dir: str | os.PathLike,
    *,
    phantom: str = "builtin",
    head_model_dir: str | os.PathLike | None = None,
    voxel_size: Sequence[float] = (2.0,),
    subjects: int = 1,
    orientations: int = 3,
    b0_dirs_files: Sequence[str | os.PathLike] | None = None,
    orientation_mode: str = "rotate",
    max_rotation_deg: float = 25.0,
    echo_times_s: Sequence[float] | None = None,
    b0_tesla: float | None = None,
    snr: float | None = None,
    seed: int = 0,
    texture: bool = False,
    phase_offset: str = "smooth",
    dephasing: bool = False,
    supersample: int = 2,
    realism: str | None = None,
    force: bool = False,
) -> SimulatedDataset:
    """Simulate ``subjects`` x orientations multi-echo GRE runs and write them as BIDS.

    ``voxel_size``: one value or three (mm). Orientations: ``orientations`` (the reference plus
    tilts of at most ``max_rotation_deg`` degrees) or the directions in ``b0_dirs_files`` (see
    :func:`qsmflow.simulate.orientations.read_b0_dirs`), applied as head rotations
    (``orientation_mode="rotate"``) or oblique affines (``"oblique"``). ``echo_times_s`` in
    seconds (default :data:`DEFAULT_TE_S`), ``b0_tesla`` in tesla (default 3), ``snr`` = mean
    first-echo brain magnitude / noise sigma (default 100; inf = noise-free); with ``realism``
    (a preset name, head model only) these three default to the preset's values instead and
    the preset's realism components are on (module docstring). Subject ``s`` (0-based) uses seed
    ``seed + s`` (also for its veins, fibre directions and textures). Every option is checked
    before anything is written; the parameters are recorded in the truth's
    ``simulation.json``.
    """
    if subjects < 1:
        raise QSMInputError(f"--subjects must be >= 1, got {subjects}")
    vox = _voxel_size(voxel_size)
    preset: dict[str, Any] = {}
    if realism is not None:
        if phantom != "head-model":
            raise QSMInputError(
                f"--realism {realism} needs --phantom head-model: the builtin phantom has no "
                "white-matter parcellation for the anisotropy and no cortical surface for the veins"
            )
        preset = realism_parameters(realism)
        texture = texture or bool(preset["texture"])
        dephasing = dephasing or bool(preset["dephasing"])
    if echo_times_s is None:
        echo_times_s = preset.get("te_s", DEFAULT_TE_S)
    echo_times_s = [float(t) for t in echo_times_s]
    if b0_tesla is None:
        b0_tesla = float(preset.get("b0_tesla", DEFAULT_B0_TESLA))
    if snr is None:
        snr = float(preset.get("snr", DEFAULT_SNR))
    noise_snr = None if not np.isfinite(snr) else snr
    for t in echo_times_s:
        units.ppm_to_rad(0.0, t, b0_tesla)  # TE in seconds, B0 in tesla: fail before writing
    if noise_snr is not None and not noise_snr > 0:
        raise QSMInputError(f"--snr must be positive (inf for noise-free), got {snr}")
    check_supersample(supersample)
    if phantom == "head-model":
        _check_head_model(head_model_dir, wm_parcels=bool(preset.get("wm_anisotropy_ppm")))

    # orientations: head rotations (rotate mode) or B0 directions (oblique mode)
    if b0_dirs_files:
        dirs = np.concatenate([read_b0_dirs(f) for f in b0_dirs_files])
        rotations = [rotation_to_z(b) for b in dirs]  # R.T @ z = b
    else:
        if orientations < 1:
            raise QSMInputError(f"--orientations must be >= 1, got {orientations}")
        rotations = head_rotations(orientations, max_rotation_deg, seed=seed)
    n_ori = len(rotations)
    acqs = [f"ori{k + 1}" for k in range(n_ori)] if n_ori > 1 else [None]

    params: dict[str, Any] = {
        "phantom": phantom,
        "voxel_size_mm": list(vox),
        "subjects": subjects,
        "orientations": n_ori,
        "orientation_mode": orientation_mode,
        "max_rotation_deg": max_rotation_deg,
        "b0_dirs_file": [str(f) for f in b0_dirs_files or []],
        "echo_times_s": list(echo_times_s),
        "b0_tesla": b0_tesla,
        "snr": noise_snr,
        "seed": seed,
        "texture": texture,
        "phase_offset": phase_offset,
        "dephasing": dephasing,
        "supersample": supersample,
        "realism": realism,
    }
    source_realism = {k: preset[k] for k in SOURCE_KEYS if k in preset and k != "texture"}
    gre_realism = {k: preset[k] for k in GRE_KEYS if k in preset and k not in ("te_s", "b0_tesla")}
    gre_realism.pop("phase_offset", None)  # --phase-offset (default smooth) decides
    gre_realism.pop("dephasing", None)
    if realism is not None:
        params["realism_parameters"] = {**source_realism, **gre_realism}
    writer = BIDSWriter(Path(output_dir), force=force, parameters=params)
    margin = 10.0 if (n_ori > 1 and orientation_mode == "rotate") else 0.0

    stats = []
    bar = tqdm(total=subjects * n_ori, desc="simulate", unit="run")
    for s in range(subjects):
        sub = f"{s + 1:02d}"
        if phantom == "builtin":
            src = BuiltinPhantom(vox, seed=seed + s, texture=texture)
        else:
            src = HeadModelSource(
                head_model_dir,
                vox,
                margin_mm=margin,
                seed=seed + s,
                texture=texture,
                **source_realism,
            )
        for k, (acq, rot) in enumerate(zip(acqs, rotations, strict=True)):
            bar.set_postfix_str(f"sub-{sub}" + (f" acq-{acq}" if acq else ""))
            geo = (
                {"rotation": rot}
                if orientation_mode == "rotate"
                else {"b0_dir": rot.T @ np.array([0.0, 0.0, 1.0])}
            )
            data = simulate_gre(
                src,
                te_s=echo_times_s,
                b0_tesla=b0_tesla,
                snr=noise_snr,
                phase_offset=None if phase_offset == "none" else "smooth",
                seed=(seed, s, k),
                dephasing=dephasing,
                supersample=supersample,
                **gre_realism,
                **geo,
            )
            writer.write_run(sub, data, acq=acq, participant={"phantom": phantom, "seed": seed + s})
            stats.append(_run_stats(f"sub-{sub}" + (f"_acq-{acq}" if acq else ""), data))
            bar.update(1)
    bar.close()
    summary = writer.finish()
    return SimulatedDataset(
        root=Path(summary["root"]),
        subjects=summary["subjects"],
        runs=stats,
        files=summary["files"],
        voxel_size_mm=vox,
        snr=noise_snr,
        parameters=params,
    )
