"""Graph tests of ``init_fieldmap_wf`` and ``init_qsm_wf``: nodes, interfaces, inputs and edges,
built over their options without running anything (as sdcflows' workflow tests)."""

from __future__ import annotations

import pytest
from nipype.interfaces.base import isdefined

from qsmflow.errors import QSMInputError
from qsmflow.interfaces.fieldmap import BackgroundRemoval, MergeEchoes, MultiEchoField
from qsmflow.interfaces.inversion import DipoleInversion
from qsmflow.interfaces.masking import BrainMask
from qsmflow.workflows.fieldmap import init_fieldmap_wf
from qsmflow.workflows.qsm import ISDU_NODE_MEM_GB, init_qsm_wf


def _edges(wf) -> set[tuple[str, str, str, str]]:
    """Every ``connect`` of ``wf`` as (source node, output, target node, input)."""
    return {
        (u.name, out, v.name, inp)
        for u, v, data in wf._graph.edges(data=True)
        for out, inp in data["connect"]
    }


FIELDMAP_EDGES = {
    ("inputnode", "phase_files", "merge_phase", "in_files"),
    ("inputnode", "magnitude_files", "merge_magnitude", "in_files"),
    ("merge_magnitude", "first_echo", "brain_mask", "magnitude"),
    ("merge_phase", "out_file", "multiecho_field", "phase"),
    ("merge_magnitude", "out_file", "multiecho_field", "magnitude"),
    ("brain_mask", "mask_file", "multiecho_field", "mask"),
    ("multiecho_field", "field_hz", "vsharp", "field_hz"),
    ("brain_mask", "mask_file", "vsharp", "mask"),
    ("merge_magnitude", "out_file", "outputnode", "magnitude"),
    ("merge_magnitude", "first_echo", "outputnode", "magnitude_echo1"),
    ("brain_mask", "mask_file", "outputnode", "brain_mask"),
    ("brain_mask", "backend", "outputnode", "mask_backend"),
    ("multiecho_field", "field_hz", "outputnode", "field_hz"),
    ("vsharp", "local_ppm", "outputnode", "local_field"),
    ("vsharp", "eroded_mask", "outputnode", "local_mask"),
}


@pytest.mark.parametrize("unwrapping", ["auto", "laplacian", "lsq", "temporal"])
@pytest.mark.parametrize("echo_times", [[0.004], [0.004, 0.009, 0.014]])
@pytest.mark.parametrize("mask_backend", ["auto", "fsl", "python"])
def test_fieldmap_wf_graph(unwrapping, echo_times, mask_backend):
    wf = init_fieldmap_wf(
        echo_times=echo_times,
        field_strength=7.0,
        mask_backend=mask_backend,
        unwrapping=unwrapping,
        phase_units="siemens",
        name="fmap_wf",
    )
    assert wf.name == "fmap_wf"
    assert _edges(wf) == FIELDMAP_EDGES
    kinds = {
        "merge_phase": MergeEchoes,
        "merge_magnitude": MergeEchoes,
        "brain_mask": BrainMask,
        "multiecho_field": MultiEchoField,
        "vsharp": BackgroundRemoval,
    }
    for name, kind in kinds.items():
        assert isinstance(wf.get_node(name).interface, kind), name
    merge_phase = wf.get_node("merge_phase").inputs
    assert merge_phase.kind == "phase" and merge_phase.phase_units == "siemens"
    assert wf.get_node("merge_magnitude").inputs.kind == "magnitude"
    assert wf.get_node("brain_mask").inputs.backend == mask_backend
    fit = wf.get_node("multiecho_field").inputs
    # the factory passes the choice on: the step resolves "auto" and records what it ran
    assert fit.method == unwrapping and fit.echo_times == echo_times
    vsharp = wf.get_node("vsharp").inputs
    assert vsharp.field_strength == 7.0
    assert vsharp.threshold == 0.05 and vsharp.deconvolution == "per_radius"
    assert not isdefined(vsharp.radii_mm)  # the step's default radii


def test_fieldmap_wf_vsharp_settings():
    wf = init_fieldmap_wf(
        echo_times=[0.005],
        field_strength=3.0,
        radii_mm=(6, 4, 2),
        threshold=0.1,
        deconvolution="largest",
    )
    vsharp = wf.get_node("vsharp").inputs
    assert vsharp.radii_mm == [6.0, 4.0, 2.0]
    assert vsharp.threshold == 0.1 and vsharp.deconvolution == "largest"


def test_qsm_wf_rejects_weights_for_absent_methods():
    with pytest.raises(QSMInputError, match="magnitude weights for tv"):
        init_qsm_wf(methods=["tkd"], magnitude_weights=["tv"])


@pytest.mark.parametrize(
    ("methods", "options", "weighted"),
    [
        (["tkd"], {}, []),
        (["tv"], {}, ["tv"]),
        (["tkd", "tsvd", "cfl2", "ndi", "star", "tv"], {"ndi": {"iterations": 10}}, ["ndi"]),
        (
            ["tkd", "isdu"],
            {"isdu": {"weights": "/abs/w.pt", "tile_size": 96, "device": "cpu"}},
            [],
        ),
    ],
)
def test_qsm_wf_graph(methods, options, weighted):
    wf = init_qsm_wf(methods=methods, options=options, magnitude_weights=weighted, name="qsm_x_wf")
    assert wf.name == "qsm_x_wf"
    expected = set()
    for m in methods:
        expected |= {
            ("inputnode", "local_field", f"invert_{m}", "local_field"),
            ("inputnode", "mask", f"invert_{m}", "mask"),
            (f"invert_{m}", "chi", "outputnode", f"chi_{m}"),
        }
    # the magnitude goes to exactly the methods asked to use it, as their weights image
    expected |= {("inputnode", "magnitude", f"invert_{m}", "weights_image") for m in weighted}
    assert _edges(wf) == expected
    for m in methods:
        node = wf.get_node(f"invert_{m}")
        assert isinstance(node.interface, DipoleInversion)
        assert node.inputs.method == m
        if m in options:
            assert node.inputs.options == options[m]  # passed on as given, checked by the step
        else:
            assert not isdefined(node.inputs.options)
        if m == "isdu":
            assert node.mem_gb == ISDU_NODE_MEM_GB
        else:
            assert node.mem_gb < ISDU_NODE_MEM_GB
