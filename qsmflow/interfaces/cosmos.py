"""Multi-orientation interfaces: thin adapters around :func:`qsmflow.steps.cosmos.cosmos_files`
and :func:`qsmflow.steps.registration.b0_direction`.

B0 directions travel as a list of 3-lists, one unit vector per orientation, in the array axes of
the reference grid. Unset traits take the step's defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from ..physics.cosmos import COSMOS_METHODS
from ..steps import StepResult
from . import StepInterface, step_options


class _CosmosInputSpec(BaseInterfaceInputSpec):
    local_fields = InputMultiObject(
        File(exists=True), mandatory=True, desc="local fields (ppm), all on the reference grid"
    )
    masks = InputMultiObject(
        File(exists=True), mandatory=True, desc="each field's valid mask on the reference grid"
    )
    b0_dirs = traits.List(
        traits.List(traits.Float, minlen=3, maxlen=3),
        mandatory=True,
        desc="B0 direction of each field in the reference array axes (one 3-list each)",
    )
    method = traits.Enum(*COSMOS_METHODS, desc="COSMOS solver (default lsq)")
    lam = traits.Either(None, traits.Float, desc="regularisation (None: the solver's default)")
    iterations = traits.Int(desc="PCG iterations (lsq; default 30)")


class _CosmosOutputSpec(TraitedSpec):
    chi = File(exists=True, desc="COSMOS susceptibility (ppm) on the reference grid")
    mask = File(exists=True, desc="intersection of the orientations' masks (uint8)")


class Cosmos(StepInterface):
    """COSMOS inside the intersection of the masks (:func:`qsmflow.steps.cosmos.cosmos_files`)."""

    input_spec = _CosmosInputSpec
    output_spec = _CosmosOutputSpec
    _files: ClassVar[dict[str, str]] = {"chi": "chi", "mask": "mask"}

    def _run_step(self, cwd: Path) -> StepResult:
        from ..steps.cosmos import cosmos_files

        return cosmos_files(
            self.inputs.local_fields,
            self.inputs.masks,
            cwd / "chi_cosmos.nii.gz",
            cwd / "cosmos_mask.nii.gz",
            **self._options("b0_dirs", "method", "lam", "iterations"),
        )


class _B0DirectionInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="image of the orientation (its affine)")
    transform = File(exists=True, desc="rigid transform to the reference (RigidRegistration)")
    reference = File(exists=True, desc="reference-orientation image (with transform)")


class _B0DirectionOutputSpec(TraitedSpec):
    b0_dir = traits.List(traits.Float, desc="unit B0 direction in the target grid's array axes")


class B0Direction(SimpleInterface):
    """B0 direction of an orientation: in its own array axes (from its affine), or, with
    ``transform`` and ``reference``, rotated into the reference grid's array axes."""

    input_spec = _B0DirectionInputSpec
    output_spec = _B0DirectionOutputSpec

    def _run_interface(self, runtime):
        from ..steps.registration import b0_direction

        options = step_options(self.inputs, "transform", "reference")
        self._results["b0_dir"] = b0_direction(self.inputs.in_file, **options)
        return runtime
