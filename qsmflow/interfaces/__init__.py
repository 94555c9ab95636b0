"""Nipype interfaces of qsmflow: thin :class:`~nipype.interfaces.base.SimpleInterface` adapters.

Each interface translates its traits to one file-level step function of :mod:`qsmflow.steps`
(which reads the inputs, computes, and writes the outputs and their sidecar atomically into the
node's working directory) and the step's result back to its outputs. Nothing else: no numerics,
no defaults of their own (an undefined optional trait means the step's default, see
:func:`step_options`). The derivatives sinks (:mod:`qsmflow.interfaces.bids`) copy results into
the BIDS derivatives dataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from nipype.interfaces.base import SimpleInterface, isdefined

from ..io.atomic import nifti_stem


def step_options(inputs: Any, *names: str) -> dict[str, Any]:
    """``{name: value}`` of the traits in ``names`` that are set: the step fills in the rest."""
    values = {name: getattr(inputs, name) for name in names}
    return {name: value for name, value in values.items() if isdefined(value)}


class StepInterface(SimpleInterface):
    """A SimpleInterface that runs one step function in the node's folder.

    A subclass implements :meth:`_run_step` (traits -> the step's call, returning its
    :class:`qsmflow.steps.StepResult`) and says which outputs to copy back: ``_files`` maps an
    output trait to a key of ``StepResult.outputs`` (written files), ``_values`` to a key of
    ``StepResult.values`` or, failing that, of its sidecar.
    """

    _files: ClassVar[dict[str, str]] = {}
    _values: ClassVar[dict[str, str]] = {}

    def _run_step(self, cwd: Path) -> Any:
        raise NotImplementedError

    def _run_interface(self, runtime):
        result = self._run_step(Path(runtime.cwd))
        for trait, key in self._files.items():
            self._results[trait] = str(result.outputs[key])
        for trait, key in self._values.items():
            self._results[trait] = result.values.get(key, result.sidecar.get(key))
        return runtime

    def _options(self, *names: str) -> dict[str, Any]:
        """The traits in ``names`` that are set (see :func:`step_options`)."""
        return step_options(self.inputs, *names)

    def _output_file(self, cwd: Path, in_file: str, suffix: str) -> Path:
        """``out_file`` in ``cwd`` when set, else ``<stem of in_file><suffix>.nii.gz``."""
        name = self.inputs.out_file
        if not isdefined(name):
            name = f"{nifti_stem(in_file)}{suffix}.nii.gz"
        return cwd / name
