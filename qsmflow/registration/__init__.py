"""Rigid registration (SimpleITK backend) and FSL FLIRT matrix conversion.

World transforms are 4x4 matrices on RAS mm points; see :mod:`qsmflow.registration.rigid`.
"""

from .fsl import (
    flirt_to_world,
    fsl_voxel_to_scaled,
    read_flirt_mat,
    world_to_flirt,
    write_flirt_mat,
)
from .rigid import (
    RigidResult,
    array_to_sitk,
    b0_to_reference,
    register_rigid,
    resample_to_reference,
    voxel_map,
)

__all__ = [
    "RigidResult",
    "array_to_sitk",
    "b0_to_reference",
    "flirt_to_world",
    "fsl_voxel_to_scaled",
    "register_rigid",
    "resample_to_reference",
    "voxel_map",
    "read_flirt_mat",
    "world_to_flirt",
    "write_flirt_mat",
]
