"""One home per step: ``qsmflow unwrap|bgremove|invert`` and the pipeline's nodes write the same.

Each test runs the CLI subcommand and the matching Nipype interface (configured as the pipeline
configures it from ``PipelineConfig`` defaults) on the same small simulated input (the built-in
phantom at 4 mm) and asserts identical sidecars apart from ``Sources`` (absolute paths here,
BIDS URIs after the derivatives sink) and identical voxel data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qsmflow.cli.main import main
from qsmflow.config import PipelineConfig, config_from_dict
from qsmflow.io.nifti import load_volume, save_volume, sidecar_path

TE_S = (0.004, 0.008, 0.012)
B0_TESLA = 3.0
WEIGHTS = "<tiny ISDU checkpoint>"
LPCNN_WEIGHTS = "<tiny LPCNN checkpoint>"


@pytest.fixture(scope="module")
def tiny_isdu_weights(tmp_path_factory) -> str:
    """A tiny random ISDU-QSMNet checkpoint (K = 2, width 4): fast, and the same for both."""
    import torch

    from qsmflow.models import ISDUQSMNet, save_isdu

    torch.manual_seed(0)
    model = ISDUQSMNet(2, False, width=4, n_blocks=2).eval()
    return str(save_isdu(tmp_path_factory.mktemp("isdu") / "tiny.pt", model))


@pytest.fixture(scope="module")
def tiny_lpcnn_weights(tmp_path_factory) -> str:
    """A tiny random LPCNN checkpoint (a model of the zoo beside ISDU-QSMNet)."""
    import torch

    from qsmflow.models import build_model, save_model

    torch.manual_seed(0)
    model = build_model("lpcnn", width=4, n_blocks=1).eval()
    return str(save_model(tmp_path_factory.mktemp("lpcnn") / "tiny.pt", model, "lpcnn"))


@pytest.fixture(scope="module")
def inputs(builtin_phantom_4mm, tmp_path_factory) -> dict[str, Path]:
    """Phase (rad) and magnitude (4-D), brain mask, and the fitted and local fields."""
    from qsmflow.simulate.gre import simulate_gre

    data = simulate_gre(builtin_phantom_4mm, te_s=TE_S, b0_tesla=B0_TESLA, snr=None, supersample=1)
    root = tmp_path_factory.mktemp("steps_single")
    paths = {
        "phase": save_volume(root / "phase.nii.gz", data.phase, data.affine),
        "magnitude": save_volume(root / "magnitude.nii.gz", data.magnitude, data.affine),
        "mask": save_volume(
            root / "mask.nii.gz", data.brain_mask.astype(np.uint8), data.affine, dtype=np.uint8
        ),
    }
    field = root / "field_hz.nii.gz"
    echo_times = [str(t) for t in TE_S]
    argv = ["unwrap", str(paths["phase"]), "-m", str(paths["mask"]), "-o", str(field)]
    assert main([*argv, "--magnitude", str(paths["magnitude"]), "--echo-times", *echo_times]) == 0
    local = root / "local_ppm.nii.gz"
    eroded = root / "local_mask.nii.gz"
    argv = ["bgremove", str(field), "-m", str(paths["mask"]), "-o", str(local)]
    assert main([*argv, "--b0", str(B0_TESLA), "--mask-out", str(eroded)]) == 0
    return {**paths, "field_hz": field, "local_field": local, "local_mask": eroded}


def _run_node(interface, folder: Path, monkeypatch) -> object:
    """Run a Nipype interface in ``folder`` (its working directory, as a node's)."""
    folder.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(folder)
    return interface.run().outputs


def _assert_same(cli_file: str | Path, node_file: str | Path) -> dict:
    """Same voxels and the same sidecar apart from Sources; returns the sidecar."""
    cli_data = load_volume(cli_file, ndim=None).data
    np.testing.assert_array_equal(cli_data, load_volume(node_file, ndim=None).data)
    cli_side = json.loads(sidecar_path(cli_file).read_text())
    node_side = json.loads(sidecar_path(node_file).read_text())
    assert cli_side.pop("Sources") and node_side.pop("Sources")
    assert cli_side == node_side
    return cli_side


def test_field_fit_cli_equals_node(inputs, tmp_path, monkeypatch):
    from qsmflow.interfaces.fieldmap import MultiEchoField

    cfg = PipelineConfig()
    node = MultiEchoField(
        phase=str(inputs["phase"]),
        magnitude=str(inputs["magnitude"]),
        mask=str(inputs["mask"]),
        echo_times=list(TE_S),
        method=cfg.field.unwrapping,
    )
    out = _run_node(node, tmp_path / "node", monkeypatch)
    side = _assert_same(inputs["field_hz"], out.field_hz)
    assert side["UnwrappingMethod"] == "temporal" == out.method  # "auto" resolved
    assert side["Units"] == "Hz" and side["EchoTime"] == list(TE_S)
    assert side["PhaseUnitsIn"] == "rad"


def test_bgremove_cli_equals_node(inputs, tmp_path, monkeypatch):
    from qsmflow.interfaces.fieldmap import BackgroundRemoval

    cfg = PipelineConfig().background
    node = BackgroundRemoval(
        field_hz=str(inputs["field_hz"]),
        mask=str(inputs["mask"]),
        field_strength=B0_TESLA,
        threshold=cfg.threshold,
        deconvolution=cfg.deconvolution,
    )
    out = _run_node(node, tmp_path / "node", monkeypatch)
    side = _assert_same(inputs["local_field"], out.local_ppm)
    np.testing.assert_array_equal(
        load_volume(inputs["local_mask"]).data, load_volume(out.eroded_mask).data
    )
    # the defaults 12..1 mm less the single-voxel spheres at 4 mm (1, 2 and 3 mm)
    assert side["RadiiMM"] == out.radii_mm == [float(r) for r in range(12, 3, -1)]
    assert side["BackgroundFieldRemoval"] == "V-SHARP" and side["Units"] == "ppm"
    assert side["MagneticFieldStrength"] == B0_TESLA and side["Threshold"] == cfg.threshold


@pytest.mark.parametrize(
    ("method", "flags", "options"),
    [
        ("tkd", [], {}),
        ("tkd", ["--threshold", "0.2"], {"threshold": 0.2}),
        ("ndi", ["--iterations", "15", "--lambda", "1e-4"], {"iterations": 15, "alpha": 1e-4}),
        ("star", ["--iterations", "4"], {"iterations": 4}),
        ("tv", ["--lambda", "3e-4", "--iterations", "20"], {"lam": 3e-4, "iterations": 20}),
        ("isdu", ["--device", "cpu", "--weights", WEIGHTS], {"device": "cpu", "weights": WEIGHTS}),
        ("lpcnn", ["--weights", LPCNN_WEIGHTS], {"weights": LPCNN_WEIGHTS}),
    ],
)
def test_invert_cli_equals_node(
    inputs, tiny_isdu_weights, tiny_lpcnn_weights, tmp_path, monkeypatch, method, flags, options
):
    from qsmflow.interfaces.inversion import DipoleInversion

    files = {WEIGHTS: tiny_isdu_weights, LPCNN_WEIGHTS: tiny_lpcnn_weights}
    flags = [files.get(f, f) for f in flags]
    options = {k: files.get(v, v) for k, v in options.items()}
    cfg = config_from_dict({"inversion": {"methods": [method], "options": {method: options}}})
    if method in ("isdu", "lpcnn"):
        monkeypatch.setenv("QSMFLOW_TORCH_THREADS", "2")
    cli_out = tmp_path / f"chi_{method}.nii.gz"
    argv = ["invert", str(inputs["local_field"]), "-m", str(inputs["local_mask"])]
    assert main([*argv, "-o", str(cli_out), "--method", method, *flags]) == 0
    node = DipoleInversion(
        local_field=str(inputs["local_field"]),
        mask=str(inputs["local_mask"]),
        method=method,
        options=cfg.inversion.options[method],
    )
    out = _run_node(node, tmp_path / "node", monkeypatch)
    side = _assert_same(cli_out, out.chi)
    assert side["InversionMethod"] == method and side["Units"] == "ppm"
    assert side["B0DirectionSource"] == "affine"
    np.testing.assert_allclose(side["B0Direction"], out.b0_dir)
    used = side["InversionOptions"]
    for key, value in options.items():
        assert used[key] == value
    if method in ("isdu", "lpcnn"):
        assert side["Network"] == method and side["DipoleKernelK0"] == pytest.approx(1 / 3)
    else:  # defaults filled in, the kernel convention recorded
        assert used["pad"] == 12 and side["DipoleKernelK0"] == 0.0
    if method == "tkd" and not options:
        assert used["threshold"] == 0.3
