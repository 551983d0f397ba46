"""Data loaders, on tiny fixtures written in each data set's real on-disk format."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

from study.core.errors import DataError, UserError
from study.data import datasets as data
from study.data.datasets import DATASETS, load_dataset, split_train_val

CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _cifar_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def write_cifar10(root: Path, n: int = 4) -> dict[str, np.ndarray]:
    """The official layout, re-pickled as Python 3 would: bytes keys, protocol 2 (arrays via _codecs.encode)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for i, name in enumerate(CIFAR10_FILES):
        batch = {b"batch_label": name.encode(), b"data": _cifar_images(n, i),
                 b"labels": [(i + j) % 10 for j in range(n)], b"filenames": [b"x.png"] * n}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        batches[name] = batch[b"data"]
    meta = {b"label_names": [f"class{k}".encode() for k in range(10)], b"num_cases_per_batch": n}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return batches


def write_cifar100(root: Path, n: int = 4) -> None:
    """str keys as the official Python 2 files load with latin1; protocol 5 (arrays via _frombuffer)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for i, name in enumerate(["train", "test"]):
        batch = {"data": _cifar_images(n, i), "fine_labels": [99 - j for j in range(n)],
                 "coarse_labels": [j % 20 for j in range(n)], "filenames": ["x.png"] * n}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=5))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [str(k) for k in range(100)]}, protocol=5))


def test_cifar10_loads_real_format(tmp_path: Path) -> None:
    batches = write_cifar10(tmp_path)
    ds = load_dataset("cifar10", tmp_path)
    assert ds.train_x.shape == (20, 3, 32, 32) and ds.train_x.dtype == torch.uint8
    assert ds.test_x.shape == (4, 3, 32, 32)
    assert ds.train_y.dtype == torch.int64 and ds.train_y[:8].tolist() == [0, 1, 2, 3, 1, 2, 3, 4]
    assert ds.num_classes == 10 and len(ds.mean) == len(ds.std) == 3 and ds.hflip and ds.crop_pad == 4
    # Row layout: 1024 red, 1024 green, 1024 blue, each 32x32 row-major. Green channel, row 5, column 7:
    flat = batches["data_batch_2"][1]
    assert ds.train_x[4 + 1, 1, 5, 7].item() == flat[1024 + 5 * 32 + 7]
    assert ds.test_x[3, 2, 31, 0].item() == batches["test_batch"][3][2048 + 31 * 32]
    assert np.array_equal(ds.train_x[0].numpy().reshape(-1), batches["data_batch_1"][0])


class _Python2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes bytes as Python 2 str opcodes, like the official CIFAR files (cPickle, protocol 2)."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def _save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        self.write(b"U" + bytes([n]) + obj if n < 256 else b"T" + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def test_cifar_batch_pickled_by_python2_and_numpy1(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    images = _cifar_images(3, seed=7)
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump({b"data": images, b"labels": [7, 8, 9]})
    # numpy 1.x named its module numpy.core; the array bytes travel as a latin1 str.
    raw = buffer.getvalue().replace(b"numpy._core.", b"numpy.core.")
    assert b"numpy.core.multiarray\n_reconstruct" in raw and b"_codecs" not in raw
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(raw)
    ds = load_dataset("cifar10", tmp_path)
    assert ds.test_y.tolist() == [7, 8, 9]
    assert np.array_equal(ds.test_x.numpy().reshape(3, -1), images)


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    write_cifar100(tmp_path)
    ds = load_dataset("cifar100", tmp_path)
    assert ds.num_classes == 100
    assert ds.train_x.shape == (4, 3, 32, 32) and ds.test_x.shape == (4, 3, 32, 32)
    assert ds.train_y.tolist() == [99, 98, 97, 96]


def test_missing_cifar_file_is_named(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", tmp_path)
    message = str(err.value)
    assert "data_batch_3" in message and "data_batch_2" not in message
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "python -m study data cifar10" in message


def test_missing_cifar100_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="train, test"):
        load_dataset("cifar100", tmp_path)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    evil = {b"data": _Evil(marker), b"labels": [0]}
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(DataError, match="data_batch_1.*refused to load global posix.system"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()
    # The same bytes through the standard unpickler would run the command: the test really is hostile.
    pickle.loads((tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes())
    assert marker.exists()


def test_corrupt_cifar_batch(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="test_batch"):
        load_dataset("cifar10", tmp_path)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes((0, 0, 0x08, array.ndim)) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _write_fashion_mnist(folder: Path, n_train: int = 6, n_test: int = 3) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": np.arange(n_train) % 10,
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": np.arange(n_test)[::-1] % 10}
    for stem, array in arrays.items():
        _write_idx(folder / f"{stem}.gz", array)
    return arrays


@pytest.fixture
def no_system_fashion_mnist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep a Debian-installed copy from answering for the fixture."""
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "no-system-copy")


@pytest.mark.usefixtures("no_system_fashion_mnist")
def test_fashion_mnist_idx_in_torchvision_layout(tmp_path: Path) -> None:
    arrays = _write_fashion_mnist(tmp_path / "FashionMNIST" / "raw")
    ds = load_dataset("fashion_mnist", tmp_path)
    assert ds.train_x.shape == (6, 1, 28, 28) and ds.test_x.shape == (3, 1, 28, 28)
    assert np.array_equal(ds.train_x[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert ds.test_y.tolist() == [2, 1, 0] and ds.num_classes == 10 and ds.hflip and ds.crop_pad == 2


@pytest.mark.usefixtures("no_system_fashion_mnist")
def test_fashion_mnist_bad_magic_and_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mnist", tmp_path)
    folder = tmp_path / "fashion-mnist"
    _write_fashion_mnist(folder)
    labels = np.arange(6, dtype=np.uint8)
    with gzip.open(folder / "train-labels-idx1-ubyte.gz", "wb") as f:  # an images header on a labels file
        f.write(bytes((0, 0, 0x08, 3)) + struct.pack(">3I", 6, 1, 1) + labels.tobytes())
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz.*magic"):
        load_dataset("fashion_mnist", tmp_path)


TINY_WNIDS = ["n02", "n01", "n03"]  # deliberately unsorted, as in the real wnids.txt


def _jpeg(path: Path, value: int, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, 255 - value, 128)
    Image.new(mode, (64, 64), color).save(path, "JPEG", quality=95)


def write_tinyimagenet(root: Path) -> dict[str, int]:
    """2 train images per class (one grayscale) and 4 val images; returns val file -> expected label."""
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(TINY_WNIDS) + "\n")
    for k, wnid in enumerate(TINY_WNIDS):
        for j in range(2):
            mode = "L" if (k, j) == (0, 1) else "RGB"
            _jpeg(base / "train" / wnid / "images" / f"{wnid}_{j}.JPEG", 40 * k + 10 * j, mode)
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("")  # present in the real archive
    val = {"val_0.JPEG": "n03", "val_1.JPEG": "n01", "val_2.JPEG": "n03", "val_3.JPEG": "n02"}
    lines = []
    for i, (name, wnid) in enumerate(val.items()):
        _jpeg(base / "val" / "images" / name, 50 * i, "L" if i == 2 else "RGB")
        lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    index = {wnid: i for i, wnid in enumerate(sorted(TINY_WNIDS))}
    return {name: index[wnid] for name, wnid in val.items()}


def test_tinyimagenet_val_labels_grayscale_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = write_tinyimagenet(tmp_path)
    ds = load_dataset("tinyimagenet", tmp_path)
    assert ds.num_classes == 3 and ds.crop_pad == 8 and ds.hflip
    assert ds.train_x.shape == (6, 3, 64, 64) and ds.test_x.shape == (4, 3, 64, 64)
    assert ds.train_y.tolist() == [0, 0, 1, 1, 2, 2]  # sorted wnids: n01, n02, n03
    assert ds.test_y.tolist() == list(expected.values())  # from val_annotations.txt, not folder names
    # Grayscale became 3 equal channels (n02 is class 1; its second image was grayscale).
    gray = ds.train_x[3].int()
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert abs(gray.float().mean().item() - 10) < 3
    cache = tmp_path / "tiny-imagenet-200" / data.TINYIMAGENET_CACHE
    assert cache.is_file()
    assert not list(cache.parent.glob("*.tmp"))

    def no_decoding(path: Path) -> np.ndarray:
        raise AssertionError(f"decoded {path} despite the cache")

    monkeypatch.setattr(data, "_read_rgb", no_decoding)
    again = load_dataset("tinyimagenet", tmp_path)
    assert torch.equal(again.train_x, ds.train_x) and torch.equal(again.test_y, ds.test_y)


def test_tinyimagenet_stale_cache_is_rebuilt(tmp_path: Path) -> None:
    write_tinyimagenet(tmp_path)
    load_dataset("tinyimagenet", tmp_path)
    base = tmp_path / "tiny-imagenet-200"
    (base / "wnids.txt").write_text("n01\nn02\n")  # the cache was made for three classes
    with pytest.raises(DataError, match="val_annotations.txt line 1"):  # re-read from disk: n03 is now unknown
        load_dataset("tinyimagenet", tmp_path)


def test_tinyimagenet_missing_image_is_named_and_nothing_cached(tmp_path: Path) -> None:
    write_tinyimagenet(tmp_path)
    base = tmp_path / "tiny-imagenet-200"
    (base / "val" / "images" / "val_2.JPEG").unlink()
    with pytest.raises(DataError, match="val_2.JPEG"):
        load_dataset("tinyimagenet", tmp_path)
    assert not (base / data.TINYIMAGENET_CACHE).exists() and not list(base.glob("*.tmp"))


def test_tinyimagenet_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="python -m study data tinyimagenet"):
        load_dataset("tinyimagenet", tmp_path)


def test_download_goes_through_torchvision_then_our_reader(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    calls = []

    def fake_cifar10(root: str, train: bool, download: bool) -> None:
        calls.append((root, download))
        write_cifar10(Path(root))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar10)
    ds = data.prepare_dataset("cifar10", tmp_path / "new")
    assert calls == [(str(tmp_path / "new"), True)] and ds.train_x.shape == (20, 3, 32, 32)
    load_dataset("cifar10", tmp_path / "new", download=True)
    assert len(calls) == 1  # present now: no second download

    def offline(root: str, train: bool, download: bool) -> None:
        raise OSError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    with pytest.raises(DataError, match="Downloading cifar100 into .*Name or service not known"):
        load_dataset("cifar100", tmp_path, download=True)


def test_prepare_tinyimagenet_downloads_and_checks_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.utils

    def fake_download(url: str, download_root: str, extract_root: str, md5: str, remove_finished: bool) -> None:
        assert url == data.TINYIMAGENET_URL and md5 == data.TINYIMAGENET_MD5
        write_tinyimagenet(Path(extract_root))

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", fake_download)
    assert data.prepare_tinyimagenet(tmp_path) == tmp_path / "tiny-imagenet-200"
    (tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DataError, match="val_annotations.txt is missing"):
        data.prepare_tinyimagenet(tmp_path)


def test_digits_loads() -> None:
    ds = load_dataset("digits", "unused")
    assert ds.train_x.shape == (1438, 1, 8, 8) and ds.test_x.shape == (359, 1, 8, 8)
    assert ds.num_classes == 10 and not ds.hflip and ds.train_x.max().item() == 255
    assert set(ds.test_y.tolist()) == set(range(10))
    # The test split is fixed, whatever seeds trials use.
    assert torch.equal(load_dataset("digits", "unused").test_x, ds.test_x)


def test_split_train_val_is_stratified_seeded_and_disjoint() -> None:
    ds = load_dataset("digits", "unused")
    tx, ty, vx, vy = split_train_val(ds, 0.25, seed=1)
    assert len(vy) == round(0.25 * len(ds.train_y)) and len(ty) + len(vy) == len(ds.train_y)
    # Per class, the validation share matches the class's share of the training set (within one image).
    counts, val_counts = torch.bincount(ds.train_y), torch.bincount(vy, minlength=10)
    assert torch.all((val_counts - counts * len(vy) / len(ds.train_y)).abs() <= 1)
    # Disjoint and complete: every training image lands in exactly one split (compare whole images).
    def rows(x: torch.Tensor, y: torch.Tensor) -> list[tuple[int, ...]]:
        return [(*xi.reshape(-1).tolist(), int(yi)) for xi, yi in zip(x, y)]

    assert sorted(rows(tx, ty) + rows(vx, vy)) == sorted(rows(ds.train_x, ds.train_y))
    same = split_train_val(ds, 0.25, seed=1)
    assert all(torch.equal(a, b) for a, b in zip((tx, ty, vx, vy), same))
    other = split_train_val(ds, 0.25, seed=2)
    assert not torch.equal(other[2], vx)
    assert len(split_train_val(ds, 100, seed=0)[3]) == 100


@pytest.mark.parametrize("val_size", [0, -5, 1438, 5000, 0.0, 1.0, 1.5])
def test_split_train_val_rejects_sizes(val_size: float) -> None:
    ds = load_dataset("digits", "unused")
    with pytest.raises(DataError, match="val_size"):
        split_train_val(ds, val_size, seed=0)


def test_unknown_dataset_lists_names(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_dataset("imagenet", tmp_path)
    assert isinstance(err.value, UserError)
    for name in DATASETS:
        assert name in str(err.value)
    with pytest.raises(DataError, match="cifar100"):
        data.prepare_dataset("nope", tmp_path)
