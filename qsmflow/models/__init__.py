"""Neural networks (torch): the ISDU-QSMNet denoiser, the unrolled model and checkpoint I/O.

Modules: :mod:`.wideresnet` (the denoiser), :mod:`.isdu` (the unrolled network),
:mod:`.consistency` (its data-consistency solvers), :mod:`.kernels` (the one ISDU dipole
kernel), :mod:`.checkpoints` (the one checkpoint reader/writer), :mod:`.inference`
(whole-volume prediction).
"""

from __future__ import annotations

from .checkpoints import load_denoiser_state, load_isdu, save_isdu
from .consistency import (
    CGResult,
    conjugate_gradient,
    normal_operator,
    solve_consistency_closed_form,
)
from .isdu import OUT_MEAN, OUT_STD, ISDUIntermediates, ISDUQSMNet
from .kernels import ISDU_KERNEL_K0, isdu_kernel, reference_kernel
from .wideresnet import WideBasicBlock, WideResNet

__all__ = [
    "ISDU_KERNEL_K0",
    "OUT_MEAN",
    "OUT_STD",
    "CGResult",
    "ISDUIntermediates",
    "ISDUQSMNet",
    "WideBasicBlock",
    "WideResNet",
    "conjugate_gradient",
    "isdu_kernel",
    "load_denoiser_state",
    "load_isdu",
    "normal_operator",
    "reference_kernel",
    "save_isdu",
    "solve_consistency_closed_form",
]
