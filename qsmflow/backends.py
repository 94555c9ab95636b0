"""Which implementation of a step runs: FSL's tool or qsmflow's own Python code.

A step with an FSL implementation (brain extraction: ``bet``; rigid registration: ``flirt``)
takes ``backend="auto" | "fsl" | "python"``:

* ``"auto"`` uses FSL when its tool is on ``PATH`` and the Python code otherwise;
* ``"fsl"`` insists on FSL (a clear error without it);
* ``"python"`` never touches FSL.

The step records the backend that ran (``"fsl"`` or ``"python"``) in its sidecar. FSL is
"available" when the tool is found on ``PATH`` (where Nipype looks for it); FSL itself also
needs ``FSLDIR``, and a warning is logged when it is not set.
"""

from __future__ import annotations

import logging
import os
import shutil

from .errors import QSMInputError

log = logging.getLogger(__name__)

#: Backends understood by :func:`resolve_backend` (the choices of every ``--backend`` option).
BACKENDS = ("auto", "fsl", "python")


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
