"""Samples that would silently poison re-adaption (NaN inputs, labels that are not class indices,
a non-finite attack option, an empty or NaN adversarial set) are refused up front, naming the set."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import deeparc_pl as da
from deeparc_pl.readapt.attacks import AdversarialSet, generate
from deeparc_pl.readapt.mutants import mutate
from deeparc_pl.readapt.tasks import ModularRepair

pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = ["conv1", "conv2", "conv3"]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv3 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        return self.fc(torch.relu(self.conv3(torch.relu(self.conv2(x)))).flatten(1))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    net = Net().eval()
    sim = np.full((3, 3), 0.5)
    np.fill_diagonal(sim, 1.0)
    arch = da.SemanticArchitecture.from_similarity(LAYERS, sim, threshold=0.99, method="adjacent")
    x = torch.rand(40, 1, 8, 8)
    y = torch.randint(0, 3, (40,))
    return net, arch, x, y


def test_nan_inputs_are_refused_naming_the_set(setup):
    net, arch, x, y = setup
    bad = x.clone()
    bad[3, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="the target set D': the inputs contain 1 NaN/inf values"):
        ModularRepair(net, arch, 1, (x, y), (bad, y))
    with pytest.raises(ValueError, match="the target set D': the inputs contain 1 NaN"):
        da.locate(net, arch, (x, y), (bad, y), mode="implicit", correct_only=False)
    with pytest.raises(ValueError, match="the data to attack: the inputs contain 1 NaN"):
        generate(net, (bad, y), "fgsm")
    with pytest.raises(ValueError, match="inputs contain 1 NaN"):
        mutate(net, (bad, y), 0.1)


def test_labels_must_be_class_indices_of_the_model(setup):
    net, arch, x, y = setup
    for labels, message in ((torch.full_like(y, 99), "labels must be class indices in 0 .. 2, got values from 99 to 99"),
                            (torch.full_like(y, -3), "class indices .*got values from -3")):
        with pytest.raises(ValueError, match=message):
            ModularRepair(net, arch, 1, (x, labels), (x, y))
        with pytest.raises(ValueError, match=message):
            da.locate(net, arch, (x, y), (x, labels), mode="implicit", correct_only=False)
        with pytest.raises(ValueError, match=message):
            generate(net, (x, labels), "fgsm")
    with pytest.raises(TypeError, match="integer class indices"):
        generate(net, (x, y.float()), "fgsm")
    with pytest.raises(TypeError, match="integer class indices"):
        da.locate(net, arch, (x, y), (x, torch.nn.functional.one_hot(y, 3)), mode="implicit")


def test_attack_options_and_sets_are_checked(setup):
    net, _, x, y = setup
    with pytest.raises(ValueError, match=r"\['eps'\] must be finite"):
        generate(net, (x, y), "fgsm", eps=float("nan"))
    with pytest.raises(ValueError, match="at least one sample"):
        AdversarialSet(x[:0], x[:0], y[:0], "fgsm")
    with pytest.raises(ValueError, match=r"AdversarialSet \(x_adv\): the inputs contain"):
        AdversarialSet(torch.full_like(x, float("nan")), x, y, "fgsm")


def test_inputs_of_other_dtypes_still_train_in_float32(setup):
    """uint8 labels and half/double/uint8 inputs were accepted before the checks: they still are."""
    from deeparc_pl.readapt.tasks import FullFinetune

    net, _, x, y = setup
    for xs in (x.half(), x.double(), (x * 255).to(torch.uint8)):
        task = FullFinetune(net, None, None, (xs, y.to(torch.uint8)), (xs, y.to(torch.uint8)), beta=0.0)
        assert task._x.dtype == torch.float32 and task._y.dtype == torch.long
