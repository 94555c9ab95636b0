"""Multi-orientation COSMOS: register every head orientation to the reference, bring its
local field and B0 direction into the reference frame, invert all together."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.cosmos import B0Direction, Cosmos
from ..interfaces.registration import ResampleToReference, RigidRegistration
from ..io.bids import MIN_ORIENTATIONS
from ..physics.cosmos import COSMOS_ITERATIONS


def init_cosmos_wf(
    *,
    n_orientations: int,
    registration_backend: str = "auto",
    method: str = "lsq",
    lam: float | None = None,
    iterations: int = COSMOS_ITERATIONS,
    name: str = "cosmos_wf",
) -> pe.Workflow:
    """Register the head orientations to the first one and invert their local fields together.

    Orientation 0 is the reference: its grid is the output grid. The input lists are split
    into one item per orientation (``split_*``). For each other orientation ``i`` the
    first-echo magnitude is rigidly registered to the reference magnitude (``register_i``;
    whole images: the scalp, skull and head outline carry most of the alignment information,
    and restricting the metric to the brain masks lost a 21 degree rotation on the simulated
    head), its local field (``resample_field_i``, linear) and its mask (``resample_mask_i``,
    linear then > 0.5) are resampled onto the reference grid, and its B0 direction is rotated
    into the reference array axes (``b0_i``). ``cosmos`` then runs in the intersection of all
    masks. Options the steps resolve (defaults, "auto") are passed through unchanged.

    Parameters
    ----------
    n_orientations : int
        Number of head orientations, at least ``MIN_ORIENTATIONS["cosmos"]``.
    registration_backend : str
        ``auto``, ``fsl`` (FLIRT) or ``python`` (SimpleITK).
    method : str
        COSMOS solver, ``lsq`` or ``closed``.
    lam : float or None
        Regularisation weight (None: the solver's default).
    iterations : int
        Maximum PCG iterations of ``lsq``.
    name : str
        Workflow name.

    Inputs
    ------
    magnitudes
        One 3-D first-echo magnitude per orientation, reference first.
    local_fields
        One local field per orientation, ppm, reference first.
    local_masks
        One mask of valid local-field voxels per orientation, reference first.

    Outputs
    -------
    chi
        COSMOS susceptibility on the reference grid, ppm.
    mask
        Common mask (intersection of the resampled masks), uint8.
    local_fields_ref
        Every orientation's local field on the reference grid, ppm, reference first.
    masks_ref
        Every orientation's mask on the reference grid, reference first.
    b0_dirs
        One unit B0 direction (a 3-list, reference array axes) per orientation.
    transforms
        qsmflow rigid transforms (reference -> moving world, mm) of orientations 1..N-1.
    fsl_matrices
        The same registrations as FLIRT matrices.
    registration_backend
        Backend that ran (``fsl`` or ``python``).
    """
    n = n_orientations
    if n < MIN_ORIENTATIONS["cosmos"]:
        raise ValueError(f"COSMOS needs at least {MIN_ORIENTATIONS['cosmos']} head orientations")
    wf = pe.Workflow(name=name)
    keys = ("magnitudes", "local_fields", "local_masks")
    inputnode = pe.Node(niu.IdentityInterface(fields=list(keys)), name="inputnode")
    outputnode = pe.Node(
        niu.IdentityInterface(
            fields=[
                "chi",
                "mask",
                "local_fields_ref",
                "masks_ref",
                "b0_dirs",
                "transforms",
                "fsl_matrices",
                "registration_backend",
            ]
        ),
        name="outputnode",
    )
    split = {
        key: pe.Node(niu.Split(splits=[1] * n, squeeze=True), name=f"split_{key}") for key in keys
    }
    merge_fields = pe.Node(niu.Merge(n), name="merge_fields")
    merge_masks = pe.Node(niu.Merge(n), name="merge_masks")
    merge_b0 = pe.Node(niu.Merge(n, no_flatten=True), name="merge_b0")  # one 3-list each
    merge_xfm = pe.Node(niu.Merge(n - 1), name="merge_transforms")
    merge_fsl = pe.Node(niu.Merge(n - 1), name="merge_fsl_matrices")
    cosmos = pe.Node(Cosmos(method=method, lam=lam, iterations=iterations), name="cosmos")
    ref_b0 = pe.Node(B0Direction(), name="b0_0")
    # fmt: off
    wf.connect([
        *[(inputnode, split[key], [(key, "inlist")]) for key in keys],
        (split["local_fields"], ref_b0, [("out1", "in_file")]),
        (split["local_fields"], merge_fields, [("out1", "in1")]),
        (split["local_masks"], merge_masks, [("out1", "in1")]),
        (ref_b0, merge_b0, [("b0_dir", "in1")]),
        (merge_fields, cosmos, [("out", "local_fields")]),
        (merge_masks, cosmos, [("out", "masks")]),
        (merge_b0, cosmos, [("out", "b0_dirs")]),
        (cosmos, outputnode, [("chi", "chi"), ("mask", "mask")]),
        (merge_fields, outputnode, [("out", "local_fields_ref")]),
        (merge_masks, outputnode, [("out", "masks_ref")]),
        (merge_b0, outputnode, [("out", "b0_dirs")]),
        (merge_xfm, outputnode, [("out", "transforms")]),
        (merge_fsl, outputnode, [("out", "fsl_matrices")]),
    ])
    # fmt: on
    for i in range(1, n):
        register = pe.Node(RigidRegistration(backend=registration_backend), name=f"register_{i}")
        field = pe.Node(ResampleToReference(interpolation="linear"), name=f"resample_field_{i}")
        mask = pe.Node(ResampleToReference(is_mask=True), name=f"resample_mask_{i}")
        b0 = pe.Node(B0Direction(), name=f"b0_{i}")
        ori = f"out{i + 1}"
        # fmt: off
        wf.connect([
            (split["magnitudes"], register, [(ori, "moving"), ("out1", "reference")]),
            (split["local_fields"], field, [(ori, "in_file")]),
            (split["local_masks"], mask, [(ori, "in_file")]),
            (split["magnitudes"], field, [("out1", "reference")]),
            (split["magnitudes"], mask, [("out1", "reference")]),
            (register, field, [("transform", "transform")]),
            (register, mask, [("transform", "transform")]),
            (split["local_fields"], b0, [(ori, "in_file")]),
            (split["magnitudes"], b0, [("out1", "reference")]),
            (register, b0, [("transform", "transform")]),
            (field, merge_fields, [("out_file", f"in{i + 1}")]),
            (mask, merge_masks, [("out_file", f"in{i + 1}")]),
            (b0, merge_b0, [("b0_dir", f"in{i + 1}")]),
            (register, merge_xfm, [("transform", f"in{i}")]),
            (register, merge_fsl, [("fsl_matrix", f"in{i}")]),
        ])
        # fmt: on
        if i == 1:
            wf.connect(register, "backend", outputnode, "registration_backend")
    return wf
