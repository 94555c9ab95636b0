"""Interfaces of the dipole inversions: single orientation (TKD, TSVD, CFL2, NDI, STAR-QSM,
ISDU-QSMNet) and multi-orientation COSMOS.

Units: local fields and susceptibility in ppm; B0 directions are unit vectors in the array
axes of the grid the fields live on (taken from the NIfTI affine for a single orientation).

ISDU-QSMNet (``method="isdu"``) takes the options of
:func:`qsmflow.models.inference.invert_isdu`: ``weights`` (checkpoint file; default the shipped
one, qsmflow/data/isdu_default.pt), ``iterations`` (K), ``shared_weights``, ``device`` (auto, cpu,
cuda), ``tile_size``, ``halo``. Threads: torch uses ``$QSMFLOW_TORCH_THREADS`` or else
``$OMP_NUM_THREADS`` threads when either is set (``qsmflow run --plugin MultiProc`` sets
OMP_NUM_THREADS=1 for its workers, so every node uses one), torch's default otherwise.
"""

from __future__ import annotations

import os

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)


class _DipoleInversionInputSpec(BaseInterfaceInputSpec):
    local_field = File(exists=True, mandatory=True, desc="local field, ppm of B0")
    mask = File(exists=True, mandatory=True, desc="mask of valid local-field voxels")
    method = traits.Enum("tkd", "tsvd", "cfl2", "ndi", "star", "isdu", usedefault=True)
    options = traits.Dict(traits.Str, traits.Any, usedefault=True, desc="method keywords")


class _DipoleInversionOutputSpec(TraitedSpec):
    chi = File(exists=True, desc="susceptibility, ppm, 0 outside the mask")
    b0_dir = traits.List(traits.Float, desc="B0 direction used (array axes)")


class DipoleInversion(SimpleInterface):
    """Single-orientation inversion (physics.inversion.invert, or the ISDU-QSMNet network for
    ``method="isdu"``); B0 direction from the affine."""

    input_spec = _DipoleInversionInputSpec
    output_spec = _DipoleInversionOutputSpec

    def _run_interface(self, runtime):
        from ..io.nifti import load_volume, save_volume
        from ..physics.inversion import invert
        from ..physics.validation import check_finite, check_mask

        fvol = load_volume(self.inputs.local_field, ndim=3)
        mvol = load_volume(self.inputs.mask, ndim=3)
        mask = check_mask(mvol.data, fvol.data.shape, mvol.path)
        field = check_finite(fvol.data, "local field", fvol.path, mask)
        b0 = fvol.b0_dir
        options = dict(self.inputs.options)
        extra = {}
        if self.inputs.method == "isdu":
            from ..config import check_isdu_options
            from ..models.inference import apply_thread_env, invert_isdu, isdu_sidecar

            apply_thread_env()
            chi, info = invert_isdu(field, mask, fvol.voxel_size, b0, **check_isdu_options(options))
            extra = isdu_sidecar(info)
        else:
            chi = invert(self.inputs.method, field, mask, fvol.voxel_size, b0, **options)
        meta = {
            "Units": "ppm",
            "InversionMethod": self.inputs.method,
            "InversionOptions": options,
            "B0Direction": [float(x) for x in b0],
            **extra,
        }
        out = os.path.join(runtime.cwd, f"chi_{self.inputs.method}.nii.gz")
        self._results["chi"] = str(save_volume(out, chi, fvol.affine, sidecar=meta))
        self._results["b0_dir"] = [float(x) for x in b0]
        return runtime


class _CosmosInputSpec(BaseInterfaceInputSpec):
    local_fields = InputMultiObject(
        File(exists=True), mandatory=True, desc="local fields (ppm), all on the reference grid"
    )
    masks = InputMultiObject(
        File(exists=True), mandatory=True, desc="each field's valid mask on the reference grid"
    )
    b0_dirs = traits.List(
        traits.Float,
        mandatory=True,
        desc="B0 direction per field in reference array axes, flattened (3 numbers each)",
    )
    method = traits.Enum("lsq", "closed", usedefault=True)
    lam = traits.Either(None, traits.Float, usedefault=True, desc="regularisation (None: default)")
    iterations = traits.Int(30, usedefault=True, desc="PCG iterations (lsq)")


class _CosmosOutputSpec(TraitedSpec):
    chi = File(exists=True, desc="COSMOS susceptibility (ppm) on the reference grid")
    mask = File(exists=True, desc="intersection of the orientations' masks (uint8)")


class Cosmos(SimpleInterface):
    """COSMOS (physics.cosmos.cosmos) inside the intersection of the masks."""

    input_spec = _CosmosInputSpec
    output_spec = _CosmosOutputSpec

    def _run_interface(self, runtime):
        from ..errors import QSMInputError
        from ..io.nifti import load_volume, save_volume
        from ..physics.cosmos import cosmos
        from ..physics.validation import check_mask, check_same_grid

        fields = [load_volume(f, ndim=3) for f in self.inputs.local_fields]
        masks = [load_volume(f, ndim=3) for f in self.inputs.masks]
        dirs = np.asarray(self.inputs.b0_dirs, dtype=np.float64)
        if dirs.size % 3:
            raise QSMInputError(f"b0_dirs must hold 3 numbers per orientation, got {dirs.size}")
        dirs = dirs.reshape(-1, 3)
        if not len(fields) == len(masks) == len(dirs) or len(fields) < 2:
            raise QSMInputError(
                f"COSMOS needs >= 2 orientations with one mask and one B0 direction each; got "
                f"{len(fields)} fields, {len(masks)} masks, {len(dirs)} directions"
            )
        ref = fields[0]
        common = np.ones(ref.data.shape, dtype=bool)
        for f, m in zip(fields, masks, strict=True):
            check_same_grid(f.data.shape, ref.data.shape, "COSMOS fields", f.path)
            common &= m.data > 0.5
        common = check_mask(common, ref.data.shape, masks[0].path, name="common COSMOS mask")
        lam = self.inputs.lam
        chi = cosmos(
            np.stack([f.data for f in fields]),
            dirs,
            ref.voxel_size,
            common,
            method=self.inputs.method,
            lam=lam,
            iterations=self.inputs.iterations,
        )
        meta = {
            "Units": "ppm",
            "InversionMethod": "COSMOS",
            "CosmosSolver": self.inputs.method,
            "Regularisation": lam,
            "B0Directions": dirs.tolist(),
            "NumberOfOrientations": len(fields),
        }
        out = os.path.join(runtime.cwd, "chi_cosmos.nii.gz")
        self._results["chi"] = str(save_volume(out, chi, ref.affine, sidecar=meta))
        self._results["mask"] = str(
            save_volume(
                os.path.join(runtime.cwd, "cosmos_mask.nii.gz"),
                common.astype(np.uint8),
                ref.affine,
                dtype=np.uint8,
            )
        )
        return runtime


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
        from nipype.interfaces.base import isdefined

        from ..io.nifti import load_volume

        if isdefined(self.inputs.transform):
            from .registration import b0_in_reference

            b0 = b0_in_reference(self.inputs.transform, self.inputs.in_file, self.inputs.reference)
        else:
            b0 = load_volume(self.inputs.in_file, ndim=None).b0_dir
        self._results["b0_dir"] = [float(x) for x in b0]
        return runtime
