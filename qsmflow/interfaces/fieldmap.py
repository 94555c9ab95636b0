"""Nipype interfaces of the per-run field-map steps (:mod:`qsmflow.steps.fieldmap`,
:mod:`qsmflow.steps.bgremove`): echo stacking with phase scaling, multi-echo fit with spatial
unwrapping, V-SHARP background removal.

Each interface only translates its traits to the step function, which writes into the node's
working directory; an undefined optional trait means the step's default. Units: phase in rad,
echo times in seconds, field maps in Hz, local fields in ppm of B0, B0 in tesla.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    TraitedSpec,
    traits,
)

from ..physics.bgremove import DECONVOLUTIONS
from ..physics.multiecho import UNWRAPPING_METHODS
from ..physics.validation import PHASE_UNITS
from ..steps import StepResult
from ..steps.fieldmap import ECHO_KINDS
from . import StepInterface


class _MergeEchoesInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(
        File(exists=True), mandatory=True, desc="one 3-D NIfTI per echo, in echo order"
    )
    kind = traits.Enum(*ECHO_KINDS, mandatory=True, desc="what the images hold")
    phase_units = traits.Enum(*PHASE_UNITS, desc="units of phase input (default auto)")


class _MergeEchoesOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="4-D image, echoes along axis 4 (phase in rad)")
    first_echo = File(exists=True, desc="3-D image of the first echo (phase in rad)")
    units = traits.Str(desc="units found in the input (rad, siemens, siemens-raw, or a.u.)")


class MergeEchoes(StepInterface):
    """Stack per-echo images into one 4-D image, phase scaled to radians
    (:func:`qsmflow.steps.fieldmap.merge_echoes`)."""

    input_spec = _MergeEchoesInputSpec
    output_spec = _MergeEchoesOutputSpec
    _files: ClassVar[dict[str, str]] = {"out_file": "merged", "first_echo": "first_echo"}
    _values: ClassVar[dict[str, str]] = {"units": "units"}

    def _run_step(self, cwd: Path) -> StepResult:
        from ..steps.fieldmap import merge_echoes

        kind = self.inputs.kind
        return merge_echoes(
            self.inputs.in_files,
            cwd / f"{kind}.nii.gz",
            kind=kind,
            first_echo_output=cwd / f"{kind}_echo1.nii.gz",
            **self._options("phase_units"),
        )


class _MultiEchoFieldInputSpec(BaseInterfaceInputSpec):
    phase = File(exists=True, mandatory=True, desc="4-D phase in rad (echoes last)")
    magnitude = File(exists=True, desc="4-D magnitude (fit weights)")
    mask = File(exists=True, mandatory=True, desc="brain mask (3-D)")
    echo_times = traits.List(traits.Float, mandatory=True, desc="echo times in seconds")
    method = traits.Enum(*UNWRAPPING_METHODS, desc="unwrapping (default auto)")


class _MultiEchoFieldOutputSpec(TraitedSpec):
    field_hz = File(exists=True, desc="total field in Hz, 0 outside the mask")
    offset_rad = File(exists=True, desc="fitted phase offset at TE = 0, rad")
    method = traits.Str(desc="unwrapping method used (auto resolved)")


class MultiEchoField(StepInterface):
    """Spatially unwrap every echo and fit the field map in Hz
    (:func:`qsmflow.steps.fieldmap.fit_field`)."""

    input_spec = _MultiEchoFieldInputSpec
    output_spec = _MultiEchoFieldOutputSpec
    _files: ClassVar[dict[str, str]] = {"field_hz": "field_hz", "offset_rad": "offset_rad"}
    _values: ClassVar[dict[str, str]] = {"method": "unwrapping"}

    def _run_step(self, cwd: Path) -> StepResult:
        from ..steps.fieldmap import fit_field

        return fit_field(
            self.inputs.phase,
            cwd / "field_hz.nii.gz",
            echo_times=self.inputs.echo_times,
            mask=self.inputs.mask,
            offset_output=cwd / "offset_rad.nii.gz",
            **self._options("magnitude", "method"),
        )


class _BackgroundRemovalInputSpec(BaseInterfaceInputSpec):
    field_hz = File(exists=True, mandatory=True, desc="total field (Hz)")
    mask = File(exists=True, mandatory=True, desc="brain mask")
    field_strength = traits.Float(mandatory=True, desc="B0 in tesla (Hz -> ppm)")
    radii_mm = traits.List(traits.Float, desc="SMV radii, mm (default 12..1 mm)")
    threshold = traits.Float(desc="deconvolution threshold (default 0.05)")
    deconvolution = traits.Enum(*DECONVOLUTIONS, desc="V-SHARP variant (default per_radius)")


class _BackgroundRemovalOutputSpec(TraitedSpec):
    local_ppm = File(exists=True, desc="local field in ppm of B0, 0 outside the eroded mask")
    eroded_mask = File(exists=True, desc="mask of valid local-field voxels (uint8)")
    radii_mm = traits.List(traits.Float, desc="radii used, mm, largest first")


class BackgroundRemoval(StepInterface):
    """V-SHARP of a field in Hz, output in ppm (:func:`qsmflow.steps.bgremove.vsharp_file`)."""

    input_spec = _BackgroundRemovalInputSpec
    output_spec = _BackgroundRemovalOutputSpec
    _files: ClassVar[dict[str, str]] = {"local_ppm": "local_field", "eroded_mask": "eroded_mask"}
    _values: ClassVar[dict[str, str]] = {"radii_mm": "radii_mm"}

    def _run_step(self, cwd: Path) -> StepResult:
        from ..steps.bgremove import vsharp_file

        return vsharp_file(
            self.inputs.field_hz,
            self.inputs.mask,
            cwd / "local_ppm.nii.gz",
            field_strength=self.inputs.field_strength,
            eroded_mask_output=cwd / "eroded_mask.nii.gz",
            **self._options("radii_mm", "threshold", "deconvolution"),
        )
