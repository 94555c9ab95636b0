"""Processing steps: one file-level function per step, shared by the CLI and the pipeline.

A step function takes file paths and plain options (numbers, strings, tuples; never an argparse
namespace, a config object or a Nipype runtime), reads its inputs with clear errors naming the
file, calls the numerics of the domain packages (``physics``, ``masking``, ``registration``,
``models``, ``training``), writes its outputs atomically and returns a :class:`StepResult`.

``qsmflow <step>`` (``cli/``) and the matching Nipype interface (``interfaces/``) are thin
adapters around the same function: they translate arguments and nothing else, so a step writes
the same sidecar keys and values from either. Defaults live once, in the step's signature (or
beside the numerics it calls); "auto" choices are resolved inside the step and the sidecar
records the effective value.

Sidecar vocabulary (README "Sidecar keys" lists every key with its meaning and unit):

* ``Sources``: the input files the output was computed from, as absolute paths; the derivatives
  sink rewrites them as BIDS URIs. Output paths are never recorded.
* ``Units`` for every quantitative map (``ppm``, ``Hz``, ``rad``).
* One PascalCase key per parameter, named after the step (``UnwrappingMethod``,
  ``BackgroundFieldRemoval``, ``InversionMethod``, ``MaskBackend``, ``RegistrationBackend``),
  holding the value actually used (defaults filled in, ``auto`` resolved).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class StepResult:
    """What a step wrote and recorded.

    ``outputs`` maps output names (``"chi"``, ``"mask"``, ...) to the files written;
    ``sidecar`` is the JSON written beside the primary output; ``values`` holds non-file
    results an adapter may pass on (e.g. ``"b0_dir"``, ``"radii_mm"``).
    """

    outputs: dict[str, Path]
    sidecar: dict[str, Any]
    values: dict[str, Any] = field(default_factory=dict)


def sources(*paths: str | os.PathLike | None) -> list[str]:
    """Absolute paths of the given inputs, skipping ``None`` (optional inputs not given)."""
    return [str(Path(p).resolve()) for p in paths if p is not None]
