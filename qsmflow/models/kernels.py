"""The dipole kernel of ISDU-QSMNet, for inference and for both training datasets.

ISDU-QSMNet was trained with D(0) = 1/3 (:data:`ISDU_KERNEL_K0`, the authors' convention; the
physics default elsewhere in qsmflow is D(0) = 0), so the network's data-consistency step and
every training pair must use this kernel. :func:`isdu_kernel` is the one builder:
:func:`~qsmflow.models.inference.predict_volume`, :class:`~qsmflow.training.dataset.KernelCache`
and :class:`~qsmflow.training.synthetic.PhantomPatchDataset` all call it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import QSMInputError
from ..physics.kernel import check_voxel_size, dipole_kernel

__all__ = ["ISDU_KERNEL_K0", "isdu_kernel", "reference_kernel"]

#: Kernel value at k = 0 of the ISDU convention (isdu_qsmnet_spec.md section 1).
ISDU_KERNEL_K0 = 1.0 / 3.0


def reference_kernel(
    shape: Sequence[int], voxel_size: Sequence[float] = (1.0, 1.0, 1.0)
) -> np.ndarray:
    """The authors' dipole kernel, bit for bit: (X, Y, Z) float32, DC at [0, 0, 0], B0 = axis 2.

    k_i = n_i / (N_i * voxel_i) with integer n_i in FFT order; in float64
    D = 1/3 - k_2^2 / (k_0^2 + k_1^2 + k_2^2 + eps), eps = 2.22e-16 (so D(0) = 1/3), rounded to
    float32. Reproduces ``kernel.npz`` exactly. The voxel size divides k (the authors multiply;
    identical for 1 mm voxels) and odd sizes use the exact integer grid (the authors' linspace
    grid is only right for even sizes). :func:`~qsmflow.physics.kernel.dipole_kernel` with
    ``dc_value=1/3, dtype=np.float64`` agrees to 1e-12 but differs in the last float32 bit of a
    few dozen voxels.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise QSMInputError(f"dipole kernel needs a 3-D shape, got {shape}")
    vox = check_voxel_size(voxel_size)
    ks = []
    for axis, (n, d) in enumerate(zip(shape, vox, strict=True)):
        ints = np.rint(np.fft.fftfreq(n, d=1.0 / n))
        view = [1, 1, 1]
        view[axis] = n
        ks.append((ints / (n * d)).reshape(view))
    eps = np.finfo(np.float64).eps
    d = 1.0 / 3.0 - ks[2] ** 2 / (ks[0] ** 2 + ks[1] ** 2 + ks[2] ** 2 + eps)
    return d.astype(np.float32)


def isdu_kernel(
    shape: Sequence[int],
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    *,
    k0: float = ISDU_KERNEL_K0,
    reference: bool = False,
    device: torch.device | str | None = None,
) -> Tensor:
    """Dipole kernel for :class:`~qsmflow.models.isdu.ISDUQSMNet`: (1, 1, X, Y, Z) float32.

    FFT layout (k = 0 at [0, 0, 0]); ``voxel_size`` in mm, ``b0_dir`` in array axes (any
    direction, normalised), ``k0`` the value at k = 0 (1/3 for every ISDU model; the training
    datasets expose it for experiments). ``reference=True`` gives :func:`reference_kernel`
    (B0 along axis 2 and k0 = 1/3 only); otherwise
    :func:`qsmflow.physics.kernel.dipole_kernel`, computed in float64 and rounded.
    """
    if reference:
        b = np.asarray(b0_dir, dtype=np.float64)
        if not (b[0] == 0 and b[1] == 0 and b[2] != 0):
            raise QSMInputError(f"the reference kernel has B0 along axis 2, got {tuple(b0_dir)}")
        if k0 != ISDU_KERNEL_K0:
            raise QSMInputError(f"the reference kernel has D(0) = 1/3, got k0 = {k0}")
        d = reference_kernel(shape, voxel_size)
    else:
        d = dipole_kernel(shape, voxel_size, b0_dir, dc_value=float(k0), dtype=np.float64)
        d = d.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(d))[None, None].to(device)
