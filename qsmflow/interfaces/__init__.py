"""Nipype interfaces of qsmflow: thin :class:`~nipype.interfaces.base.SimpleInterface` adapters.

Each interface translates its traits to one file-level step function of :mod:`qsmflow.steps`
(which reads the inputs, computes, and writes the outputs and their sidecar atomically into the
node's working directory) and the step's result back to its outputs. Nothing else: no numerics,
no defaults of their own (an undefined optional trait means the step's default, see
:func:`step_options`). The derivatives sinks (:mod:`qsmflow.interfaces.bids`) copy results into
the BIDS derivatives dataset.
"""

from __future__ import annotations

import os
from typing import Any

from nipype.interfaces.base import isdefined

from ..io.atomic import nifti_stem


def step_options(inputs: Any, *names: str) -> dict[str, Any]:
    """``{name: value}`` of the traits in ``names`` that are set: the step fills in the rest."""
    values = {name: getattr(inputs, name) for name in names}
    return {name: value for name, value in values.items() if isdefined(value)}


def default_output_name(in_file: str | os.PathLike, suffix: str) -> str:
    """``<stem><suffix>.nii.gz`` for ``in_file`` (``.nii``/``.nii.gz`` stripped)."""
    return f"{nifti_stem(in_file)}{suffix}.nii.gz"
