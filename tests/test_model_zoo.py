"""The model zoo (qsmflow.models.registry): parameter counts against the spec, training a few
steps and whole-volume inference of every model through the one trainer, checkpoint format and
inference path, the authors' SpiNet-QSM weights through ``--method spinet``, and the errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from qsmflow.cli.main import main
from qsmflow.errors import QSMInputError
from qsmflow.models.checkpoints import load_model, read_checkpoint, save_model
from qsmflow.models.inference import DEFAULT_WEIGHTS, pad_widths, predict_volume
from qsmflow.models.kernels import isdu_kernel
from qsmflow.models.registry import (
    MODELS,
    PAPER_DENOISER_PARAMETERS,
    build_model,
    denoiser_rows,
    parameter_count,
)
from qsmflow.training.config import TrainConfig, load_train_preset
from qsmflow.training.dataset import SimulatedPatchDataset
from qsmflow.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
SIM = dict(voxel_size=4.0, n_subjects=1, n_orientations=1, texture=False)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors (conftest)


@pytest.fixture(scope="module")
def four_patches() -> SimulatedPatchDataset:
    """Four 16^3 patches (4 mm head model, B0 along the third axis)."""
    return SimulatedPatchDataset(4, 16, seed=3, max_tilt_deg=0.0, **SIM)


# ------------------------------------------------------------------------ parameter counts

#: The spec's counts (isdu_qsmnet_spec.md sections 3 and 8).
SPEC_COUNTS = {
    "qsmnet": 99_453_985,
    "deepqsm": 5_647_857,
    "xqsm": 5_215_681,
    "lpcnn": 446_336 + 1,  # the prox WideResNet (1 channel) + alpha
    "spinet": 447_234,  # one shared denoiser with lambda and p
    "isdu": 4 * 447_234,  # four unshared denoisers
}


@pytest.mark.parametrize("name", list(SPEC_COUNTS))
def test_parameter_counts_equal_the_spec(name):
    total, trainable = parameter_count(name)
    assert total == SPEC_COUNTS[name] == MODELS[name].paper_parameters
    # p is frozen in ISDU (4 denoisers), learnable in SpiNet-QSM; everything else trains
    assert total - trainable == (4 if name == "isdu" else 0)


def test_ablation_denoiser_counts_and_the_models_command(capsys):
    counts = {r["name"]: r["parameters"] for r in denoiser_rows()}
    assert (
        counts
        == PAPER_DENOISER_PARAMETERS
        == {
            "wideresnet": 447_234,
            "simple-cnn": 339_464,
            "unet-mini": 5_648_308,
            "unet-heavy": 99_458_020,
        }
    )
    with torch.device("meta"):
        lpcnn = build_model("lpcnn")
    assert sum(p.numel() for p in lpcnn.prox.parameters()) == 446_336
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for n in (*SPEC_COUNTS.values(), *PAPER_DENOISER_PARAMETERS.values()):
        assert f"{n:,}" in out
    assert main(["models", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in data["models"]}
    assert set(rows) == set(MODELS)
    assert rows["qsmnet"]["family"] == "data-driven" and rows["lpcnn"]["family"] == "model-based"
    for name, row in rows.items():
        assert row["parameters"] == SPEC_COUNTS[name]
        assert row["preset"] == f"workflows/{MODELS[name].preset}", name
        assert (REPO / row["preset"]).is_file()


def test_presets_carry_the_supplement_settings():
    expect = {
        "qsmnet": (8, 25, "combined"),
        "deepqsm": (8, 25, "mse"),
        "xqsm": (8, 25, "mse"),
        "spinet": (2, 45, "combined"),
        "lpcnn": (2, 80, "combined"),
    }
    for name, (batch, epochs, loss) in expect.items():
        preset = load_train_preset(REPO / "workflows" / MODELS[name].preset)
        (_, values), *rest = preset.stages
        assert not rest
        assert values["architecture"] == name
        assert (values["batch_size"], values["epochs"], values["loss"]) == (batch, epochs, loss)
        assert values["lr"] == 1e-4


# --------------------------------------------------------- training, checkpoints, inference

#: (architecture, [model] settings): every model of the zoo and the ISDU ablation denoisers
#: (K = 1); dropout off so that a second pass over the same patches must lower the loss.
TRAINED = [
    ("spinet", {"dropout": 0.0, "dc_mode": "cg"}),
    ("lpcnn", {"dropout": 0.0}),
    ("qsmnet", {}),
    ("deepqsm", {}),
    ("xqsm", {}),
    ("isdu", {"denoiser": "simple-cnn"}),
    ("isdu", {"denoiser": "unet-mini"}),
    # slow: the 5^3 U-Net trains in the qsmnet case, a U-Net denoiser in the unet-mini one
    pytest.param(("isdu", {"denoiser": "unet-heavy"}), marks=pytest.mark.slow),
]


def _ids(item):
    name, model = item.values[0] if hasattr(item, "values") else item
    return model.get("denoiser", name)


@pytest.mark.parametrize("item", TRAINED, ids=[_ids(t) for t in TRAINED])
def test_every_model_trains_checkpoints_and_runs_whole_volumes(tmp_path, four_patches, item):
    name, model_kw = item
    isdu_family = name in ("isdu", "spinet")
    cfg = TrainConfig(
        architecture=name,
        n_iterations=3 if name == "spinet" else 1,
        shared_weights=name == "spinet",
        model=dict(model_kw),
        epochs=2,
        batch_size=2,
        lr=1e-4,
        loss="mse",
        progress=False,
        device="cpu",
        output_dir=str(tmp_path / "run"),
    )
    trainer = Trainer(cfg, four_patches)
    assert cfg.stage == ("unrolled" if name == "spinet" else "k1" if isdu_family else "train")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    final = trainer.fit()
    losses = [h["train_loss"] for h in trainer.history]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert losses[1] < losses[0], losses  # the second pass over the same patches fits better
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)

    raw = read_checkpoint(final)
    assert raw["format"] == "qsmflow-model" and raw["architecture"] == name
    loaded_name, model = load_model(final)
    assert loaded_name == name
    assert type(model) is type(trainer.model)
    if "denoiser" in model_kw:
        assert model.denoiser_name == model_kw["denoiser"]

    # whole volume: an odd-sized field, padded to the model's multiple and cropped back
    rng = np.random.default_rng(0)
    shape = (13, 11, 9)
    mask = np.zeros(shape, bool)
    mask[2:11, 2:9, 1:8] = True
    phi = np.where(mask, rng.normal(0, 0.01, shape), 0).astype(np.float32)
    chi = predict_volume(model, phi, mask, (1.0, 1.0, 1.0), (0, 0, 1), device="cpu")
    assert chi.shape == shape and chi.dtype == np.float32
    assert np.isfinite(chi).all() and np.all(chi[~mask] == 0) and np.abs(chi[mask]).max() > 0
    # the same numbers as the model on the padded array itself (padding to 16 per axis)
    widths = pad_widths(shape, 16)
    padded = np.pad(phi, widths)
    pmask = np.pad(mask, widths)
    kernel = isdu_kernel(padded.shape, (1.0, 1.0, 1.0), (0, 0, 1))
    with torch.no_grad():
        direct = model.eval()(
            torch.from_numpy(padded)[None, None],
            torch.from_numpy(pmask.astype(np.float32))[None, None],
            kernel,
        )
    crop = tuple(slice(a, a + n) for (a, _), n in zip(widths, shape, strict=True))
    direct = direct[0, 0].float().numpy()[crop]
    np.testing.assert_allclose(
        chi, np.where(mask, direct, 0), rtol=0, atol=1e-5 * np.abs(direct).max()
    )


def test_data_driven_nets_check_the_b0_direction(tmp_path):
    torch.manual_seed(0)
    model = build_model("deepqsm").eval()
    shape = (16, 16, 16)
    mask = np.ones(shape, bool)
    phi = np.zeros(shape, np.float32)
    tilted = (0.0, np.sin(np.radians(30)), np.cos(np.radians(30)))
    with pytest.raises(QSMInputError, match=r"30\.0 degrees.*model-based"):
        predict_volume(model, phi, mask, (1, 1, 1), tilted, device="cpu")
    ok = predict_volume(model, phi, mask, (1, 1, 1), (0, 0.1, 1), device="cpu")
    assert np.isfinite(ok).all()
    forced = predict_volume(model, phi, mask, (1, 1, 1), tilted, device="cpu", check_geometry=False)
    np.testing.assert_allclose(forced, ok, atol=1e-6)  # the kernel does not reach the network


# --------------------------------------------------------------- command line and pipeline


def _nifti(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4)), str(path))
    return path


def test_spinet_authors_weights_reproduce_the_golden_output(tmp_path, reference_isdu):
    inputs = np.load(reference_isdu / "inputs.npz")
    golden = np.load(reference_isdu / "spinet_k3.npz")
    field = _nifti(tmp_path / "phi.nii.gz", inputs["phi"])
    mask = _nifti(tmp_path / "mask.nii.gz", inputs["mask"].astype(np.uint8))
    out = tmp_path / "chi_spinet.nii.gz"
    weights = reference_isdu / "spinet_model_weights.pth"
    args = ["invert", str(field), "-m", str(mask), "-o", str(out), "--method", "spinet"]
    assert main([*args, "--weights", str(weights), "--device", "cpu"]) == 0
    chi = np.asarray(nib.load(str(out)).dataobj, dtype=np.float64)
    g = golden["chi_hat"].astype(np.float64)
    assert np.linalg.norm(chi - g) / np.linalg.norm(g) < 1e-5
    sidecar = json.loads(out.with_name("chi_spinet.json").read_text())
    assert sidecar["Network"] == "spinet"
    assert sidecar["Iterations"] == 3 and sidecar["SharedWeights"] is True


def test_zoo_errors_name_the_file_and_the_fix(tmp_path, capsys):
    rng = np.random.default_rng(1)
    shape = (16, 16, 16)
    mask = np.zeros(shape, np.uint8)
    mask[2:14, 2:14, 2:14] = 1
    field = _nifti(tmp_path / "phi.nii.gz", (rng.normal(0, 0.01, shape) * mask).astype("f4"))
    maskf = _nifti(tmp_path / "mask.nii.gz", mask)
    out = tmp_path / "chi.nii.gz"
    base = ["invert", str(field), "-m", str(maskf), "-o", str(out)]

    assert main([*base, "--method", "qsmnet"]) == 2
    assert "no shipped weights for qsmnet" in capsys.readouterr().err
    torch.manual_seed(0)
    tiny_lpcnn = build_model("lpcnn", width=4, n_blocks=1)
    lp = save_model(tmp_path / "lpcnn.pt", tiny_lpcnn, "lpcnn")
    assert main([*base, "--method", "qsmnet", "--weights", str(lp)]) == 2
    err = capsys.readouterr().err
    assert "lpcnn.pt" in err and "holds a lpcnn model, not qsmnet" in err
    assert main([*base, "--method", "lpcnn", "--weights", str(lp), "--adapt", "2"]) == 2
    assert "isdu and spinet" in capsys.readouterr().err
    assert not out.exists()

    # a model of the zoo through the step: the sidecar names it
    assert main([*base, "--method", "lpcnn", "--weights", str(lp), "--device", "cpu"]) == 0
    sidecar = json.loads(out.with_name("chi.json").read_text())
    assert sidecar["InversionMethod"] == sidecar["Network"] == "lpcnn"
    chi = np.asarray(nib.load(str(out)).dataobj)
    assert np.isfinite(chi).all() and np.all(chi[mask == 0] == 0)

    # the shipped weights are in the earlier ISDU-only format and still read as isdu
    if DEFAULT_WEIGHTS.is_file():
        assert read_checkpoint(DEFAULT_WEIGHTS)["format"] == "qsmflow-isdu"
        assert load_model(DEFAULT_WEIGHTS)[0] == "isdu"


def test_pipeline_config_takes_zoo_models(tmp_path):
    from qsmflow.config import config_from_dict

    cfg = config_from_dict(
        {
            "inversion": {
                "methods": ["tkd", "lpcnn", "qsmnet"],
                "options": {
                    "lpcnn": {"weights": "w.pt"},
                    "qsmnet": {"weights": "q.pt", "check_geometry": False},
                },
            }
        }
    )
    assert cfg.inversion.options["lpcnn"]["weights"] == str(Path("w.pt").resolve())
    with pytest.raises(QSMInputError, match=r"deepqsm has no shipped weights.*options\.deepqsm"):
        config_from_dict({"inversion": {"methods": ["tkd", "deepqsm"]}})
    with pytest.raises(QSMInputError, match="apply to isdu and spinet, not qsmnet"):
        config_from_dict(
            {"inversion": {"methods": ["qsmnet"], "options": {"qsmnet": {"iterations": 4}}}}
        )
