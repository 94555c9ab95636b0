"""Single-orientation dipole inversion."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.inversion import DipoleInversion


def init_qsm_wf(
    *,
    methods: Sequence[str] = ("tkd",),
    options: Mapping[str, Mapping[str, Any]] | None = None,
    name: str = "qsm_wf",
) -> pe.Workflow:
    """One inversion node per method (``tkd``, ``tsvd``, ``cfl2``, ``ndi``, ``star``).

    Inputs: ``local_field`` (ppm; B0 direction from its affine) and ``mask``.
    Outputs: ``chi_<method>`` for every method (ppm).
    """
    options = options or {}
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["local_field", "mask"]), name="inputnode")
    outputnode = pe.Node(
        niu.IdentityInterface(fields=[f"chi_{m}" for m in methods]), name="outputnode"
    )
    for method in methods:
        node = pe.Node(
            DipoleInversion(method=method, options=dict(options.get(method, {}))),
            name=f"invert_{method}",
        )
        # fmt: off
        wf.connect([
            (inputnode, node, [("local_field", "local_field"), ("mask", "mask")]),
            (node, outputnode, [("chi", f"chi_{method}")]),
        ])
        # fmt: on
    return wf
