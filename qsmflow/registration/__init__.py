"""Rigid registration and FSL FLIRT matrix conversion.

* :mod:`.rigid` - arrays plus affines: :func:`register_arrays` (SimpleITK),
  :func:`resample_to_reference`, :func:`b0_to_reference`; one result type, :class:`RigidResult`.
* :mod:`.files` - NIfTI files: :func:`~.files.register_files` (FSL FLIRT or SimpleITK, with
  retries), transform file I/O, :func:`~.files.b0_dir_from_files`.
* :mod:`.fsl` - FLIRT matrices <-> world transforms.

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
    register_arrays,
    resample_to_reference,
    voxel_map,
)

__all__ = [
    "RigidResult",
    "array_to_sitk",
    "b0_to_reference",
    "flirt_to_world",
    "fsl_voxel_to_scaled",
    "register_arrays",
    "resample_to_reference",
    "voxel_map",
    "read_flirt_mat",
    "world_to_flirt",
    "write_flirt_mat",
]
