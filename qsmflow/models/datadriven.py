"""Data-driven dipole inversion networks: QSMnet, DeepQSM and xQSM, field in, map out.

One wrapper, :class:`DataDrivenQSM`, gives every image-to-image network the interface of the
qsmflow models (``model(phi, mask, kernel) -> chi``, ppm in and out)::

    x   = (M phi - in_mean) / in_std          normalised field (background: -in_mean/in_std)
    chi = M (net(x) * out_std + out_mean)     ppm, 0 outside the mask

=============  ==========================================================  ==========
architecture   network                                                     parameters
=============  ==========================================================  ==========
qsmnet         :func:`~.unet.qsmnet_unet`: 5^3 U-Net, widths 32-512, LeakyReLU  99,453,985
deepqsm        :func:`~.unet.deepqsm_unet`: 3^3 U-Net, widths 16-256, ReLU       5,647,857
xqsm           :class:`~.xqsm.XQSM`: octave-convolution U-Net, global residual  5,215,681
=============  ==========================================================  ==========

**What they assume.** The networks see the field only, not the dipole kernel: they learn the
inversion for the B0 direction and voxel sizes of their training data. The papers trained with
B0 along the third array axis at about 1 mm isotropic, and qsmflow's patch sets keep B0 tilts
small. :meth:`DataDrivenQSM.check_geometry` (called by whole-volume inference) therefore refuses
a field whose B0 direction is more than ``max_b0_tilt_deg`` (default 15 degrees) from the third
array axis: resample such a field to a B0-aligned grid, or use a model-based network (isdu,
spinet, lpcnn), which takes the kernel of any direction and voxel size. Every spatial size must
be a multiple of the network's ``size_multiple`` (16 for the U-Nets; inference pads to it).

The default normalisation is QSMnet's shipped ``norm_factor_QSMnet_32.mat`` (input mean
-2.504e-5, sd 0.011012; label mean -8.59e-6, sd 0.027996, ppm); the trainer replaces it with
its own data's statistics where the patch set records them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import QSMInputError

__all__ = [
    "ARCHITECTURES",
    "DataDrivenQSM",
    "QSMNET_IN_MEAN",
    "QSMNET_IN_STD",
    "QSMNET_OUT_MEAN",
    "QSMNET_OUT_STD",
]

#: Architectures of :class:`DataDrivenQSM`.
ARCHITECTURES = ("qsmnet", "deepqsm", "xqsm")

#: QSMnet's shipped normalisation (ppm): field (input) and susceptibility (label) statistics.
QSMNET_IN_MEAN = -2.504e-5
QSMNET_IN_STD = 0.011012
QSMNET_OUT_MEAN = -8.59e-6
QSMNET_OUT_STD = 0.027996


def _build_network(architecture: str) -> nn.Module:
    from . import unet

    if architecture == "qsmnet":
        return unet.qsmnet_unet(1, 1)
    if architecture == "deepqsm":
        return unet.deepqsm_unet(1, 1)
    if architecture == "xqsm":
        from .xqsm import XQSM

        return XQSM(1, 1)
    raise QSMInputError(
        f"unknown data-driven architecture {architecture!r}; choose from {', '.join(ARCHITECTURES)}"
    )


class DataDrivenQSM(nn.Module):
    """A data-driven network (``architecture``) with normalisation and masking.

    Parameters
    ----------
    architecture : "qsmnet", "deepqsm" or "xqsm" (module docstring).
    in_mean, in_std : field statistics (ppm) normalising the input.
    out_mean, out_std : susceptibility statistics (ppm) de-normalising the output.
    max_b0_tilt_deg : largest angle between B0 and the third array axis that
        :meth:`check_geometry` accepts.

    Forward: ``model(phi, mask, kernel)``: phi and mask (B, 1, X, Y, Z), each spatial size a
    multiple of :attr:`size_multiple`; ``kernel`` is accepted for the common interface and not
    used -> chi (B, 1, X, Y, Z) ppm, 0 outside the mask.
    """

    def __init__(
        self,
        architecture: str = "qsmnet",
        in_mean: float = QSMNET_IN_MEAN,
        in_std: float = QSMNET_IN_STD,
        out_mean: float = QSMNET_OUT_MEAN,
        out_std: float = QSMNET_OUT_STD,
        max_b0_tilt_deg: float = 15.0,
    ) -> None:
        super().__init__()
        if not (float(in_std) > 0 and float(out_std) > 0):
            raise QSMInputError(f"in_std and out_std must be positive, got {in_std}, {out_std}")
        self._config: dict[str, Any] = {
            "architecture": str(architecture),
            "in_mean": float(in_mean),
            "in_std": float(in_std),
            "out_mean": float(out_mean),
            "out_std": float(out_std),
            "max_b0_tilt_deg": float(max_b0_tilt_deg),
        }
        self.net = _build_network(str(architecture))
        for name in ("in_mean", "in_std", "out_mean", "out_std"):
            self.register_buffer(name, torch.tensor(float(self._config[name])))

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments (plain values) that rebuild this model."""
        return dict(self._config)

    @property
    def size_multiple(self) -> int:
        """Every spatial size must be a multiple of this."""
        return int(getattr(self.net, "size_multiple", 1))

    def check_geometry(self, voxel_size: Sequence[float], b0_dir: Sequence[float]) -> None:
        """Raise QSMInputError if B0 is further than ``max_b0_tilt_deg`` from the third axis."""
        b = [float(v) for v in b0_dir]
        norm = math.sqrt(sum(v * v for v in b))
        tilt = math.degrees(math.acos(min(1.0, abs(b[2]) / norm))) if norm > 0 else 90.0
        limit = self._config["max_b0_tilt_deg"]
        if tilt > limit:
            raise QSMInputError(
                f"{self._config['architecture']} is a data-driven network that assumes B0 along "
                f"the third array axis; this field's B0 is {tilt:.1f} degrees from it (limit "
                f"{limit:g}). Resample the field to a B0-aligned grid, or use a model-based "
                "network (isdu, spinet, lpcnn), which takes any B0 direction and voxel size"
            )

    def forward(self, phi: Tensor, mask: Tensor, kernel: Tensor | None = None) -> Tensor:
        """phi (B,1,X,Y,Z) ppm, mask (B,1,X,Y,Z) -> chi (B,1,X,Y,Z) ppm (kernel not used)."""
        if phi.ndim != 5 or phi.shape[1] != 1 or tuple(mask.shape) != tuple(phi.shape):
            raise QSMInputError(
                f"phi and mask must be (B, 1, X, Y, Z), got {tuple(phi.shape)}, {tuple(mask.shape)}"
            )
        dtype = self.in_std.dtype
        m = mask.to(dtype)
        x = (phi.to(dtype) * m - self.in_mean) / self.in_std
        return (self.net(x) * self.out_std + self.out_mean) * m

    def extra_repr(self) -> str:
        return f"architecture={self._config['architecture']!r}"
