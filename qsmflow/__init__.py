"""qsmflow: multi-echo gradient-echo MRI to quantitative susceptibility maps.

Conventions used throughout the package (see ``docs`` in README.md):

* Fields are in ppm of B0 unless a name says otherwise (``_rad``, ``_hz``); susceptibility in ppm.
* Echo times are in seconds, field strength in tesla, voxel sizes in millimetres.
* ``b0_dir`` is a unit vector expressed in the array's own axes (axis 0, 1, 2); it is derived
  from the NIfTI affine with :func:`qsmflow.physics.geometry.b0_dir_from_affine`.
* Arrays keep the voxel grid of their NIfTI file; nothing is silently reoriented.
"""

__version__ = "0.1.0.dev0"
