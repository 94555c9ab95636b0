"""Neural networks (torch): the ISDU-QSMNet denoiser, the unrolled model and checkpoint I/O."""

from __future__ import annotations

from .checkpoints import load_denoiser_state, load_isdu, save_isdu
from .isdu import (
    OUT_MEAN,
    OUT_STD,
    CGResult,
    ISDUIntermediates,
    ISDUQSMNet,
    conjugate_gradient,
    dc_closed_form,
    isdu_kernel,
    normal_operator,
    reference_kernel,
)
from .wideresnet import WideBasicBlock, WideResNet

__all__ = [
    "OUT_MEAN",
    "OUT_STD",
    "CGResult",
    "ISDUIntermediates",
    "ISDUQSMNet",
    "WideBasicBlock",
    "WideResNet",
    "conjugate_gradient",
    "dc_closed_form",
    "isdu_kernel",
    "load_denoiser_state",
    "load_isdu",
    "normal_operator",
    "reference_kernel",
    "save_isdu",
]
