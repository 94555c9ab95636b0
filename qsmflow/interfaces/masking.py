"""Brain mask from a GRE magnitude: FSL BET or qsmflow's own :func:`qsmflow.masking.brain_mask`.

:func:`compute_brain_mask` does the work (shared by the :class:`BrainMask` interface and the
``qsmflow mask`` command); the interface only maps traits to it.

* Input: a 3-D magnitude, or a 4-D multi-echo magnitude (echoes last) of which the first echo
  (best SNR, least dephasing) is used.
* Output: a uint8 NIfTI (1 = brain) on the input grid (shape and affine of the input).
* ``backend``: ``"auto"`` (FSL BET when ``bet`` is on PATH, else python), ``"fsl"``, ``"python"``
  (see :func:`qsmflow.interfaces.fsl.resolve_backend`). ``frac`` is BET's fractional intensity
  threshold (``-f``, 0-1, smaller = larger brain); the python backend has no such parameter and
  ignores it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from ..errors import QSMInputError


@dataclass
class MaskOutcome:
    """Result of :func:`compute_brain_mask`."""

    mask_file: Path
    backend: str  #: "fsl" or "python": the one that ran
    n_voxels: int
    volume_ml: float


@contextlib.contextmanager
def working_directory(workdir: str | os.PathLike | None) -> Iterator[Path]:
    """``workdir`` itself (created if needed) or, when None, a temporary folder removed after."""
    if workdir is not None:
        p = Path(workdir)
        p.mkdir(parents=True, exist_ok=True)
        yield p
        return
    with tempfile.TemporaryDirectory(prefix="qsmflow-") as tmp:
        yield Path(tmp)


def default_output_name(in_file: str | os.PathLike, suffix: str) -> str:
    """``<stem><suffix>.nii.gz`` for ``in_file`` (``.nii``/``.nii.gz`` stripped)."""
    name = Path(in_file).name
    stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else Path(name).stem
    return f"{stem}{suffix}.nii.gz"


def _bet_mask(mag_file: str, vol, n_volumes: int, frac: float, workdir: Path) -> np.ndarray:
    """Run FSL BET on the (first-echo) magnitude; return its mask as bool on the input grid."""
    from ..io.nifti import load_volume
    from .fsl import FSL_OUTPUT_EXT, bet_interface, fsl_input_file, run_fsl

    in_file = fsl_input_file(mag_file, vol, n_volumes, workdir)
    bet = bet_interface(in_file, str(workdir / f"bet_brain{FSL_OUTPUT_EXT}"), frac)
    outputs = run_fsl(bet, workdir)
    mvol = load_volume(outputs.mask_file, ndim=3)
    if mvol.data.shape != vol.data.shape:
        raise RuntimeError(
            f"BET mask {outputs.mask_file} has shape {mvol.data.shape}, input {vol.data.shape}"
        )
    return np.nan_to_num(mvol.data) > 0


def compute_brain_mask(
    magnitude_file: str | os.PathLike,
    out_file: str | os.PathLike,
    *,
    backend: str = "auto",
    frac: float = 0.5,
    workdir: str | os.PathLike | None = None,
) -> MaskOutcome:
    """Brain mask of a magnitude image, written to ``out_file`` (uint8, input grid).

    ``workdir`` holds FSL's intermediate files (a temporary folder when None). Raises
    :class:`QSMInputError` naming the file for unreadable, 2-D/5-D, sheared or unusable input,
    for ``frac`` outside (0, 1) and for ``backend="fsl"`` without FSL.
    """
    from ..io.nifti import save_volume
    from ..masking import brain_mask
    from .fsl import load_first_volume, resolve_backend

    if not 0.0 < float(frac) < 1.0:
        raise QSMInputError(f"frac must be in (0, 1), got {frac}", "frac")
    used = resolve_backend(backend, "bet")
    vol, n_volumes = load_first_volume(magnitude_file, "magnitude")
    if used == "fsl":
        with working_directory(workdir) as wd:
            mask = _bet_mask(str(magnitude_file), vol, n_volumes, frac, wd)
    else:
        try:
            mask = brain_mask(vol.data, vol.voxel_size)
        except QSMInputError as exc:
            if exc.source is None:
                raise QSMInputError(str(exc), vol.path) from exc
            raise
    n = int(mask.sum())
    if n == 0:
        raise QSMInputError(f"the {used} brain mask is empty", vol.path)
    out = save_volume(out_file, mask.astype(np.uint8), vol.affine, dtype=np.uint8)
    volume_ml = n * float(np.prod(vol.voxel_size)) / 1000.0
    return MaskOutcome(mask_file=Path(out), backend=used, n_voxels=n, volume_ml=volume_ml)


class _BrainMaskInputSpec(BaseInterfaceInputSpec):
    magnitude = File(
        exists=True, mandatory=True, desc="magnitude NIfTI, 3-D or 4-D (first echo used)"
    )
    backend = traits.Enum(
        "auto", "fsl", "python", usedefault=True, desc="auto: FSL BET if on PATH, else python"
    )
    frac = traits.Range(
        low=0.0,
        high=1.0,
        value=0.5,
        exclude_low=True,
        exclude_high=True,
        usedefault=True,
        desc="BET fractional intensity threshold (-f; FSL backend only)",
    )
    out_file = File(desc="output file name (default <magnitude>_mask.nii.gz in the node dir)")


class _BrainMaskOutputSpec(TraitedSpec):
    mask_file = File(exists=True, desc="uint8 brain mask (1 = brain) on the input grid")
    backend = traits.Str(desc="backend that ran: fsl or python")
    n_voxels = traits.Int(desc="number of voxels in the mask")
    volume_ml = traits.Float(desc="mask volume in mL")


class BrainMask(SimpleInterface):
    """Brain mask from a (multi-echo) GRE magnitude: FSL BET or :func:`qsmflow.masking.brain_mask`.

    See :func:`compute_brain_mask`. Intermediate FSL files stay in the node's directory.
    """

    input_spec = _BrainMaskInputSpec
    output_spec = _BrainMaskOutputSpec

    def _run_interface(self, runtime):
        if isdefined(self.inputs.out_file):
            out = os.path.join(runtime.cwd, self.inputs.out_file)
        else:
            out = os.path.join(runtime.cwd, default_output_name(self.inputs.magnitude, "_mask"))
        res = compute_brain_mask(
            self.inputs.magnitude,
            out,
            backend=self.inputs.backend,
            frac=self.inputs.frac,
            workdir=runtime.cwd,
        )
        from ..io.nifti import write_json

        meta = {"Type": "Brain", "MaskBackend": res.backend, "VolumeML": res.volume_ml}
        if res.backend == "fsl":
            meta["BETFractionalIntensity"] = self.inputs.frac
        stem = (
            str(res.mask_file)[: -len(".nii.gz")]
            if str(res.mask_file).endswith(".nii.gz")
            else (os.path.splitext(str(res.mask_file))[0])
        )
        write_json(stem + ".json", meta)  # picked up by DerivativesDataSink
        self._results["mask_file"] = str(res.mask_file)
        self._results["backend"] = res.backend
        self._results["n_voxels"] = res.n_voxels
        self._results["volume_ml"] = res.volume_ml
        return runtime
