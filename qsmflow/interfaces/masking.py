"""Brain-mask interface: a thin adapter around :func:`qsmflow.steps.masking.brain_mask_file`."""

from __future__ import annotations

import os

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from ..backends import BACKENDS
from . import default_output_name, step_options


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


class BrainMask(SimpleInterface):
    """Brain mask from a (multi-echo) GRE magnitude: FSL BET or :func:`qsmflow.masking.brain_mask`.

    See :func:`qsmflow.steps.masking.brain_mask_file`; FSL's files stay in the node's directory.
    """

    input_spec = _BrainMaskInputSpec
    output_spec = _BrainMaskOutputSpec

    def _run_interface(self, runtime):
        from ..steps.masking import brain_mask_file

        name = self.inputs.out_file
        if not isdefined(name):
            name = default_output_name(self.inputs.magnitude, "_mask")
        result = brain_mask_file(
            self.inputs.magnitude,
            os.path.join(runtime.cwd, name),
            workdir=runtime.cwd,
            **step_options(self.inputs, "backend", "frac"),
        )
        self._results["mask_file"] = str(result.outputs["mask"])
        self._results["backend"] = result.sidecar["MaskBackend"]
        self._results["n_voxels"] = result.sidecar["Voxels"]
        self._results["volume_ml"] = result.sidecar["VolumeML"]
        return runtime
