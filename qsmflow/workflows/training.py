"""Training data: COSMOS + each orientation's local field -> patches."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.patches import TrainingPatches


def init_training_data_wf(
    *,
    patch_size: int = 64,
    stride: int = 32,
    min_mask_fraction: float = 0.125,
    name: str = "training_data_wf",
) -> pe.Workflow:
    """Cut the training pairs of one subject into ``patch_size``^3 patches.

    One training pair per orientation: input = that orientation's local field on the reference
    grid (ppm) with its B0 direction in reference array axes, target = COSMOS chi (ppm).
    Patches lie on a grid with ``stride`` voxels; a patch is kept when more than
    ``min_mask_fraction`` of it is inside the COSMOS mask. On-disk format:
    :mod:`qsmflow.training.patches`.

    Inputs: local_fields_ref (list), chi, mask, b0_dirs (flat, 3 per orientation),
    source_files. Outputs: patch_dir, count.
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(
            fields=["local_fields_ref", "chi", "mask", "b0_dirs", "source_files"]
        ),
        name="inputnode",
    )
    outputnode = pe.Node(niu.IdentityInterface(fields=["patch_dir", "count"]), name="outputnode")
    patches = pe.Node(
        TrainingPatches(patch_size=patch_size, stride=stride, min_mask_fraction=min_mask_fraction),
        name="patches",
    )
    # fmt: off
    wf.connect([
        (inputnode, patches, [
            ("local_fields_ref", "local_fields"),
            ("chi", "chi"),
            ("mask", "mask"),
            ("b0_dirs", "b0_dirs"),
            ("source_files", "source_files"),
        ]),
        (patches, outputnode, [("out_dir", "patch_dir"), ("count", "count")]),
    ])
    # fmt: on
    return wf
