"""Fashion-MNIST from IDX files, the error when it is nowhere, and batches (sharded too)."""
import gzip
import struct

import numpy as np
import pytest
import torch

import labutils.data.fashion_mnist as fm
from labutils.data import (BatchLoader, DataNotFoundError, TensorImageDataset, find_fashion_mnist,
                           load_fashion_mnist_tensors, load_transformed_fashionMNIST, read_idx)


def write_idx(path, array: np.ndarray, gz: bool = True, drop_bytes: int = 0) -> None:
    """An unsigned-byte IDX file: magic (0, 0x08, ndim), sizes, data (optionally cut short)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim,
                                                                    *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if drop_bytes:
        data = data[:-drop_bytes]
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(data)


@pytest.fixture
def tiny_fmnist(tmp_path):
    """Four IDX files: 6 training and 2 test images of 28x28, each a flat grey level."""
    levels = np.array([0, 51, 102, 153, 204, 255, 0, 255])
    images = np.repeat(levels, 28 * 28).reshape(8, 28, 28)
    labels = np.arange(8) % 10
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images[:6])
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels[:6])
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images[6:])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels[6:], gz=False)   # plain works too
    return tmp_path


def test_reads_idx_files(tiny_fmnist):
    data = load_fashion_mnist_tensors(img_size=28, data_dir=tiny_fmnist)
    assert data.images.shape == (8, 1, 28, 28)          # train + test joined
    assert data.labels.tolist() == list(range(8))
    expected = torch.tensor([0, 51, 102, 153, 204, 255, 0, 255]) / 255 * 2 - 1
    assert torch.allclose(data.images[:, 0, 0, 0], expected, atol=1e-6)
    assert data.images.min() >= -1 and data.images.max() <= 1


def test_resizes_once_and_batches(tiny_fmnist):
    data, loader = load_transformed_fashionMNIST(16, batch_size=4, data_dir=tiny_fmnist)
    assert data.images.shape == (8, 1, 16, 16)
    # A flat image stays flat through the resize.
    assert torch.allclose(data.images[5], torch.ones(1, 16, 16), atol=1e-5)
    batches = list(loader)
    assert len(loader) == len(batches) == 2
    assert batches[0][0].shape == (4, 1, 16, 16)


def test_data_dir_from_environment(tiny_fmnist, monkeypatch):
    monkeypatch.setenv("LABUTILS_DATA_DIR", str(tiny_fmnist))
    assert find_fashion_mnist() == tiny_fmnist


def test_missing_everywhere_names_all_three_ways(tmp_path, monkeypatch):
    import torchvision

    def no_network(*args, **kwargs):
        raise ConnectionError("no network in this test")

    monkeypatch.delenv("LABUTILS_DATA_DIR", raising=False)
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setattr(fm, "DOWNLOAD_DIR", tmp_path / "download")
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", no_network)
    with pytest.raises(DataNotFoundError) as err:
        load_fashion_mnist_tensors(16)
    message = str(err.value)
    assert "LABUTILS_DATA_DIR" in message                          # 1. a folder of your own
    assert "apt-get install dataset-fashion-mnist" in message      # 2. the system copy
    assert "download" in message and "no network in this test" in message   # 3. download
    assert isinstance(err.value, FileNotFoundError)


def test_incomplete_folder_is_reported(tiny_fmnist, monkeypatch, tmp_path):
    (tiny_fmnist / "t10k-labels-idx1-ubyte").unlink()
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setattr(fm, "DOWNLOAD_DIR", tmp_path / "download")
    with pytest.raises(DataNotFoundError, match="no complete set"):
        find_fashion_mnist(tiny_fmnist, download=False)


def test_truncated_idx_is_a_clear_error(tmp_path):
    path = tmp_path / "cut-idx3-ubyte.gz"
    write_idx(path, np.zeros((3, 28, 28)), drop_bytes=100)
    with pytest.raises(ValueError, match="truncated"):
        read_idx(path)


def test_not_an_idx_file(tmp_path):
    path = tmp_path / "junk"
    path.write_bytes(b"<html>not found</html>")
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        read_idx(path)


def _numbered(n: int) -> TensorImageDataset:
    return TensorImageDataset(torch.zeros(n, 1, 2, 2), torch.arange(n))


def test_sharding_partitions_an_epoch():
    data = _numbered(24)
    seen = []
    for rank in range(3):
        loader = BatchLoader(data, 4, world_size=3, rank=rank, augment=None, seed=7)
        loader.set_epoch(2)
        assert len(loader) == 2
        seen.append(torch.cat([y for _, y in loader]).tolist())
    flat = sum(seen, [])
    assert sorted(flat) == list(range(24))                   # every image once, no overlap
    assert flat != list(range(24))                           # and shuffled


def test_loader_epochs_are_reproducible_and_differ():
    data = _numbered(16)
    loader = BatchLoader(data, 4, augment=None, seed=1)
    loader.set_epoch(0)
    first = torch.cat([y for _, y in loader])
    loader.set_epoch(0)
    assert torch.equal(first, torch.cat([y for _, y in loader]))
    loader.set_epoch(1)
    assert not torch.equal(first, torch.cat([y for _, y in loader]))


def test_loader_caps_and_rejects():
    data = _numbered(20)
    assert len(BatchLoader(data, 4, max_batches=2)) == 2
    assert len(BatchLoader(data, 6, drop_last=False)) == 4
    with pytest.raises(ValueError, match="fewer than one batch"):
        BatchLoader(data, 32)
    with pytest.raises(ValueError, match="positive"):
        BatchLoader(data, 0)
