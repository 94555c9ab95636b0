"""Interface writing a training patch set (see :mod:`qsmflow.training.patches`)."""

from __future__ import annotations

import os

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)


class _TrainingPatchesInputSpec(BaseInterfaceInputSpec):
    local_fields = InputMultiObject(
        File(exists=True), mandatory=True, desc="every orientation's local field (ppm), ref grid"
    )
    chi = File(exists=True, mandatory=True, desc="COSMOS susceptibility (ppm), reference grid")
    mask = File(exists=True, mandatory=True, desc="COSMOS mask")
    b0_dirs = traits.List(traits.Float, mandatory=True, desc="3 numbers per orientation")
    patch_size = traits.Int(64, usedefault=True)
    stride = traits.Int(32, usedefault=True)
    min_mask_fraction = traits.Float(0.125, usedefault=True)
    source_files = InputMultiObject(traits.Str, desc="inputs, recorded in patches.json")


class _TrainingPatchesOutputSpec(TraitedSpec):
    out_dir = Directory(exists=True, desc="patch set folder")
    count = traits.Int(desc="number of patches (all orientations)")


class TrainingPatches(SimpleInterface):
    """Cut training pairs (local field, COSMOS chi, mask, B0 direction) into cubic patches."""

    input_spec = _TrainingPatchesInputSpec
    output_spec = _TrainingPatchesOutputSpec

    def _run_interface(self, runtime):
        from ..io.nifti import load_volume
        from ..training.patches import write_patch_set

        fields = [load_volume(f, ndim=3) for f in self.inputs.local_fields]
        chi = load_volume(self.inputs.chi, ndim=3)
        mask = load_volume(self.inputs.mask, ndim=3)
        dirs = np.asarray(self.inputs.b0_dirs, dtype=np.float64).reshape(-1, 3)
        sources = (
            {"inputs": list(self.inputs.source_files)}
            if isdefined(self.inputs.source_files)
            else None
        )
        out = os.path.join(runtime.cwd, "patches")
        summary = write_patch_set(
            out,
            field_ppm=[f.data for f in fields],
            chi_ppm=chi.data,
            mask=mask.data > 0.5,
            b0_dirs=dirs,
            voxel_size=chi.voxel_size,
            patch_size=self.inputs.patch_size,
            stride=self.inputs.stride,
            min_mask_fraction=self.inputs.min_mask_fraction,
            sources=sources,
            overwrite=True,
        )
        self._results["out_dir"] = out
        self._results["count"] = int(summary["count"])
        return runtime
