"""Neural networks (torch): the model zoo, ISDU-QSMNet and its denoisers, checkpoint I/O.

Modules: :mod:`.registry` (every model by name: ``qsmflow models``), :mod:`.isdu` (the unrolled
ISDU-QSMNet / SpiNet-QSM), :mod:`.wideresnet` and :mod:`.denoisers` (its denoisers),
:mod:`.lpcnn`, :mod:`.datadriven` (QSMnet, DeepQSM, xQSM through :mod:`.unet` and
:mod:`.xqsm`), :mod:`.consistency` (data-consistency solvers), :mod:`.kernels` (the one ISDU
dipole kernel), :mod:`.checkpoints` (the one checkpoint reader/writer), :mod:`.inference`
(whole-volume prediction), :mod:`.adapt` (test-time adaptation).

The names below are imported on first use, so ``import qsmflow.models.registry`` (the method
names the command line and the pipeline check against) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_denoiser_state": "checkpoints",
    "load_isdu": "checkpoints",
    "load_model": "checkpoints",
    "save_isdu": "checkpoints",
    "save_model": "checkpoints",
    "CGResult": "consistency",
    "conjugate_gradient": "consistency",
    "normal_operator": "consistency",
    "solve_consistency_closed_form": "consistency",
    "OUT_MEAN": "isdu",
    "OUT_STD": "isdu",
    "ISDUIntermediates": "isdu",
    "ISDUQSMNet": "isdu",
    "ISDU_KERNEL_K0": "kernels",
    "isdu_kernel": "kernels",
    "reference_kernel": "kernels",
    "WideBasicBlock": "wideresnet",
    "WideResNet": "wideresnet",
    "LPCNN": "lpcnn",
    "DataDrivenQSM": "datadriven",
    "MODELS": "registry",
    "build_model": "registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
