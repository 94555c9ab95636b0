"""Interfaces of the per-run field-map steps: echo stacking with phase scaling, multi-echo fit
(with spatial unwrapping), V-SHARP background removal.

Each interface reads NIfTI files, calls one function of :mod:`qsmflow.physics` and writes its
result (atomically) into the node's working directory. Units: phase in rad, echo times in
seconds, field maps in Hz, local fields in ppm of B0, B0 in tesla.
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
    isdefined,
    traits,
)


def _out(runtime, name: str) -> str:
    return os.path.join(runtime.cwd, name)


class _MergeEchoesInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(
        File(exists=True), mandatory=True, desc="one 3-D NIfTI per echo, in echo order"
    )
    kind = traits.Enum("magnitude", "phase", mandatory=True, desc="what the images hold")
    phase_units = traits.Enum(
        "auto", "rad", "siemens", "siemens-raw", usedefault=True, desc="units of phase input"
    )


class _MergeEchoesOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="4-D image, echoes along axis 4 (phase in rad)")
    first_echo = File(exists=True, desc="3-D image of the first echo (phase in rad)")
    units = traits.Str(desc="units found in the input (rad, siemens, siemens-raw, or a.u.)")


class MergeEchoes(SimpleInterface):
    """Stack per-echo images into one 4-D image; phase is scaled to radians.

    Every echo must be 3-D and on the grid of the first (shape and affine); phase must be in
    radians or Siemens units (checked per file, the error names the file).
    """

    input_spec = _MergeEchoesInputSpec
    output_spec = _MergeEchoesOutputSpec

    def _run_interface(self, runtime):
        from ..errors import QSMInputError
        from ..io.nifti import load_volume, save_volume
        from ..physics.validation import check_same_grid, phase_to_radians

        vols = [load_volume(f, ndim=3) for f in self.inputs.in_files]
        units = "a.u."
        data = []
        for v in vols:
            check_same_grid(v.data.shape, vols[0].data.shape, "echo grids", v.path)
            if not np.allclose(v.affine, vols[0].affine, atol=1e-4):
                raise QSMInputError(
                    f"affine differs from the first echo's ({vols[0].path})", v.path
                )
            if self.inputs.kind == "phase":
                arr, units = phase_to_radians(v.data, v.path, units=self.inputs.phase_units)
            else:
                arr = v.data
            data.append(np.asarray(arr, dtype=np.float32))
        stack = np.stack(data, axis=-1)
        kind = self.inputs.kind
        self._results["out_file"] = str(
            save_volume(_out(runtime, f"{kind}.nii.gz"), stack, vols[0].affine)
        )
        self._results["first_echo"] = str(
            save_volume(_out(runtime, f"{kind}_echo1.nii.gz"), stack[..., 0], vols[0].affine)
        )
        self._results["units"] = units
        return runtime


class _MultiEchoFieldInputSpec(BaseInterfaceInputSpec):
    phase = File(exists=True, mandatory=True, desc="4-D phase in rad (echoes last)")
    magnitude = File(exists=True, desc="4-D magnitude (fit weights)")
    mask = File(exists=True, mandatory=True, desc="brain mask (3-D)")
    echo_times = traits.List(traits.Float, mandatory=True, desc="echo times in seconds")
    method = traits.Enum("laplacian", "lsq", "temporal", usedefault=True, desc="unwrapping")


class _MultiEchoFieldOutputSpec(TraitedSpec):
    field_hz = File(exists=True, desc="total field in Hz, 0 outside the mask")
    offset_rad = File(exists=True, desc="fitted phase offset at TE = 0, rad")


class MultiEchoField(SimpleInterface):
    """Spatially unwrap every echo and fit the field map (Hz): physics.multiecho_field."""

    input_spec = _MultiEchoFieldInputSpec
    output_spec = _MultiEchoFieldOutputSpec

    def _run_interface(self, runtime):
        from ..io.nifti import load_volume, save_volume
        from ..physics.multiecho import check_echo_times, multiecho_field
        from ..physics.validation import check_mask, check_same_grid

        ph = load_volume(self.inputs.phase, ndim=None)
        phase = ph.data if ph.data.ndim == 4 else ph.data[..., None]
        magnitude = None
        if isdefined(self.inputs.magnitude):
            mag = load_volume(self.inputs.magnitude, ndim=None)
            magnitude = mag.data if mag.data.ndim == 4 else mag.data[..., None]
            check_same_grid(magnitude.shape, phase.shape, "magnitude vs phase", mag.path)
        mvol = load_volume(self.inputs.mask, ndim=3)
        mask = check_mask(mvol.data, phase.shape[:3], mvol.path)
        te = check_echo_times(self.inputs.echo_times, phase.shape[3])
        field, offset = multiecho_field(
            phase, magnitude, te, ph.voxel_size, mask, method=self.inputs.method
        )
        meta = {"Units": "Hz", "EchoTime": te.tolist(), "UnwrappingMethod": self.inputs.method}
        self._results["field_hz"] = str(
            save_volume(_out(runtime, "field_hz.nii.gz"), field, ph.affine, sidecar=meta)
        )
        self._results["offset_rad"] = str(
            save_volume(_out(runtime, "offset_rad.nii.gz"), offset, ph.affine)
        )
        return runtime


class _BackgroundRemovalInputSpec(BaseInterfaceInputSpec):
    field_hz = File(exists=True, mandatory=True, desc="total field (Hz)")
    mask = File(exists=True, mandatory=True, desc="brain mask")
    field_strength = traits.Float(mandatory=True, desc="B0 in tesla (Hz -> ppm)")
    radii_mm = traits.Either(None, traits.List(traits.Float), usedefault=True, desc="SMV radii")
    threshold = traits.Float(0.05, usedefault=True, desc="deconvolution threshold")
    deconvolution = traits.Enum("per_radius", "largest", usedefault=True)


class _BackgroundRemovalOutputSpec(TraitedSpec):
    local_ppm = File(exists=True, desc="local field in ppm of B0, 0 outside the eroded mask")
    eroded_mask = File(exists=True, desc="mask of valid local-field voxels (uint8)")
    radii_mm = traits.List(traits.Float, desc="radii used, mm, largest first")


class BackgroundRemoval(SimpleInterface):
    """V-SHARP (physics.bgremove.vsharp) of a field in Hz; output converted to ppm."""

    input_spec = _BackgroundRemovalInputSpec
    output_spec = _BackgroundRemovalOutputSpec

    def _run_interface(self, runtime):
        from ..io.nifti import load_volume, save_volume
        from ..physics.bgremove import DEFAULT_RADII_MM, sphere_voxel_count, vsharp
        from ..physics.units import hz_to_ppm
        from ..physics.validation import check_mask

        fvol = load_volume(self.inputs.field_hz, ndim=3)
        mvol = load_volume(self.inputs.mask, ndim=3)
        mask = check_mask(mvol.data, fvol.data.shape, mvol.path)
        radii = self.inputs.radii_mm
        local, eroded = vsharp(
            fvol.data,
            mask,
            fvol.voxel_size,
            radii_mm=radii,
            threshold=self.inputs.threshold,
            deconvolution=self.inputs.deconvolution,
        )
        local = hz_to_ppm(local, self.inputs.field_strength).astype(np.float32)
        used = radii or [r for r in DEFAULT_RADII_MM if sphere_voxel_count(r, fvol.voxel_size) > 1]
        used = sorted({float(r) for r in used}, reverse=True)
        meta = {
            "Units": "ppm",
            "BackgroundFieldRemoval": "V-SHARP" if len(used) > 1 else "SHARP",
            "RadiiMM": used,
            "Threshold": self.inputs.threshold,
            "Deconvolution": self.inputs.deconvolution,
            "MagneticFieldStrength": self.inputs.field_strength,
        }
        self._results["local_ppm"] = str(
            save_volume(_out(runtime, "local_ppm.nii.gz"), local, fvol.affine, sidecar=meta)
        )
        self._results["eroded_mask"] = str(
            save_volume(
                _out(runtime, "eroded_mask.nii.gz"),
                eroded.astype(np.uint8),
                fvol.affine,
                dtype=np.uint8,
            )
        )
        self._results["radii_mm"] = used
        return runtime
