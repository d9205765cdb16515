"""Readers and the data module on the real Fashion-MNIST files, plus a CIFAR-10 round trip."""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from deeparc_pl.data import ImageDataModule, read_cifar10, read_idx, write_cifar10_batch


@pytest.fixture(scope="module")
def fmnist(fmnist_dir: Path) -> dict[str, np.ndarray]:
    return {k: read_idx(fmnist_dir / f) for k, f in [
        ("train_x", "train-images-idx3-ubyte.gz"), ("train_y", "train-labels-idx1-ubyte.gz"),
        ("test_x", "t10k-images-idx3-ubyte.gz"), ("test_y", "t10k-labels-idx1-ubyte.gz")]}


def test_read_idx_real_fashion_mnist(fmnist):
    assert fmnist["train_x"].shape == (60000, 28, 28) and fmnist["train_x"].dtype == np.uint8
    assert fmnist["test_x"].shape == (10000, 28, 28)
    assert fmnist["train_y"].shape == (60000,) and fmnist["test_y"].shape == (10000,)
    assert np.bincount(fmnist["train_y"], minlength=10).tolist() == [6000] * 10
    assert np.bincount(fmnist["test_y"], minlength=10).tolist() == [1000] * 10
    assert fmnist["train_x"].max() == 255 and fmnist["train_x"].min() == 0
    assert 0.25 < fmnist["train_x"].mean() / 255 < 0.32  # the published mean 0.286


def test_read_idx_raw_equals_gz(fmnist_dir, tmp_path):
    raw = tmp_path / "t10k-labels-idx1-ubyte"
    raw.write_bytes(gzip.decompress((fmnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    np.testing.assert_array_equal(read_idx(raw), read_idx(fmnist_dir / "t10k-labels-idx1-ubyte.gz"))


def test_read_idx_rejects_truncated_and_foreign(fmnist_dir, tmp_path):
    data = gzip.decompress((fmnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    cut = tmp_path / "cut-labels.gz"
    cut.write_bytes(gzip.compress(data[:-10]))
    with pytest.raises(ValueError, match=r"cut-labels\.gz.*truncated"):
        read_idx(cut)
    magic = tmp_path / "magic"
    magic.write_bytes(b"\x01\x02" + data[2:])
    with pytest.raises(ValueError, match=r"magic.*magic number"):
        read_idx(magic)
    code = tmp_path / "code"
    code.write_bytes(b"\x00\x00\x07\x01" + data[4:])
    with pytest.raises(ValueError, match="dtype code"):
        read_idx(code)
    half_gz = tmp_path / "half.gz"
    half_gz.write_bytes((fmnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()[:100])
    with pytest.raises(ValueError, match="half.gz"):
        read_idx(half_gz)
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope.gz")


def _cifar_folder(root: Path) -> tuple[Path, list[tuple[np.ndarray, np.ndarray]]]:
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    batches = []
    sizes = [("data_batch_1", 30), ("data_batch_2", 20), ("data_batch_3", 4), ("data_batch_4", 3), ("data_batch_5", 3),
             ("test_batch", 15)]
    for name, n in sizes:
        x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        y = rng.integers(0, 10, size=n)
        write_cifar10_batch(folder / name, x, y)
        batches.append((x, y))
    return folder, batches


def test_cifar10_round_trip_and_datamodule(tmp_path):
    folder, b = _cifar_folder(tmp_path)
    with open(folder / "data_batch_1", "rb") as fh:  # the original layout: R plane, G plane, B plane
        raw = pickle.load(fh, encoding="bytes")
    assert raw[b"data"].shape == (30, 3072) and raw[b"data"].dtype == np.uint8
    np.testing.assert_array_equal(raw[b"data"][0, :1024], b[0][0][0][..., 0].reshape(-1))
    for where in (folder, tmp_path):  # the batches folder itself or its parent
        x, y = read_cifar10(where, train=True)
        np.testing.assert_array_equal(x, np.concatenate([p[0] for p in b[:5]]))
        np.testing.assert_array_equal(y, np.concatenate([p[1] for p in b[:5]]))
        assert y.dtype == np.int64 and x.shape == (60, 32, 32, 3)
        tx, ty = read_cifar10(where, train=False)
        np.testing.assert_array_equal(tx, b[5][0])
        np.testing.assert_array_equal(ty, b[5][1])
    with pytest.raises(FileExistsError):
        write_cifar10_batch(folder / "test_batch", b[5][0], b[5][1])
    dm = ImageDataModule("cifar10", tmp_path, batch_size=8, val_split=0.2, augment=True)
    assert (dm.in_channels, dm.image_size, dm.num_classes) == (3, 32, 10)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (48, 12, 15)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    tx, ty = next(iter(dm.test_dataloader()))
    mean = torch.tensor(dm.mean).view(3, 1, 1)
    std = torch.tensor(dm.std).view(3, 1, 1)
    expect = (torch.from_numpy(b[5][0][:8]).permute(0, 3, 1, 2).float() / 255 - mean) / std
    torch.testing.assert_close(tx, expect)
    assert float(tx.min()) >= dm.clip_values[0] - 1e-6 and float(tx.max()) <= dm.clip_values[1] + 1e-6


def test_cifar10_refuses_a_half_extracted_folder(tmp_path):
    folder, _ = _cifar_folder(tmp_path)
    (folder / "data_batch_3").unlink()
    (folder / "data_batch_5").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3, data_batch_5 not found"):
        read_cifar10(folder, train=True)


def test_cifar10_rejects_foreign_pickles(tmp_path):
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"images": [1]}, protocol=2))
    with pytest.raises(ValueError, match="b'data'"):
        read_cifar10(tmp_path, train=False)
    evil = tmp_path / "evil" / "test_batch"
    evil.parent.mkdir()
    evil.write_bytes(pickle.dumps(Path("x"), protocol=2))  # needs a global: refused, never built
    with pytest.raises(ValueError, match="not allowed"):
        read_cifar10(evil.parent, train=False)
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        read_cifar10(tmp_path / "evil", train=True)


def test_fashion_mnist_fraction_classes_test_size(fmnist_dir, fmnist):
    dm = ImageDataModule("fashion_mnist", fmnist_dir, fraction=0.1, classes=3, test_size=500, val_split=0.1,
                         batch_size=64)
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (3, 1, 28)
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 1800  # 600 of each of 3 classes
    assert len(dm.val_set) == 180 and len(dm.test_set) == 500
    counts = torch.bincount(torch.cat([dm.train_set.labels, dm.val_set.labels]), minlength=3).tolist()
    assert counts == [600, 600, 600]
    assert set(dm.train_set.labels.tolist()) == {0, 1, 2}
    # the test split is the standard test file in file order (classes 0..2, first 500 of them)
    idx = np.flatnonzero(fmnist["test_y"] < 3)[:500]
    np.testing.assert_array_equal(dm.test_set.labels.numpy(), fmnist["test_y"][idx])
    x, _ = dm.test_set.tensors()
    expect = (torch.from_numpy(fmnist["test_x"][idx]).float()[:, None] / 255 - dm.mean[0]) / dm.std[0]
    torch.testing.assert_close(x, expect)
    # seeded: same seed, same subset; another seed, another subset
    again = ImageDataModule("fashion_mnist", fmnist_dir, fraction=0.1, classes=3, test_size=500)
    again.setup()
    assert torch.equal(again.train_set.images, dm.train_set.images)
    other = ImageDataModule("fashion_mnist", fmnist_dir, fraction=0.1, classes=3, test_size=500, seed=1)
    other.setup()
    assert not torch.equal(other.train_set.images, dm.train_set.images)


def test_class_list_is_relabelled_in_given_order(fmnist_dir, fmnist):
    dm = ImageDataModule("fashion_mnist", fmnist_dir, classes=[7, 2], fraction=0.05, val_split=0.0)
    dm.setup()
    assert dm.num_classes == 2 and len(dm.val_set) == 0
    assert len(dm.train_set) == 600 and len(dm.test_set) == 2000
    first = int(np.flatnonzero(np.isin(fmnist["test_y"], [7, 2]))[0])
    assert dm.test_set.labels[0].item() == (0 if fmnist["test_y"][first] == 7 else 1)
    assert torch.bincount(dm.test_set.labels).tolist() == [1000, 1000]


def test_digits_default_needs_no_files(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPARC_DATA_DIR", str(tmp_path))
    dm = ImageDataModule(batch_size=32, augment=True)
    assert (dm.name, dm.num_classes, dm.in_channels, dm.image_size) == ("digits", 10, 1, 16)
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 1797 - 360 and len(dm.test_set) == 360
    from sklearn.datasets import load_digits

    np.testing.assert_array_equal(dm.test_set.labels.numpy(), load_digits().target[-360:])
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 16, 16) and y.shape == (32,)
    # seeded shuffle: two loaders give the same first batch, and it differs from file order
    x2, y2 = next(iter(dm.train_dataloader()))
    assert torch.equal(y, y2)
    _, y_plain = next(iter(dm.train_dataloader(shuffle=False)))
    assert torch.equal(y_plain, dm.train_set.labels[:32]) and not torch.equal(y, y_plain)
    assert torch.equal(next(iter(dm.predict_dataloader()))[1], dm.test_set.labels[:32])


def test_augmentation_only_on_train_and_keeps_shape():
    dm = ImageDataModule("digits", augment=True, val_split=0.1)
    dm.setup()
    torch.manual_seed(0)
    crops = torch.stack([dm.train_set[5][0] for _ in range(20)])
    assert crops.shape == (20, 1, 16, 16) and (crops != crops[0]).any()  # random crops differ
    assert torch.equal(dm.val_set[0][0], dm.val_set[0][0]) and dm.val_set.transform is None
    assert dm.test_set.transform is None


def test_missing_files_name_file_and_folder(tmp_path, monkeypatch):
    dm = ImageDataModule("mnist", tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        dm.setup()
    assert "train-images-idx3-ubyte.gz" in str(err.value) and str(tmp_path) in str(err.value)
    assert str(tmp_path / "mnist") in str(err.value)
    monkeypatch.setenv("DEEPARC_DATA_DIR", str(tmp_path / "env"))
    with pytest.raises(FileNotFoundError, match="/usr/share/datasets/fashion-mnist"):
        ImageDataModule("fashion_mnist").setup()


def test_data_dir_subfolder_and_env(fmnist_dir, monkeypatch):
    monkeypatch.setenv("DEEPARC_DATA_DIR", str(fmnist_dir.parent))
    dm = ImageDataModule("fashion_mnist", classes=[9], fraction=0.01, test_size=7)
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 60 and len(dm.test_set) == 7


@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(name="imagenet"), ValueError, "known: cifar10, digits, fashion_mnist, mnist"),
    (dict(fraction=0.0), ValueError, "fraction"),
    (dict(fraction=1.5), ValueError, "fraction"),
    (dict(val_split=1.0), ValueError, "val_split"),
    (dict(val_split=-0.1), ValueError, "val_split"),
    (dict(classes=11), ValueError, "classes"),
    (dict(classes=0), ValueError, "classes"),
    (dict(classes=[1, 10]), ValueError, "class 10 does not exist"),
    (dict(classes=[1, 1]), ValueError, "twice"),
    (dict(classes=[]), ValueError, "empty data set"),
    (dict(classes="3"), TypeError, "classes"),
    (dict(test_size=0), ValueError, "test_size"),
])
def test_bad_arguments_raise(kwargs, exc, msg):
    kwargs = {"name": "digits", **kwargs}
    with pytest.raises(exc, match=msg):
        ImageDataModule(**kwargs)


def test_selection_leaving_no_samples_raises():
    dm = ImageDataModule("digits", classes=[3], fraction=0.001, val_split=0.9)  # 1 sample, all to validation
    with pytest.raises(ValueError, match="empty data set"):
        dm.setup()
