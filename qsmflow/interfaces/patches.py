"""Interface of the training-patches step (:func:`qsmflow.steps.patches.training_patches`)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    InputMultiObject,
    TraitedSpec,
    traits,
)

from ..steps import StepResult
from ..training.patch_grid import MIN_MASK_FRACTION, PATCH_SIZE, STRIDE
from . import StepInterface


class _TrainingPatchesInputSpec(BaseInterfaceInputSpec):
    local_fields = InputMultiObject(
        File(exists=True), mandatory=True, desc="every orientation's local field (ppm), ref grid"
    )
    chi = File(exists=True, mandatory=True, desc="COSMOS susceptibility (ppm), reference grid")
    mask = File(exists=True, mandatory=True, desc="COSMOS mask")
    b0_dirs = traits.List(
        traits.List(traits.Float), mandatory=True, desc="one unit 3-vector per orientation"
    )
    patch_size = traits.Int(PATCH_SIZE, usedefault=True, desc="patch edge, voxels")
    stride = traits.Int(STRIDE, usedefault=True, desc="grid step, voxels")
    min_mask_fraction = traits.Float(MIN_MASK_FRACTION, usedefault=True)
    source_files = InputMultiObject(traits.Str, desc="inputs recorded as Sources in patches.json")


class _TrainingPatchesOutputSpec(TraitedSpec):
    out_dir = Directory(exists=True, desc="patch set folder")
    count = traits.Int(desc="number of patches (all orientations)")


class TrainingPatches(StepInterface):
    """Cut training pairs (local field, COSMOS chi, mask, B0 direction) into cubic patches."""

    input_spec = _TrainingPatchesInputSpec
    output_spec = _TrainingPatchesOutputSpec
    _files: ClassVar[dict[str, str]] = {"out_dir": "patches"}
    _values: ClassVar[dict[str, str]] = {"count": "count"}

    def _run_step(self, cwd: Path) -> StepResult:
        from ..steps.patches import training_patches

        return training_patches(
            self.inputs.local_fields,
            self.inputs.chi,
            self.inputs.mask,
            self.inputs.b0_dirs,
            cwd / "patches",
            **self._options("patch_size", "stride", "min_mask_fraction", "source_files"),
            overwrite=True,  # the node's own working folder: a rerun replaces its set
        )
