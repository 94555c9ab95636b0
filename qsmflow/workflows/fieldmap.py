"""Per-run preprocessing: multi-echo phase and magnitude -> local field in ppm."""

from __future__ import annotations

from collections.abc import Sequence

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.fieldmap import BackgroundRemoval, MergeEchoes, MultiEchoField
from ..interfaces.masking import BrainMask
from ..physics.bgremove import DECONVOLUTIONS, DEFAULT_THRESHOLD


def init_fieldmap_wf(
    *,
    echo_times: Sequence[float],
    field_strength: float,
    mask_backend: str = "auto",
    mask_frac: float = 0.5,
    phase_units: str = "auto",
    unwrapping: str = "auto",
    radii_mm: Sequence[float] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    deconvolution: str = DECONVOLUTIONS[0],
    name: str = "fieldmap_wf",
) -> pe.Workflow:
    """Build the per-run field-map workflow.

    Stacks the echoes (phase scaled to rad), makes a brain mask from the first-echo magnitude
    (FSL BET or the Python backend), fits the field in Hz from all echoes with spatial
    unwrapping, and removes the background field with V-SHARP, giving the local field in ppm
    of B0 and its eroded mask. Choices such as ``"auto"`` are resolved by the steps, which
    record the effective values in the sidecars.

    Parameters
    ----------
    echo_times : sequence of float
        Echo times, seconds, one per echo, increasing.
    field_strength : float
        B0, tesla.
    mask_backend : str
        ``"auto"``, ``"fsl"`` or ``"python"`` (see :data:`qsmflow.backends.BACKENDS`).
    mask_frac : float
        BET fractional intensity threshold (FSL only).
    phase_units : str
        One of :data:`qsmflow.physics.validation.PHASE_UNITS`.
    unwrapping : str
        One of :data:`qsmflow.physics.multiecho.UNWRAPPING_METHODS`; ``"auto"`` is temporal
        with two or more echoes, else laplacian.
    radii_mm : sequence of float or None
        V-SHARP radii, mm; None: 12..1 mm less single-voxel spheres.
    threshold : float
        V-SHARP deconvolution threshold.
    deconvolution : str
        One of :data:`qsmflow.physics.bgremove.DECONVOLUTIONS`.
    name : str
        Workflow name.

    Inputs
    ------
    phase_files
        One 3-D NIfTI per echo, in echo order.
    magnitude_files
        One 3-D NIfTI per echo, in echo order.

    Outputs
    -------
    magnitude
        4-D magnitude, echoes last.
    magnitude_echo1
        3-D first-echo magnitude.
    brain_mask
        Brain mask (uint8).
    field_hz
        Total field, Hz.
    local_field
        Local field, ppm of B0.
    local_mask
        Eroded mask of valid local-field voxels (uint8).
    mask_backend
        Backend that made the brain mask.
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["phase_files", "magnitude_files"]), name="inputnode"
    )
    outputnode = pe.Node(
        niu.IdentityInterface(
            fields=[
                "magnitude",
                "magnitude_echo1",
                "brain_mask",
                "field_hz",
                "local_field",
                "local_mask",
                "mask_backend",
            ]
        ),
        name="outputnode",
    )
    merge_phase = pe.Node(MergeEchoes(kind="phase", phase_units=phase_units), name="merge_phase")
    merge_mag = pe.Node(MergeEchoes(kind="magnitude"), name="merge_magnitude")
    brain_mask = pe.Node(BrainMask(backend=mask_backend, frac=mask_frac), name="brain_mask")
    fit = pe.Node(
        MultiEchoField(echo_times=list(echo_times), method=unwrapping), name="multiecho_field"
    )
    bgremove = pe.Node(
        BackgroundRemoval(
            field_strength=field_strength, threshold=threshold, deconvolution=deconvolution
        ),
        name="vsharp",
    )
    if radii_mm is not None:
        bgremove.inputs.radii_mm = list(radii_mm)
    # fmt: off
    wf.connect([
        (inputnode, merge_phase, [("phase_files", "in_files")]),
        (inputnode, merge_mag, [("magnitude_files", "in_files")]),
        (merge_mag, brain_mask, [("first_echo", "magnitude")]),
        (merge_phase, fit, [("out_file", "phase")]),
        (merge_mag, fit, [("out_file", "magnitude")]),
        (brain_mask, fit, [("mask_file", "mask")]),
        (fit, bgremove, [("field_hz", "field_hz")]),
        (brain_mask, bgremove, [("mask_file", "mask")]),
        (merge_mag, outputnode, [("out_file", "magnitude"), ("first_echo", "magnitude_echo1")]),
        (brain_mask, outputnode, [("mask_file", "brain_mask"), ("backend", "mask_backend")]),
        (fit, outputnode, [("field_hz", "field_hz")]),
        (bgremove, outputnode, [("local_ppm", "local_field"), ("eroded_mask", "local_mask")]),
    ])
    # fmt: on
    return wf
