"""Which implementation of a step runs (FSL's tool or qsmflow's own Python code), and how FSL runs.

A step with an FSL implementation (brain extraction: ``bet``; rigid registration: ``flirt``)
takes ``backend="auto" | "fsl" | "python"``:

* ``"auto"`` uses FSL when its tool is on ``PATH`` and the Python code otherwise;
* ``"fsl"`` insists on FSL (a clear error without it);
* ``"python"`` never touches FSL.

The step records the backend that ran (``"fsl"`` or ``"python"``) in its sidecar. FSL is
"available" when the tool is found on ``PATH`` (where Nipype looks for it); FSL itself also
needs ``FSLDIR``, and a warning is logged when it is not set.

FSL commands run through Nipype's command-line wrappers (:class:`nipype.interfaces.fsl.BET`,
:class:`nipype.interfaces.fsl.FLIRT`), used here as a library, not as pipeline nodes: the
file-level steps (:mod:`qsmflow.steps`) call :func:`run_fsl` directly. Every command gets
``output_type`` = :data:`FSL_OUTPUT_TYPE` (passed to the tool as ``FSLOUTPUTTYPE``), so the
user's own setting does not change the file names read back. FSL tools take one 3-D volume: a
4-D (multi-echo) image is reduced to its first volume (:func:`fsl_input_file`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import QSMInputError
from .io.atomic import nifti_stem

log = logging.getLogger(__name__)

#: Backends understood by :func:`resolve_backend` (the choices of every ``--backend`` option).
BACKENDS = ("auto", "fsl", "python")

#: FSL output type of every FSL command qsmflow runs, and its file extension.
FSL_OUTPUT_TYPE = "NIFTI_GZ"
FSL_OUTPUT_EXT = ".nii.gz"

#: FLIRT cost functions accepted for rigid registration (FLIRT's names; FSL backend only).
FLIRT_COSTS = ("mutualinfo", "corratio", "normmi", "normcorr", "leastsq")

#: Default BET fractional intensity threshold (``-f``; FSL's own default too).
DEFAULT_BET_FRAC = 0.5


def fsl_available(tool: str = "bet") -> bool:
    """True when the FSL command ``tool`` (e.g. ``"bet"``, ``"flirt"``) is on ``PATH``."""
    found = shutil.which(tool) is not None
    if found and not os.environ.get("FSLDIR"):
        log.warning("FSL's %s is on PATH but FSLDIR is not set; FSL may fail", tool)
    return found


def resolve_backend(backend: str, tool: str) -> str:
    """Turn ``"auto" | "fsl" | "python"`` into the backend that will run (``"fsl"``/``"python"``).

    ``"auto"`` picks ``"fsl"`` when ``tool`` is on ``PATH``, else ``"python"``. ``"fsl"`` without
    the tool and unknown names raise :class:`QSMInputError`.
    """
    name = str(backend).lower()
    if name not in BACKENDS:
        raise QSMInputError(
            f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}", "backend"
        )
    if name == "python":
        return "python"
    available = fsl_available(tool)
    if name == "auto":
        return "fsl" if available else "python"
    if not available:
        raise QSMInputError(
            f"backend 'fsl' requested but FSL's {tool!r} was not found on PATH; install FSL "
            f"(with $FSLDIR/bin on PATH and FSLDIR set) or use --backend python/auto",
            "backend",
        )
    return "fsl"


@contextlib.contextmanager
def working_directory(workdir: str | os.PathLike | None) -> Iterator[Path]:
    """``workdir`` itself (created if needed) or, when None, a temporary folder removed after."""
    if workdir is not None:
        p = Path(workdir)
        p.mkdir(parents=True, exist_ok=True)
        yield p
        return
    with tempfile.TemporaryDirectory(prefix="qsmflow-") as tmp:
        yield Path(tmp)


def fsl_input_file(path: str | os.PathLike, vol: Any, n_volumes: int, workdir: str | os.PathLike):
    """The file to hand to an FSL tool: ``path`` itself when 3-D, else the first volume
    (``vol``, a :class:`qsmflow.io.nifti.Volume`) written to ``workdir`` as
    ``<stem>_vol0.nii.gz`` (same affine, so FSL sees the same geometry)."""
    from .io.nifti import save_volume

    if n_volumes == 1:
        return str(Path(path).resolve())
    out = Path(workdir) / f"{nifti_stem(path)}_vol0{FSL_OUTPUT_EXT}"
    return str(save_volume(out, vol.data, vol.affine).resolve())


def bet_interface(in_file: str, out_file: str, frac: float = DEFAULT_BET_FRAC):
    """A configured (not yet run) Nipype BET: ``bet IN OUT -f FRAC -m`` (brain and mask)."""
    from nipype.interfaces import fsl

    return fsl.BET(
        in_file=in_file,
        out_file=out_file,
        mask=True,
        frac=float(frac),
        output_type=FSL_OUTPUT_TYPE,
    )


def flirt_interface(
    in_file: str,
    reference: str,
    out_file: str,
    out_matrix_file: str,
    *,
    cost: str = "mutualinfo",
    in_weight: str | None = None,
    ref_weight: str | None = None,
):
    """A configured (not yet run) 6-dof Nipype FLIRT of ``in_file`` (moving) onto ``reference``.

    ``-dof 6 -cost COST -searchcost COST``; ``in_weight``/``ref_weight`` (``-inweight``,
    ``-refweight``) restrict the cost to masks. The matrix (``-omat``) maps the moving image to
    the reference in FSL scaled-mm coordinates (:mod:`qsmflow.registration.fsl`).
    """
    from nipype.interfaces import fsl

    if cost not in FLIRT_COSTS:
        raise QSMInputError(f"unknown FLIRT cost {cost!r}; choose one of {FLIRT_COSTS}", "cost")
    flt = fsl.FLIRT(
        in_file=in_file,
        reference=reference,
        out_file=out_file,
        out_matrix_file=out_matrix_file,
        dof=6,
        cost=cost,
        cost_func=cost,
        output_type=FSL_OUTPUT_TYPE,
    )
    if in_weight is not None:
        flt.inputs.in_weight = in_weight
    if ref_weight is not None:
        flt.inputs.ref_weight = ref_weight
    return flt


def run_fsl(interface: Any, workdir: str | os.PathLike) -> Any:
    """Run a Nipype FSL interface in ``workdir``; return its outputs.

    A failure (non-zero exit, output missing, anything on BET's stderr) raises ``RuntimeError``
    with the command line and FSL's message.
    """
    Path(workdir).mkdir(parents=True, exist_ok=True)
    try:
        result = interface.run(cwd=str(workdir))
    except Exception as exc:  # Nipype raises OSError/RuntimeError/FileNotFoundError/...
        try:
            cmd = interface.cmdline
        except Exception:  # pragma: no cover - only for the message
            cmd = getattr(interface, "cmd", "FSL")
        raise RuntimeError(f"FSL command failed: {cmd}\n{exc}") from exc
    return result.outputs
