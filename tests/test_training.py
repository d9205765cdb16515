"""Training on real Fashion-MNIST moves accuracy well above chance; checkpoints round-trip safely."""
from __future__ import annotations

import pickle

import pytest
import torch

from deeparc_pl import Classifier
from deeparc_pl.models import build
from deeparc_pl.models.checkpoint import load_model, read_checkpoint, save_checkpoint
from deeparc_pl.readapt.evaluate import accuracy


def test_short_training_beats_chance_on_fashion_mnist(fmnist_resnet):
    model, dm, before = fmnist_resnet
    after = accuracy(model, dm.test_set)
    assert before < 0.25
    assert after > 0.5, after  # chance is 0.10


def test_checkpoint_round_trip_and_formats(tmp_path):
    model = build("resnet8", 3, in_channels=1, image_size=8)
    x = torch.randn(2, 1, 8, 8)
    path = save_checkpoint(tmp_path / "m.ckpt", model, info={"note": "x"})
    with pytest.raises(FileExistsError):
        save_checkpoint(path, model)
    loaded, ckpt = load_model(path)
    model.eval(), loaded.eval()
    assert torch.equal(model(x), loaded(x)) and ckpt["info"] == {"note": "x"}
    # plain state dict needs the name from the configuration
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    loaded2, _ = load_model(tmp_path / "sd.pt", {"name": "resnet8", "num_classes": 3, "in_channels": 1, "image_size": 8})
    assert torch.equal(model(x), loaded2.eval()(x))
    # a Lightning checkpoint: state_dict with the model. prefix
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "pytorch-lightning_version": "2.6"}, tmp_path / "pl.ckpt")
    assert read_checkpoint(tmp_path / "pl.ckpt")["format"] == "lightning"
    with pytest.raises(ValueError, match="model.num_classes=3"):
        load_model(path, {"num_classes": 10})


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_corrupt_and_foreign_checkpoints(tmp_path):
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a readable weights file"):
        read_checkpoint(tmp_path / "junk.ckpt")
    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"x": _Evil()}, fh)
    with pytest.raises(ValueError, match="not a readable weights file"):
        read_checkpoint(tmp_path / "evil.pt")
    torch.save({"hello": "world"}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a deeparc_pl checkpoint"):
        read_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "missing.pt")
    other = build("resnet14", 3, in_channels=1, image_size=8)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not fit"):
        load_model(tmp_path / "other.pt", {"name": "resnet8", "num_classes": 3, "in_channels": 1, "image_size": 8})


def test_classifier_bad_arguments():
    model = build("mlp", 3, in_channels=1, image_size=4)
    with pytest.raises(ValueError, match="optimizer"):
        Classifier(model, optimizer="rmsprop")
    with pytest.raises(ValueError, match="num_classes"):
        Classifier(torch.nn.Linear(2, 2))


class UserNet(torch.nn.Module):
    """A user class outside the zoo, rebuilt from a checkpoint as 'tests.test_training:UserNet'."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_a_checkpoint_alone_never_decides_what_gets_imported_or_called(tmp_path):
    path = save_checkpoint(tmp_path / "user.ckpt", UserNet())
    saved = read_checkpoint(path)["model"]["name"]
    assert saved.endswith(":UserNet")
    with pytest.raises(ValueError, match=f"pass model.name={saved}"):
        load_model(path)
    loaded, _ = load_model(path, {"name": saved})  # the user names the class: rebuilt and loaded
    assert isinstance(loaded, UserNet)
    # a crafted spec naming a callable that is not an nn.Module class is refused before any call
    data = torch.load(path, weights_only=True)
    data["model"] = {"name": "sys:exit"}
    torch.save(data, tmp_path / "crafted.ckpt")
    with pytest.raises(ValueError, match="only rebuilt when you name it"):
        load_model(tmp_path / "crafted.ckpt")
    with pytest.raises(TypeError, match="not an nn.Module subclass"):
        load_model(tmp_path / "crafted.ckpt", {"name": "sys:exit"})


def test_a_checkpoint_whose_edits_cannot_be_replayed_is_corrupt(tmp_path):
    path = save_checkpoint(tmp_path / "m.ckpt", build("mlp", 3, in_channels=1, image_size=4))
    data = torch.load(path, weights_only=True)
    data["edits"] = [{"kind": "identity"}]  # no "layer"
    torch.save(data, tmp_path / "bad_edit.ckpt")
    with pytest.raises(ValueError, match="structural edit #0 .* cannot be replayed"):
        load_model(tmp_path / "bad_edit.ckpt")


@pytest.mark.parametrize("part", ["state_dict", "model", "edits"])
def test_a_deeparc_checkpoint_missing_a_part_is_corrupt_not_a_fresh_model(tmp_path, part):
    path = save_checkpoint(tmp_path / "m.ckpt", build("mlp", 3, in_channels=1, image_size=4))
    data = torch.load(path, weights_only=True)
    del data[part]
    torch.save(data, tmp_path / "broken.ckpt")
    with pytest.raises(ValueError, match=f"corrupt deeparc_pl checkpoint: '{part}'"):
        load_model(tmp_path / "broken.ckpt")
