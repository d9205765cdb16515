"""ModularRepair / ModularEnhance / FullFinetune: freezing, prefix cache, real FGSM enhancement, errors."""
from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from deeparc_pl import FullFinetune, ModularEnhance, ModularRepair, SemanticArchitecture
from deeparc_pl.readapt.evaluate import accuracy
from deeparc_pl.taps import LayerNameError
from test_locate import load_idx, train_tiny  # shared tiny CNN and IDX reader


@pytest.fixture(scope="module")
def setup(fmnist_dir):
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # shared 2-core machine: oversubscribed threads are 10x slower
    x, y = load_idx(fmnist_dir, "train", 3000)
    xt, yt = load_idx(fmnist_dir, "t10k", 1500)
    model = train_tiny(x, y, epochs=2)
    arch = SemanticArchitecture.from_similarity(model.layer_names, np.eye(4), 0.99)
    yield model, arch, x, y, xt, yt
    torch.set_num_threads(old)


def _trainer(epochs: int) -> pl.Trainer:
    return pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu", deterministic=True)


def _repair_sets(model, x, y):
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return (x[ok][:400], y[ok][:400]), (x[~ok][:200], y[~ok][:200])


def test_modular_repair_trains_only_the_module(setup):
    model, arch, x, y, _, _ = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref, tgt = _repair_sets(model, x, y)
    task = ModularRepair(model, arch, 2, ref, tgt, lr=0.05, batch_size=64)
    _trainer(2).fit(task)
    inside = set(task.span.parameters)
    assert inside == {"blocks.2.0.weight", "blocks.2.1.weight", "blocks.2.1.bias"}
    assert task.trainable_params == sum(p.numel() for n, p in model.named_parameters() if n in inside)
    assert task.total_params == sum(p.numel() for p in model.parameters())
    assert 0 < task.trainable_share < 0.5
    assert task.cached  # TinyNet is a chain: the prefix up to blocks.1 was cached
    after = task.model.state_dict()
    for name, value in before.items():
        owner = name.rsplit(".", 1)[0]
        if owner.startswith("blocks.2."):
            continue
        # parameters AND batch-norm running statistics outside the module are bit-identical
        assert torch.equal(after[name], value), name
    for name in inside:
        assert not torch.equal(after[name], before[name]), name
    assert not torch.equal(after["blocks.2.1.running_mean"], before["blocks.2.1.running_mean"])
    # the input model is untouched
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])
    assert all(p.requires_grad for p in model.parameters())


def test_cached_prefix_step_equals_uncached(setup):
    model, arch, x, y, _, _ = setup
    ref, tgt = _repair_sets(model, x, y)
    task = ModularRepair(model, arch, 2, ref, tgt, batch_size=64)
    task.train()
    task.prepare()
    assert task.cached
    assert not task.model.blocks[0][1].training and task.model.blocks[2][1].training  # frozen BN in eval
    batch = next(iter(task.train_dataloader()))
    assert bool(batch[3].any()) and bool((~batch[3]).any())
    stats = task.model.blocks[2][1].running_mean.clone()
    results = []
    for use_cache in (True, False):
        task.model.blocks[2][1].running_mean.copy_(stats)
        task.model.zero_grad()
        out = task.compute_loss(batch, use_cache=use_cache)
        out["loss"].backward()
        grads = {n: p.grad.clone() for n, p in task.model.named_parameters() if p.requires_grad}
        results.append((out["loss"].detach(), out["dev"].detach(), grads))
    (l1, d1, g1), (l2, d2, g2) = results
    assert float(d1) != 0.0
    assert torch.allclose(l1, l2, rtol=1e-5, atol=1e-6)
    assert torch.allclose(d1, d2, rtol=1e-5, atol=1e-6)
    assert set(g1) == set(g2) == set(task.span.parameters)
    for name in g1:
        assert torch.allclose(g1[name], g2[name], rtol=1e-4, atol=1e-6), name
    assert all(p.grad is None for n, p in task.model.named_parameters() if not p.requires_grad)


def test_modular_enhancement_on_real_fgsm(setup):
    from deeparc_pl.readapt.attacks import generate

    model, arch, x, y, xt, yt = setup
    train_adv = generate(model, (xt[:800], yt[:800]), "fgsm", eps=0.1, clip_values=(0.0, 1.0))
    held = generate(model, (xt[800:1400], yt[800:1400]), "fgsm", eps=0.1, clip_values=(0.0, 1.0))
    start = accuracy(model, (held.x_adv, held.y))
    task = ModularEnhance(model, arch, 3, None, train_adv, lr=0.05, batch_size=64)
    _trainer(4).fit(task)
    end = accuracy(task.model, (held.x_adv, held.y))
    assert end > start + 0.15, (start, end)
    assert accuracy(model, (held.x_adv, held.y)) == start  # the input model is untouched


def test_full_finetune_trains_everything(setup):
    model, arch, x, y, _, _ = setup
    ref, tgt = _repair_sets(model, x, y)
    modular = ModularRepair(model, arch, 1, ref, tgt, lr=0.05, batch_size=64)
    full = FullFinetune.from_task(modular)
    assert full.trainable_params == full.total_params == modular.total_params
    assert full.deviation == "nll" and not full.cached
    _trainer(1).fit(full)
    changed = [n for n, p in full.model.named_parameters() if not torch.equal(p, dict(model.named_parameters())[n])]
    assert len(changed) == len(list(model.parameters()))


def test_bad_inputs(setup):
    model, arch, x, y, _, _ = setup
    ref, tgt = _repair_sets(model, x, y)
    with pytest.raises(ValueError, match="not in the architecture"):
        ModularRepair(model, arch, 4, ref, tgt)
    with pytest.raises(ValueError, match="D'"):
        ModularRepair(model, arch, 1, ref, (x[:0], y[:0]))
    with pytest.raises(ValueError, match="both 0"):
        ModularRepair(model, arch, 1, ref, tgt, alpha=0.0, beta=0.0)
    other = SemanticArchitecture.from_similarity(["layer1.0", "layer2.0"], np.eye(2), 0.99)
    with pytest.raises(LayerNameError, match="does not have the architecture's layers"):
        ModularRepair(model, other, 0, ref, tgt)
    with pytest.raises(ValueError, match="paired"):
        ModularRepair(model, arch, 1, ref, tgt, deviation="cka")
    with pytest.raises(ValueError, match="pairs"):
        ModularEnhance(model, arch, 1, ref, tgt)
