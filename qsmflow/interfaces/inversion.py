"""Nipype interface of the single-orientation dipole inversion (TKD, TSVD, CFL2, NDI,
STAR-QSM, TV, ISDU-QSMNet and the other networks of :mod:`qsmflow.models.registry`): a thin
adapter around :func:`qsmflow.steps.inversion.invert_file` (COSMOS:
:mod:`qsmflow.interfaces.cosmos`).

Units: local fields and susceptibility in ppm; the B0 direction is a unit vector in the array
axes, taken from the NIfTI affine.

The networks (``method="isdu"``, ``"spinet"``, ``"lpcnn"``, ``"qsmnet"``, ...) take the options
of :func:`qsmflow.models.inference.invert_network`: ``weights`` (checkpoint file; isdu's default
is the shipped one, qsmflow/data/isdu_default.pt), ``iterations`` (K), ``shared_weights``,
``device`` (auto, cpu, cuda), ``tile_size``, ``halo``, ``check_geometry``. Threads: torch uses
``$QSMFLOW_TORCH_THREADS`` or else ``$OMP_NUM_THREADS`` threads when either is set (``qsmflow
run --plugin MultiProc`` sets OMP_NUM_THREADS=1 for its workers, so every node uses one),
torch's default otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from nipype.interfaces.base import BaseInterfaceInputSpec, File, TraitedSpec, traits

from ..steps import StepResult
from ..steps.inversion import INVERSION_METHODS
from . import StepInterface


class _DipoleInversionInputSpec(BaseInterfaceInputSpec):
    local_field = File(exists=True, mandatory=True, desc="local field, ppm of B0")
    mask = File(exists=True, mandatory=True, desc="mask of valid local-field voxels")
    method = traits.Enum(*INVERSION_METHODS, usedefault=True, desc="inversion method")
    options = traits.Dict(traits.Str, traits.Any, desc="the method's keyword options")
    weights_image = File(
        exists=True,
        desc="ndi / tv: the magnitude (3-D or 4-D): ndi data weights, tv edge weights",
    )


class _DipoleInversionOutputSpec(TraitedSpec):
    chi = File(exists=True, desc="susceptibility, ppm, 0 outside the mask")
    b0_dir = traits.List(traits.Float, desc="B0 direction used (array axes)")


class DipoleInversion(StepInterface):
    """Single-orientation inversion, B0 direction from the affine
    (:func:`qsmflow.steps.inversion.invert_file`)."""

    input_spec = _DipoleInversionInputSpec
    output_spec = _DipoleInversionOutputSpec
    _files: ClassVar[dict[str, str]] = {"chi": "chi"}
    _values: ClassVar[dict[str, str]] = {"b0_dir": "b0_dir"}

    def _run_step(self, cwd: Path) -> StepResult:
        from ..steps.inversion import invert_file

        method = self.inputs.method
        return invert_file(
            self.inputs.local_field,
            self.inputs.mask,
            cwd / f"chi_{method}.nii.gz",
            method=method,
            **self._options("options", "weights_image"),
        )
