"""``qsmflow export-weights``: inference-only copies of training checkpoints."""

from __future__ import annotations

import torch

from qsmflow.cli.main import main
from qsmflow.models import ISDUQSMNet, isdu_kernel, load_isdu, save_isdu
from qsmflow.models.checkpoints import checkpoint_extra, read_checkpoint


def _trained_like(tmp_path):
    torch.manual_seed(0)
    model = ISDUQSMNet(2, False, width=4, n_blocks=1, out_std=0.05)
    for net in model.denoisers:
        net.lambda_val.data.fill_(0.03)
    opt = torch.optim.Adam(model.parameters())
    model(
        torch.randn(1, 1, 8, 8, 8), torch.ones(1, 1, 8, 8, 8), torch.ones(1, 1, 8, 8, 8)
    ).sum().backward()
    opt.step()
    extra = {
        "training": {
            "epoch": 3,
            "optimizer": opt.state_dict(),
            "rng": [{"torch": torch.get_rng_state()}],
            "dataset": '{"kind": "phantom-patches"}',
            "history": [{"epoch": 3, "val_loss": 0.05}],
        }
    }
    return model.eval(), save_isdu(tmp_path / "epoch_0003.pt", model, extra)


def test_export_keeps_the_model_and_drops_training_state(tmp_path, capsys):
    model, ckpt = _trained_like(tmp_path)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("epochs = 3\n")
    out = tmp_path / "shipped.pt"
    args = ["export-weights", str(ckpt), str(out), "--recipe", str(recipe), "--note", "test"]
    assert main(args) == 0
    assert "sha256" in capsys.readouterr().out
    assert out.stat().st_size < ckpt.stat().st_size
    extra = checkpoint_extra(out)
    assert extra["provenance"] == {
        "source_checkpoint": "epoch_0003.pt",
        "note": "test",
        "recipe_file": "recipe.toml",
        "recipe": "epochs = 3\n",
    }
    assert set(extra["training"]) == {"epoch", "dataset", "history"}
    assert "optimizer" in read_checkpoint(ckpt)["extra"]["training"]
    # the exported model computes exactly what the checkpoint's does
    loaded = load_isdu(out)
    assert loaded.config == model.config
    phi = torch.randn(1, 1, 12, 12, 12) * 0.02
    mask = torch.ones_like(phi)
    kern = isdu_kernel((12, 12, 12), (1, 1, 1.5), (0.1, 0.2, 0.97))
    with torch.no_grad():
        assert torch.equal(loaded(phi, mask, kern), model(phi, mask, kern))


def test_export_refuses_what_it_cannot_use(tmp_path, reference_isdu, capsys):
    out = tmp_path / "x.pt"
    # the authors' plain state_dict is not a qsmflow training checkpoint
    pth = reference_isdu / "k1_full_Spinet_QSM_model_26_.pth"
    assert main(["export-weights", str(pth), str(out)]) == 2
    assert "not a qsmflow-model checkpoint" in capsys.readouterr().err
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a zip")
    assert main(["export-weights", str(bad), str(out)]) == 2
    assert "corrupt.pt" in capsys.readouterr().err
    _, ckpt = _trained_like(tmp_path)
    assert main(["export-weights", str(ckpt), str(out), "--recipe", str(tmp_path / "no.toml")]) == 2
    assert not out.exists()
