"""Registration interfaces: thin adapters around :mod:`qsmflow.steps.registration`.

* :class:`RigidRegistration` - :func:`qsmflow.steps.registration.register_file`;
* :class:`ResampleToReference` - :func:`qsmflow.steps.registration.resample_file`.

Transform conventions: :mod:`qsmflow.registration.files`. Unset traits take the step's defaults.
"""

from __future__ import annotations

import os
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from ..backends import BACKENDS, FLIRT_COSTS
from ..io.atomic import nifti_stem
from ..steps.registration import INTERPOLATION_ORDER
from . import default_output_name, step_options


class _RigidRegistrationInputSpec(BaseInterfaceInputSpec):
    moving = File(exists=True, mandatory=True, desc="moving magnitude, 3-D or 4-D (first echo)")
    reference = File(
        exists=True, mandatory=True, desc="reference magnitude, 3-D or 4-D (first echo)"
    )
    moving_mask = File(exists=True, desc="mask on the moving grid restricting the cost")
    reference_mask = File(exists=True, desc="mask on the reference grid restricting the cost")
    backend = traits.Enum(*BACKENDS, desc="auto (default): FSL FLIRT if on PATH, else python")
    cost = traits.Enum(
        *FLIRT_COSTS,
        desc="FLIRT cost (FSL backend only, default mutualinfo; python uses Mattes MI)",
    )


class _RigidRegistrationOutputSpec(TraitedSpec):
    transform = File(
        exists=True, desc="4x4 RAS world transform reference -> moving (mm), text (qsmflow)"
    )
    fsl_matrix = File(exists=True, desc="FLIRT .mat, moving (-in) -> reference (-ref)")
    rotation_deg = traits.Float(desc="rotation angle of the transform, degrees")
    translation_mm = traits.List(traits.Float, desc="translation of the transform, mm (RAS)")
    b0_dir = traits.List(
        traits.Float, desc="moving scan's B0 direction in the reference array axes (unit)"
    )
    backend = traits.Str(desc="backend that ran: fsl or python")


class RigidRegistration(SimpleInterface):
    """6-dof registration of a moving magnitude to a reference magnitude (FLIRT or SimpleITK).

    See :func:`qsmflow.steps.registration.register_file`; FLIRT's files stay in the node dir.
    """

    input_spec = _RigidRegistrationInputSpec
    output_spec = _RigidRegistrationOutputSpec

    def _run_interface(self, runtime):
        from ..steps.registration import register_file

        cwd = Path(runtime.cwd)
        stem = f"{nifti_stem(self.inputs.moving)}_to_reference"
        result = register_file(
            self.inputs.moving,
            self.inputs.reference,
            transform_file=cwd / f"{stem}_ras.txt",
            fsl_matrix_file=cwd / f"{stem}_flirt.mat",
            workdir=cwd,
            **step_options(self.inputs, "moving_mask", "reference_mask", "backend", "cost"),
        )
        self._results["transform"] = str(result.outputs["transform"])
        self._results["fsl_matrix"] = str(result.outputs["fsl_matrix"])
        for key in ("rotation_deg", "translation_mm", "b0_dir", "backend"):
            self._results[key] = result.values[key]
        return runtime


class _ResampleToReferenceInputSpec(BaseInterfaceInputSpec):
    in_file = File(
        exists=True, mandatory=True, desc="image on the moving grid (3-D map, mask or 4-D)"
    )
    reference = File(exists=True, mandatory=True, desc="image defining the target grid")
    transform = File(
        exists=True, desc="qsmflow transform (reference -> moving world); none: regrid only"
    )
    interpolation = traits.Enum(
        *INTERPOLATION_ORDER, desc="interpolation (default linear; masks: always linear)"
    )
    is_mask = traits.Bool(desc="binary mask: linear then > 0.5, written uint8 (default False)")
    out_file = File(desc="output name (default <in_file>_resampled.nii.gz in the node dir)")


class _ResampleToReferenceOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="in_file on the reference grid (0 outside moving FOV)")


class ResampleToReference(SimpleInterface):
    """Pull an image from the moving grid onto the reference grid with a rigid transform.

    See :func:`qsmflow.steps.registration.resample_file`; masks are resampled linearly and
    thresholded at 0.5.
    """

    input_spec = _ResampleToReferenceInputSpec
    output_spec = _ResampleToReferenceOutputSpec

    def _run_interface(self, runtime):
        from ..steps.registration import resample_file

        name = self.inputs.out_file
        if not isdefined(name):
            name = default_output_name(self.inputs.in_file, "_resampled")
        result = resample_file(
            self.inputs.in_file,
            self.inputs.reference,
            os.path.join(runtime.cwd, name),
            **step_options(self.inputs, "transform", "interpolation", "is_mask"),
        )
        self._results["out_file"] = str(result.outputs["out_file"])
        return runtime
