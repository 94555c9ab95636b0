"""Per-run preprocessing: multi-echo phase and magnitude -> local field in ppm."""

from __future__ import annotations

from collections.abc import Sequence

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.field import BackgroundRemoval, MergeEchoes, MultiEchoField
from ..interfaces.masking import BrainMask


def init_fieldmap_wf(
    *,
    echo_times: Sequence[float],
    field_strength: float,
    mask_backend: str = "auto",
    mask_frac: float = 0.5,
    phase_units: str = "auto",
    unwrapping: str = "auto",
    radii_mm: Sequence[float] | None = None,
    threshold: float = 0.05,
    deconvolution: str = "per_radius",
    name: str = "fieldmap_wf",
) -> pe.Workflow:
    """Build the per-run field-map workflow.

    Steps: stack echoes (phase scaled to rad) -> brain mask from the first-echo magnitude
    (FSL BET or the Python backend) -> multi-echo fit with spatial unwrapping (field in Hz)
    -> V-SHARP (local field in ppm of B0 and its eroded mask).

    Parameters
    ----------
    echo_times : echo times in seconds, one per echo, increasing.
    field_strength : B0 in tesla.
    mask_backend : ``"auto"``, ``"fsl"`` or ``"python"``.
    mask_frac : BET fractional intensity threshold (FSL only).
    phase_units : ``"auto"``, ``"rad"``, ``"siemens"`` or ``"siemens-raw"``.
    unwrapping : ``"auto"`` (``"temporal"`` with two or more echoes, else ``"laplacian"``),
        ``"laplacian"``, ``"lsq"`` or ``"temporal"``. Temporal unwrapping is the default for
        multi-echo data because it is far more accurate on noisy data with a receiver phase
        offset: on the 2 mm head-model simulation (SNR 100, 4 echoes, python brain mask) the
        V-SHARP local field's NRMSE against the truth is 60 % with it and 103 % with
        per-echo Laplacian unwrapping (the bound with the true total field is 59 %).
    radii_mm, threshold, deconvolution : V-SHARP settings (None radii: 12..1 mm).

    Inputs
    ------
    phase_files, magnitude_files : one 3-D NIfTI per echo, in echo order.

    Outputs
    -------
    magnitude : 4-D magnitude; magnitude_echo1 : 3-D first echo; brain_mask; field_hz;
    local_field : ppm; local_mask : eroded mask; mask_backend : backend that made the mask.
    """
    if unwrapping == "auto":
        unwrapping = "temporal" if len(echo_times) > 1 else "laplacian"
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
            field_strength=field_strength,
            radii_mm=None if radii_mm is None else list(radii_mm),
            threshold=threshold,
            deconvolution=deconvolution,
        ),
        name="vsharp",
    )
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
