"""Multi-orientation COSMOS: register every head orientation to the reference, bring its
local field and B0 direction into the reference frame, invert all together."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.inversion import B0Direction, Cosmos
from ..interfaces.registration import ResampleToReference, RigidRegistration


def init_cosmos_wf(
    *,
    n_orientations: int,
    registration_backend: str = "auto",
    method: str = "lsq",
    lam: float | None = None,
    iterations: int = 30,
    name: str = "cosmos_wf",
) -> pe.Workflow:
    """Build the COSMOS workflow for ``n_orientations`` (>= 2) head orientations.

    Orientation 0 is the reference: its grid is the output grid. For each other orientation
    the first-echo magnitude is rigidly registered to the reference magnitude (whole images:
    the scalp, skull and head outline carry most of the alignment information; restricting
    the metric to the brain masks lost a 21 degree rotation on the simulated head), its local
    field is resampled (linear) and its eroded mask
    (linear, then > 0.5) into the reference grid, and its B0 direction is rotated into the reference
    array axes. COSMOS then runs in the intersection of all masks.

    Inputs (lists, one item per orientation, reference first)
    ------
    magnitudes : 3-D first-echo magnitudes; local_fields (ppm); local_masks.

    Outputs
    -------
    chi : COSMOS susceptibility (ppm); mask : common mask; local_fields_ref, masks_ref : every
    orientation's local field and mask on the reference grid (reference first); b0_dirs : flat
    list, 3 numbers per orientation; transforms : RigidRegistration transforms of orientations
    1..N-1; fsl_matrices; registration_backend.
    """
    if n_orientations < 2:
        raise ValueError("COSMOS needs at least 2 head orientations")
    n = n_orientations
    wf = pe.Workflow(name=name)
    fields = ["magnitudes", "local_fields", "local_masks"]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
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
    merge_fields = pe.Node(niu.Merge(n), name="merge_fields")
    merge_masks = pe.Node(niu.Merge(n), name="merge_masks")
    merge_b0 = pe.Node(niu.Merge(n), name="merge_b0")  # lists are concatenated: flat
    merge_xfm = pe.Node(niu.Merge(n - 1), name="merge_transforms")
    merge_fsl = pe.Node(niu.Merge(n - 1), name="merge_fsl_matrices")
    cosmos = pe.Node(Cosmos(method=method, lam=lam, iterations=iterations), name="cosmos")

    select = {}
    for key in fields:
        for i in range(n):
            select[key, i] = pe.Node(niu.Select(index=[i]), name=f"select_{key}_{i}")
            wf.connect(inputnode, key, select[key, i], "inlist")

    ref_b0 = pe.Node(B0Direction(), name="b0_0")
    # fmt: off
    wf.connect([
        (select["local_fields", 0], ref_b0, [("out", "in_file")]),
        (select["local_fields", 0], merge_fields, [("out", "in1")]),
        (select["local_masks", 0], merge_masks, [("out", "in1")]),
        (ref_b0, merge_b0, [("b0_dir", "in1")]),
    ])
    # fmt: on
    for i in range(1, n):
        register = pe.Node(RigidRegistration(backend=registration_backend), name=f"register_{i}")
        field = pe.Node(ResampleToReference(interpolation="linear"), name=f"resample_field_{i}")
        mask = pe.Node(
            ResampleToReference(interpolation="linear", is_mask=True), name=f"resample_mask_{i}"
        )
        b0 = pe.Node(B0Direction(), name=f"b0_{i}")
        # fmt: off
        wf.connect([
            (select["magnitudes", i], register, [("out", "moving")]),
            (select["magnitudes", 0], register, [("out", "reference")]),
            (select["local_fields", i], field, [("out", "in_file")]),
            (select["local_masks", i], mask, [("out", "in_file")]),
            (select["magnitudes", 0], field, [("out", "reference")]),
            (select["magnitudes", 0], mask, [("out", "reference")]),
            (register, field, [("transform", "transform")]),
            (register, mask, [("transform", "transform")]),
            (select["local_fields", i], b0, [("out", "in_file")]),
            (select["magnitudes", 0], b0, [("out", "reference")]),
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
    # fmt: off
    wf.connect([
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
    return wf
