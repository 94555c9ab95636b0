"""Single-orientation dipole inversion."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.inversion import DipoleInversion

#: Memory (GB) announced to Nipype's MultiProc scheduler for an ISDU-QSMNet node (a whole brain
#: untiled needs ~2-3 GB on the CPU), so that it does not start several of them at once.
ISDU_NODE_MEM_GB = 3.0


def init_qsm_wf(
    *,
    methods: Sequence[str] = ("tkd",),
    options: Mapping[str, Mapping[str, Any]] | None = None,
    name: str = "qsm_wf",
) -> pe.Workflow:
    """One inversion node per method (``tkd``, ``tsvd``, ``cfl2``, ``ndi``, ``star``,
    ``isdu``).

    Inputs: ``local_field`` (ppm; B0 direction from its affine) and ``mask``.
    Outputs: ``chi_<method>`` for every method (ppm).

    ``options["isdu"]`` (see qsmflow.config.ISDU_OPTIONS) is checked here; a relative
    ``weights`` path is made absolute (from the current directory) since nodes run elsewhere.
    """
    options = options or {}
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["local_field", "mask"]), name="inputnode")
    outputnode = pe.Node(
        niu.IdentityInterface(fields=[f"chi_{m}" for m in methods]), name="outputnode"
    )
    for method in methods:
        opts = dict(options.get(method, {}))
        if method == "isdu":
            from ..config import check_isdu_options

            opts = check_isdu_options(opts)
            if opts.get("weights"):
                opts["weights"] = os.path.abspath(os.fspath(opts["weights"]))
        resources = {"mem_gb": ISDU_NODE_MEM_GB} if method == "isdu" else {}
        node = pe.Node(
            DipoleInversion(method=method, options=opts), name=f"invert_{method}", **resources
        )
        # fmt: off
        wf.connect([
            (inputnode, node, [("local_field", "local_field"), ("mask", "mask")]),
            (node, outputnode, [("chi", f"chi_{method}")]),
        ])
        # fmt: on
    return wf
