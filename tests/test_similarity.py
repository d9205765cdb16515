"""Linear CKA: functional core and CKAMatrix metric against independent float64 NumPy references."""
from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from deeparc_pl.similarity import ESTIMATORS, CKAMatrix, cka_matrix, linear_cka
from deeparc_pl.similarity.functional import cka_from_hsic, gram, grams, hsic_terms

# ---------------------------------------------------------------- independent NumPy references


def np_hsic_centered(k: np.ndarray, l: np.ndarray) -> float:
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ l @ h))


def np_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    x = x.reshape(x.shape[0], -1).astype(np.float64)
    y = y.reshape(y.shape[0], -1).astype(np.float64)
    k, l = x @ x.T, y @ y.T
    return np_hsic_centered(k, l) / np.sqrt(np_hsic_centered(k, k) * np_hsic_centered(l, l))


def np_hsic1_loops(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. (2012) Eq. 5 term by term, with explicit index exclusions (no matrix algebra)."""
    n = k.shape[0]
    t1 = t2k = t2l = t3 = 0.0
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            t1 += k[i, j] * l[i, j]
            t2k += k[i, j]
            t2l += l[i, j]
            for q in range(n):
                if q != i:
                    t3 += k[i, j] * l[i, q]
    return (t1 + t2k * t2l / ((n - 1) * (n - 2)) - 2.0 * t3 / (n - 2)) / (n * (n - 3))


def np_grams(feats: list[torch.Tensor]) -> list[np.ndarray]:
    out = []
    for f in feats:
        a = f.reshape(f.shape[0], -1).double().numpy()
        out.append(a @ a.T)
    return out


def cosine_from(sums: np.ndarray) -> np.ndarray:
    d = np.sqrt(np.diag(sums))
    return sums / np.outer(d, d)


def random_layers(n: int, seed: int = 0, dtype=torch.float64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 4, generator=g, dtype=torch.float64)
    a = z @ torch.randn(4, 6, generator=g, dtype=torch.float64) + 0.3 * torch.randn(n, 6, generator=g, dtype=torch.float64)
    b = torch.relu(z @ torch.randn(4, 2 * 3 * 3, generator=g, dtype=torch.float64)).reshape(n, 2, 3, 3)
    c = torch.randn(n, 5, generator=g, dtype=torch.float64) + 2.0
    return [a.to(dtype), b.to(dtype), c.to(dtype)]


# ---------------------------------------------------------------- exact linear CKA


@pytest.mark.parametrize(
    "xshape,yshape,dtype",
    [((10, 3), (10, 7), torch.float64), ((50, 4, 5), (50, 2, 3, 2), torch.float64), ((7, 2, 3, 4), (7, 1), torch.float32), ((2, 5), (2, 3), torch.float64), ((40,), (40, 6), torch.float64)],
)
def test_exact_matches_numpy(xshape, yshape, dtype):
    g = torch.Generator().manual_seed(sum(xshape) + sum(yshape))
    x = torch.randn(*xshape, generator=g, dtype=torch.float64).to(dtype)
    y = (torch.randn(*yshape, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    if len(yshape) > 1 and xshape[0] == yshape[0]:  # make them related so CKA is not near 0
        y = y + 0.8 * x.reshape(xshape[0], -1)[:, :1].reshape(-1, *([1] * (len(yshape) - 1)))
    got = linear_cka(x, y)
    assert got.dtype == torch.float64 and got.ndim == 0
    assert abs(float(got) - np_linear_cka(x.double().numpy(), y.double().numpy())) < 1e-10


def test_exact_invariances_and_identity():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(60, 12, generator=g, dtype=torch.float64)
    y = torch.tanh(x @ torch.randn(12, 9, generator=g, dtype=torch.float64)) + 0.1 * torch.randn(60, 9, generator=g, dtype=torch.float64)
    base = float(linear_cka(x, y))
    assert 0.05 < base < 0.99
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    assert abs(float(linear_cka(x @ q, y)) - base) < 1e-12
    assert abs(float(linear_cka(3.7 * x, 0.01 * y)) - base) < 1e-12
    # not invariant to non-isotropic scaling: the invariance checks above are not vacuous
    assert abs(float(linear_cka(x * torch.linspace(0.1, 10, 12, dtype=torch.float64), y)) - base) > 1e-3
    assert float(linear_cka(x, x)) == pytest.approx(1.0, abs=1e-14)
    assert float(linear_cka(y.float(), y.float())) == pytest.approx(1.0, abs=1e-14)


def test_cka_matrix_exact_all_pairs():
    feats = random_layers(30, seed=2)
    m = cka_matrix(feats, "exact", names=["a", "b", "c"])
    assert m.shape == (3, 3) and m.dtype == torch.float64
    assert torch.equal(m, m.t()) and torch.all(m.diagonal() == 1.0)
    for i in range(3):
        for j in range(3):
            if i != j:
                assert abs(float(m[i, j]) - np_linear_cka(feats[i].numpy(), feats[j].numpy())) < 1e-10


# ---------------------------------------------------------------- minibatch (HSIC_1) and paper


def test_minibatch_hsic_matches_loop_formula():
    feats = random_layers(9, seed=3)
    got = hsic_terms(grams(feats, "minibatch"), "minibatch")
    ks = np_grams(feats)
    for i in range(3):
        for j in range(3):
            ref = np_hsic1_loops(ks[i], ks[j])
            assert abs(float(got[i, j]) - ref) < 1e-10 * max(1.0, abs(ref))


def test_minibatch_float32_close_to_float64_with_large_means():
    g = torch.Generator().manual_seed(4)
    base = torch.relu(torch.randn(64, 3000, generator=g, dtype=torch.float64)) * 50 + 200
    feats = [base, base + 5 * torch.randn(64, 3000, generator=g, dtype=torch.float64), torch.relu(base - 220)]
    ref = cka_matrix(feats, "minibatch")  # float64 inputs -> float64 Grams
    got = cka_matrix([f.float() for f in feats], "minibatch")
    assert float((got - ref).abs().max()) < 1e-6


def test_minibatch_approaches_exact():
    def data(n: int, seed: int) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, 3, generator=g, dtype=torch.float64)
        x = z @ torch.randn(3, 20, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
        y = torch.relu(z @ torch.randn(3, 30, generator=torch.Generator().manual_seed(98), dtype=torch.float64))
        x = x + 1.5 * torch.randn(n, 20, generator=g, dtype=torch.float64)
        y = y + 1.5 * torch.randn(n, 30, generator=g, dtype=torch.float64)
        perm = torch.randperm(n, generator=g)
        return [x[perm], y[perm]]

    def error(n: int, seed: int) -> float:
        x, y = data(n, seed)
        metric = CKAMatrix(["x", "y"], "minibatch")
        for bx, by in zip(x.split(32), y.split(32)):
            metric.update([bx, by])
        return abs(float(metric.compute()[0, 1]) - float(linear_cka(x, y)))

    small = np.mean([error(64, s) for s in range(5)])
    large = np.mean([error(2048, s) for s in range(2)])
    assert small > 0.02  # the estimators genuinely differ on little data
    assert large < small / 4 and large < 0.02


def test_paper_matches_uncentered_cosine():
    feats = random_layers(12, seed=5)
    ks = np_grams(feats)
    sums = np.array([[np.sum(a * b) for b in ks] for a in ks])
    got = cka_matrix(feats, "paper")
    assert np.abs(got.numpy() - cosine_from(sums)).max() < 1e-12
    # uncentered: differs from the centered estimators on data with a large mean
    assert float((got - cka_matrix(feats, "exact")).abs().max()) > 1e-2


def test_cka_from_hsic_symmetric_unit_diagonal():
    h = torch.tensor([[4.0, 1.0, 0.5], [1.0 + 1e-9, 9.0, 2.0], [0.5, 2.0, 1.0]], dtype=torch.float64)
    c = cka_from_hsic(h)
    assert torch.equal(c, c.t()) and torch.all(c.diagonal() == 1.0)
    assert float(c[0, 1]) == pytest.approx(1.0 / 6.0, rel=1e-8)
    assert float(c[1, 2]) == pytest.approx(2.0 / 3.0, rel=1e-12)


# ---------------------------------------------------------------- the Metric


@pytest.mark.parametrize("estimator", ["minibatch", "paper"])
def test_metric_over_batches_equals_sum_of_batches(estimator):
    feats = random_layers(40, seed=6)
    metric = CKAMatrix(["a", "b", "c"], estimator)
    sums = np.zeros((3, 3))
    for chunk in range(0, 40, 10):
        batch = [f[chunk : chunk + 10] for f in feats]
        metric.update(batch)
        ks = np_grams(batch)
        for i in range(3):
            for j in range(3):
                sums[i, j] += np_hsic1_loops(ks[i], ks[j]) if estimator == "minibatch" else np.sum(ks[i] * ks[j])
    got = metric.compute()
    assert got.dtype == torch.float64 and got.shape == (3, 3)
    assert np.abs(got.numpy() - cosine_from(sums)).max() < 1e-10
    assert int(metric.batches) == 4 and int(metric.samples) == 40
    single = CKAMatrix(3, estimator)
    single.update([f[:10] for f in feats])
    assert torch.allclose(single.compute(), cka_matrix([f[:10] for f in feats], estimator), atol=0, rtol=1e-14)


def test_metric_exact_equals_functional_on_all_samples():
    feats = random_layers(45, seed=7)
    metric = CKAMatrix(["a", "b", "c"], "exact")
    for chunk in range(0, 45, 15):
        metric.update([f[chunk : chunk + 15] for f in feats])
    assert float((metric.compute() - cka_matrix(feats, "exact")).abs().max()) < 1e-12


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_metric_keep_mask_equals_dropping(estimator):
    feats = random_layers(24, seed=8)
    keep = torch.ones(24, dtype=torch.bool)
    keep[[3, 10, 21, 22]] = False
    masked, dropped = CKAMatrix(3, estimator), CKAMatrix(3, estimator)
    for chunk in (slice(0, 12), slice(12, 24)):
        masked.update([f[chunk] for f in feats], keep=keep[chunk])
        dropped.update([f[chunk][keep[chunk]] for f in feats])
    masked.update([f[:5] for f in feats], keep=torch.zeros(5, dtype=torch.bool))  # all dropped: no-op
    assert int(masked.samples) == 20
    assert float((masked.compute() - dropped.compute()).abs().max()) < 1e-13


def _ddp_worker(rank: int, world: int, store: str, out: str, batches: list[list[torch.Tensor]]) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        results = {}
        for estimator in ("minibatch", "exact"):
            metric = CKAMatrix(["a", "b", "c"], estimator)
            for batch in batches[rank::world]:
                metric.update(batch)
            results[estimator] = metric.compute()
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_equal_one(tmp_path):
    feats = random_layers(70, seed=9, dtype=torch.float32)
    batches = [[f[i : i + 10] for f in feats] for i in range(0, 70, 10)]  # 7 batches: uneven split
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), out, batches), nprocs=2, join=True)
    got = torch.load(out)
    for estimator in ("minibatch", "exact"):
        single = CKAMatrix(3, estimator)
        for batch in batches:
            single.update(batch)
        assert float((got[estimator] - single.compute()).abs().max()) < 1e-12, estimator


# ---------------------------------------------------------------- bad input names the layer


def test_bad_inputs_raise_with_layer_name():
    good = random_layers(8, seed=10)
    names = ["stem", "block1", "block2"]
    nan = [good[0], good[1].clone(), good[2]]
    nan[1][2, 0, 0, 0] = float("nan")
    for estimator in ESTIMATORS:
        with pytest.raises(ValueError, match="block1.*NaN/inf"):
            cka_matrix(nan, estimator, names)
    inf = [good[0], good[1], good[2].clone()]
    inf[2][0, 0] = float("inf")
    with pytest.raises(ValueError, match="block2.*NaN/inf"):
        cka_matrix(inf, "minibatch", names)
    with pytest.raises(ValueError, match="block2.*NaN/inf"):
        CKAMatrix(names, "exact").update(inf)
    with pytest.raises(ValueError, match="'block1': 7"):
        cka_matrix([good[0], good[1][:7], good[2]], "minibatch", names)
    with pytest.raises(ValueError, match="'block1': 7"):
        CKAMatrix(names, "exact").update([good[0], good[1][:7], good[2]])
    with pytest.raises(ValueError, match="n - 3.*'stem' has n = 3"):
        CKAMatrix(names).update([f[:3] for f in good])
    with pytest.raises(ValueError, match="at least 2 layers.*stem"):
        cka_matrix(good[:1], "exact", names[:1])
    with pytest.raises(ValueError, match="at least 2 layers"):
        CKAMatrix(["only"])
    with pytest.raises(ValueError, match="unknown CKA estimator 'cka'"):
        cka_matrix(good, "cka")
    with pytest.raises(ValueError, match="unknown CKA estimator"):
        CKAMatrix(3, estimator="biased")
    with pytest.raises(ValueError, match="'x': 5.*'y': 6"):
        linear_cka(torch.randn(5, 2), torch.randn(6, 2))
    with pytest.raises(ValueError, match="at least 2 samples"):
        linear_cka(torch.randn(1, 2), torch.randn(1, 2))
    with pytest.raises(ValueError, match="'y'.*NaN/inf"):
        linear_cka(torch.randn(5, 2), torch.full((5, 2), float("inf")))
    const = [good[0], torch.ones(8, 4), good[2]]
    with pytest.raises(ValueError, match="'block1'.*constant"):
        cka_matrix(const, "minibatch", names)
    with pytest.raises(ValueError, match="empty data"):
        CKAMatrix(names).compute()
    with pytest.raises(ValueError, match="empty data"):
        CKAMatrix(names, "exact").compute()
    with pytest.raises(ValueError, match=r"3 layers \['stem'"):
        CKAMatrix(names).update(good[:2])
    with pytest.raises(ValueError, match="'stem': keep has 5 entries"):
        CKAMatrix(names).update(good, keep=torch.ones(5, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool tensor"):
        CKAMatrix(names).update(good, keep=torch.ones(8))
    with pytest.raises(TypeError, match="'block2'.*torch.Tensor"):
        cka_matrix([good[0], good[1], [1.0] * 8], "minibatch", names)


def test_inputs_not_modified_and_float32_gram_overflow_falls_back():
    feats = random_layers(10, seed=11, dtype=torch.float32)
    before = [f.clone() for f in feats]
    g = grams(feats, "minibatch")
    hsic_terms(g, "minibatch")
    g_before = g.clone()
    hsic_terms(g, "minibatch")
    assert torch.equal(g, g_before)
    assert all(torch.equal(a, b) for a, b in zip(feats, before))
    big = torch.full((4, 3), 1e20, dtype=torch.float32)
    big[0] = -1e20
    k = gram(big)  # squares overflow float32; recomputed in float64
    assert torch.isfinite(k).all() and float(k[0, 0]) == pytest.approx(3e40, rel=1e-6)


@pytest.mark.parametrize("estimator", ["minibatch", "paper"])
def test_update_grams_equals_update_with_and_without_keep(estimator):
    from deeparc_pl.similarity.functional import gram

    gen = torch.Generator().manual_seed(3)
    batches = [[torch.randn(12, 5, generator=gen) + 3.0, torch.randn(12, 2, 3, generator=gen)] for _ in range(3)]
    keep = torch.ones(12, dtype=torch.bool)
    keep[[2, 7, 11]] = False
    a, b = CKAMatrix(["p", "q"], estimator), CKAMatrix(["p", "q"], estimator)
    for i, feats in enumerate(batches):
        mask = keep if i == 1 else None
        a.update(feats, keep=mask)
        b.update_grams([gram(f, center=estimator == "minibatch") for f in feats], keep=mask)
    # equal up to float32 Gram rounding (update re-centers the kept sub-batch; update_grams slices)
    torch.testing.assert_close(b.compute(), a.compute(), rtol=0, atol=1e-7)
    assert int(a.samples) == int(b.samples) == 33
    with pytest.raises(ValueError, match="same samples"):
        b.update_grams([torch.eye(4, dtype=torch.float64), torch.eye(5, dtype=torch.float64)])
    with pytest.raises(ValueError, match="exact"):
        CKAMatrix(["p", "q"], "exact").update_grams([torch.eye(4), torch.eye(4)])


def test_stream_keeps_grams_not_activations():
    from torch import nn

    from deeparc_pl.similarity.stream import ActivationStream

    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))
    stream = ActivationStream(model, ["0", "1", "2"])
    with stream, torch.no_grad():
        model(torch.randn(10, 6))
        assert [tuple(o.shape) for o in stream.taps.outputs] == [(10, 10)] * 3
        stream.update()
    ref = CKAMatrix(["0", "1", "2"])
    x = torch.randn(10, 6)
    with stream, torch.no_grad():
        stream.reset()
        model(x)
        stream.update()
        h = model[0](x)
        ref.update([h, model[1](h), model(x)])
    torch.testing.assert_close(stream.compute(), ref.compute(), rtol=0, atol=1e-10)


def test_update_grams_invalidates_cached_compute():
    from deeparc_pl.similarity.functional import gram

    gen = torch.Generator().manual_seed(5)
    m = CKAMatrix(["p", "q"])
    f1 = [torch.randn(8, 4, generator=gen), torch.randn(8, 3, generator=gen)]
    f2 = [torch.randn(8, 4, generator=gen), torch.randn(8, 3, generator=gen)]
    m.update_grams([gram(f, center=True) for f in f1])
    first = m.compute().clone()
    m.update_grams([gram(f, center=True) for f in f2])
    ref = CKAMatrix(["p", "q"])
    ref.update(f1)
    ref.update(f2)
    assert not torch.equal(m.compute(), first)
    torch.testing.assert_close(m.compute(), ref.compute(), rtol=0, atol=1e-7)


def test_gram_scratch_buffer_gives_the_same_gram_and_is_reused():
    from torch import nn

    from deeparc_pl.similarity.functional import gram
    from deeparc_pl.similarity.stream import ActivationStream

    torch.manual_seed(0)
    x = torch.relu(torch.randn(20, 3, 4, 4) + 2.0)
    before = x.clone()
    scratch = torch.full((x.numel() + 5,), float("nan"))
    torch.testing.assert_close(gram(x, center=True, scratch=scratch), gram(x, center=True), rtol=0, atol=0)
    assert torch.equal(x, before) and not torch.isnan(scratch[: x.numel()]).any()  # the buffer was written
    for unusable in (torch.empty(x.numel() - 1), torch.empty(x.numel(), dtype=torch.float64)):
        torch.testing.assert_close(gram(x, center=True, scratch=unusable), gram(x, center=True), rtol=0, atol=0)

    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))
    stream = ActivationStream(model, ["0", "1", "2"])
    with stream, torch.no_grad():
        model(torch.randn(10, 6))
        assert stream._scratch.buffer.numel() == 10 * 32  # one buffer, the size of the largest layer
