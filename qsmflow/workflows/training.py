"""Training data: COSMOS + each orientation's local field -> patches."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.patches import TrainingPatches
from ..training.patch_grid import MIN_MASK_FRACTION, PATCH_SIZE, STRIDE


def init_training_data_wf(
    *,
    patch_size: int = PATCH_SIZE,
    stride: int = STRIDE,
    min_mask_fraction: float = MIN_MASK_FRACTION,
    name: str = "training_data_wf",
) -> pe.Workflow:
    """Cut the training pairs of one subject into ``patch_size``^3 patches.

    One node (:class:`~qsmflow.interfaces.patches.TrainingPatches`, the step
    :func:`~qsmflow.steps.patches.training_patches`): one training pair per orientation, input
    = that orientation's local field on the reference grid with its B0 direction, target =
    COSMOS chi. On-disk format: :mod:`qsmflow.training.patch_store`.

    Parameters
    ----------
    patch_size : int
        Patch edge, voxels.
    stride : int
        Step of the patch grid, voxels.
    min_mask_fraction : float
        A patch is kept when more than this fraction of it is inside the COSMOS mask.
    name : str
        Workflow name.

    Inputs
    ------
    local_fields_ref
        One per orientation, ppm, on the reference (COSMOS) grid.
    chi
        COSMOS susceptibility, ppm.
    mask
        COSMOS mask.
    b0_dirs
        One unit 3-vector per orientation, reference array axes.
    source_files
        Raw inputs, recorded as Sources in ``patches.json``.

    Outputs
    -------
    patch_dir
        The ``qsmflow-patches`` folder.
    count
        Number of patches, all orientations.
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
