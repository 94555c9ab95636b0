"""FSL helpers: is FSL there, which backend runs, and the two FSL commands qsmflow uses.

qsmflow has its own (python) brain extraction and rigid registration; FSL's ``bet`` and
``flirt`` are an optional alternative, run through Nipype's wrappers
(:class:`nipype.interfaces.fsl.BET`, :class:`nipype.interfaces.fsl.FLIRT`).

* ``backend="auto"`` uses FSL when its tool is on ``PATH`` and the python code otherwise;
  ``"fsl"`` insists on FSL (a clear error without it); ``"python"`` never touches FSL.
* FSL is "available" when the tool (``bet``, ``flirt``) is found on ``PATH`` - which is where
  Nipype looks for it. FSL itself also needs ``FSLDIR`` (``flirt`` reads its schedule files
  from ``$FSLDIR/etc/flirtsch``); a warning is logged when it is not set.
* ``FSLOUTPUTTYPE``: the commands built here always set ``output_type`` to
  :data:`FSL_OUTPUT_TYPE` (``NIFTI_GZ``), which Nipype passes to the tool as
  ``FSLOUTPUTTYPE`` in the subprocess environment; the user's own setting (or its absence) does
  not change the file names qsmflow reads back.
* FSL tools take one 3-D volume: a 4-D (multi-echo) magnitude is reduced to its first echo
  (:func:`load_first_volume`, :func:`fsl_input_file`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..backends import BACKENDS, fsl_available, resolve_backend  # noqa: F401 (re-exported)
from ..errors import QSMInputError

log = logging.getLogger(__name__)

#: FSL output type used for every FSL command run by qsmflow.
FSL_OUTPUT_TYPE = "NIFTI_GZ"

#: File extension that goes with :data:`FSL_OUTPUT_TYPE`.
FSL_OUTPUT_EXT = ".nii.gz"

#: FLIRT cost functions accepted for rigid registration (FLIRT's names).
FLIRT_COSTS = ("mutualinfo", "corratio", "normmi", "normcorr", "leastsq")


def load_first_volume(path: str | os.PathLike, role: str = "image"):
    """Read a 3-D image, or the first volume (echo) of a 4-D one.

    Returns ``(volume, n_volumes)``: a :class:`qsmflow.io.nifti.Volume` with 3-D float32 data and
    the number of volumes in the file (1 for 3-D). Errors name the file; the affine must not be
    sheared (FSL and the registration code need orthogonal voxel axes).
    """
    import numpy as np

    from ..io.nifti import load_volume
    from ..physics.geometry import rotation_from_affine

    vol = load_volume(path, ndim=None)
    data = vol.data
    if data.ndim == 4:
        n = int(data.shape[3])
        if n < 1:
            raise QSMInputError(f"{role} has no volumes (shape {data.shape})", vol.path)
        vol.data = np.ascontiguousarray(data[..., 0])
    elif data.ndim == 3:
        n = 1
    else:
        raise QSMInputError(
            f"{role} must be a 3-D image or 4-D (echoes last), got shape {data.shape}", vol.path
        )
    if min(vol.data.shape) < 2:
        raise QSMInputError(f"{role} is too small: shape {vol.data.shape}", vol.path)
    rotation_from_affine(vol.affine, source=vol.path)
    return vol, n


def fsl_input_file(path: str | os.PathLike, vol, n_volumes: int, workdir: str | os.PathLike):
    """The file to hand to an FSL tool: ``path`` itself when 3-D, else the first volume written
    to ``workdir`` (same affine, so the geometry FSL sees is unchanged)."""
    from ..io.nifti import save_volume

    if n_volumes == 1:
        return str(Path(path).resolve())
    name = Path(path).name
    stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else Path(name).stem
    out = Path(workdir) / f"{stem}_vol0{FSL_OUTPUT_EXT}"
    return str(save_volume(out, vol.data, vol.affine).resolve())


def bet_interface(in_file: str, out_file: str, frac: float = 0.5):
    """A configured (not yet run) Nipype BET: ``bet IN OUT -f FRAC -m``.

    ``out_file`` is the brain image; BET writes the mask next to it as ``<out>_mask.nii.gz``
    (output ``mask_file``).
    """
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


def run_fsl(interface, workdir: str | os.PathLike):
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
