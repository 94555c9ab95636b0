"""Single-orientation dipole inversion."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..errors import QSMInputError
from ..interfaces.inversion import DipoleInversion
from ..steps.inversion import NETWORK_METHODS

#: Memory (GB) announced to Nipype's MultiProc scheduler for an ISDU-QSMNet node (a whole brain
#: untiled needs ~2-3 GB on the CPU), so that it does not start several of them at once.
ISDU_NODE_MEM_GB = 3.0


def init_qsm_wf(
    *,
    methods: Sequence[str] = ("tv",),
    options: Mapping[str, Mapping[str, Any]] | None = None,
    magnitude_weights: Sequence[str] = (),
    name: str = "qsm_wf",
) -> pe.Workflow:
    """Build the single-orientation inversion workflow: one node per method.

    Every method inverts the same local field inside the same mask; the B0 direction comes
    from the field's affine. The inversion step checks each method's options (and fills in
    their defaults); a relative ISDU ``weights`` path must already be absolute here
    (:func:`qsmflow.config.config_from_dict` makes it so), since nodes run in their own
    folders. Network nodes (ISDU-QSMNet and the other models of the zoo) announce
    :data:`ISDU_NODE_MEM_GB` to the scheduler.

    Parameters
    ----------
    methods : sequence of str
        Inversion methods, from :data:`qsmflow.steps.inversion.INVERSION_METHODS`.
    options : mapping of str to mapping, optional
        Keyword options per method, e.g. ``{"tkd": {"threshold": 0.15}}``.
    magnitude_weights : sequence of str
        Methods (of ``methods``, each taking ``weights``: ndi, tv) that get the multi-echo
        magnitude as their weights image (tv: MEDI-style edge weights; ndi: data weights).
    name : str
        Workflow name.

    Inputs
    ------
    local_field
        Local field, ppm of B0.
    mask
        Mask of valid local-field voxels.
    magnitude
        Magnitude (3-D or 4-D, echoes combined by their rms), used by ``magnitude_weights``.

    Outputs
    -------
    chi_<method>
        Susceptibility, ppm, one per method.
    """
    options = options or {}
    wf = pe.Workflow(name=name)
    unknown = [m for m in magnitude_weights if m not in methods]
    if unknown:
        raise QSMInputError(f"magnitude weights for {', '.join(unknown)}, not among {methods}")
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["local_field", "mask", "magnitude"]), name="inputnode"
    )
    outputnode = pe.Node(
        niu.IdentityInterface(fields=[f"chi_{m}" for m in methods]), name="outputnode"
    )
    for method in methods:
        resources = {"mem_gb": ISDU_NODE_MEM_GB} if method in NETWORK_METHODS else {}
        node = pe.Node(DipoleInversion(method=method), name=f"invert_{method}", **resources)
        if method in options:
            node.inputs.options = dict(options[method])
        # fmt: off
        wf.connect([
            (inputnode, node, [("local_field", "local_field"), ("mask", "mask")]),
            (node, outputnode, [("chi", f"chi_{method}")]),
        ])
        # fmt: on
        if method in magnitude_weights:
            wf.connect([(inputnode, node, [("magnitude", "weights_image")])])
    return wf
