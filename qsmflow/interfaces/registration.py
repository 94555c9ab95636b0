"""Registration interfaces: thin adapters around :mod:`qsmflow.steps.registration`.

* :class:`RigidRegistration` - :func:`qsmflow.steps.registration.register_file`;
* :class:`ResampleToReference` - :func:`qsmflow.steps.registration.resample_file`.

Transform conventions: :mod:`qsmflow.registration.files`. Unset traits take the step's defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from nipype.interfaces.base import BaseInterfaceInputSpec, File, TraitedSpec, traits

from ..backends import BACKENDS, FLIRT_COSTS
from ..io.atomic import nifti_stem
from ..steps import StepResult
from ..steps.registration import INTERPOLATION_ORDER
from . import StepInterface


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


class RigidRegistration(StepInterface):
    """6-dof registration of a moving magnitude to a reference magnitude (FLIRT or SimpleITK).

    See :func:`qsmflow.steps.registration.register_file`; FLIRT's files stay in the node dir.
    """

    input_spec = _RigidRegistrationInputSpec
    output_spec = _RigidRegistrationOutputSpec
    _files: ClassVar[dict[str, str]] = {"transform": "transform", "fsl_matrix": "fsl_matrix"}
    _values: ClassVar[dict[str, str]] = {
        key: key for key in ("rotation_deg", "translation_mm", "b0_dir", "backend")
    }

    def _run_step(self, cwd: Path) -> StepResult:
        from ..steps.registration import register_file

        stem = f"{nifti_stem(self.inputs.moving)}_to_reference"
        return register_file(
            self.inputs.moving,
            self.inputs.reference,
            transform_file=cwd / f"{stem}_ras.txt",
            fsl_matrix_file=cwd / f"{stem}_flirt.mat",
            workdir=cwd,
            **self._options("moving_mask", "reference_mask", "backend", "cost"),
        )


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


class ResampleToReference(StepInterface):
    """Pull an image from the moving grid onto the reference grid with a rigid transform.

    See :func:`qsmflow.steps.registration.resample_file`; masks are resampled linearly and
    thresholded at 0.5.
    """

    input_spec = _ResampleToReferenceInputSpec
    output_spec = _ResampleToReferenceOutputSpec
    _files: ClassVar[dict[str, str]] = {"out_file": "out_file"}

    def _run_step(self, cwd: Path) -> StepResult:
        from ..steps.registration import resample_file

        return resample_file(
            self.inputs.in_file,
            self.inputs.reference,
            self._output_file(cwd, self.inputs.in_file, "_resampled"),
            **self._options("transform", "interpolation", "is_mask"),
        )
