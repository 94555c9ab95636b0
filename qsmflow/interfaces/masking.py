"""Brain-mask interface: a thin adapter around :func:`qsmflow.steps.masking.brain_mask_file`."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from nipype.interfaces.base import BaseInterfaceInputSpec, File, TraitedSpec, traits

from ..backends import BACKENDS
from ..steps import StepResult
from . import StepInterface


class _BrainMaskInputSpec(BaseInterfaceInputSpec):
    magnitude = File(
        exists=True, mandatory=True, desc="magnitude NIfTI, 3-D or 4-D (first echo used)"
    )
    backend = traits.Enum(*BACKENDS, desc="auto (default): FSL BET if on PATH, else python")
    frac = traits.Range(
        low=0.0,
        high=1.0,
        exclude_low=True,
        exclude_high=True,
        desc="BET fractional intensity threshold (-f; FSL backend only; default 0.5)",
    )
    out_file = File(desc="output file name (default <magnitude>_mask.nii.gz in the node dir)")


class _BrainMaskOutputSpec(TraitedSpec):
    mask_file = File(exists=True, desc="uint8 brain mask (1 = brain) on the input grid")
    backend = traits.Str(desc="backend that ran: fsl or python")
    n_voxels = traits.Int(desc="number of voxels in the mask")
    volume_ml = traits.Float(desc="mask volume in mL")


class BrainMask(StepInterface):
    """Brain mask from a (multi-echo) GRE magnitude: FSL BET or :func:`qsmflow.masking.brain_mask`.

    See :func:`qsmflow.steps.masking.brain_mask_file`; FSL's files stay in the node's directory.
    """

    input_spec = _BrainMaskInputSpec
    output_spec = _BrainMaskOutputSpec
    _files: ClassVar[dict[str, str]] = {"mask_file": "mask"}
    _values: ClassVar[dict[str, str]] = {
        "backend": "MaskBackend",
        "n_voxels": "Voxels",
        "volume_ml": "VolumeML",
    }

    def _run_step(self, cwd: Path) -> StepResult:
        from ..steps.masking import brain_mask_file

        return brain_mask_file(
            self.inputs.magnitude,
            self._output_file(cwd, self.inputs.magnitude, "_mask"),
            workdir=cwd,
            **self._options("backend", "frac"),
        )
