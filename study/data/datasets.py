"""Data sets by name, held whole in memory as uint8 tensors; augmentation happens per batch elsewhere.

Readers parse the real on-disk formats themselves (IDX, CIFAR pickles, Tiny-ImageNet JPEGs), so a missing or
broken file ends in a `DataError` that names the file and the fix instead of a library's generic message.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import math
import numbers
import os
import pickle
import struct
import warnings
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from study.core.errors import DataError, UserError
from study.core.registry import Registry
from study.data.splits import stratified_holdout as _stratified_holdout


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensor fields elementwise is meaningless here
class Dataset:
    """A whole data set in memory: official train and test splits plus what augmentation may do to it."""

    name: str  # registry name, e.g. "cifar10"
    train_x: torch.Tensor = field(repr=False)  # (N, C, H, W) uint8, 0-255
    train_y: torch.Tensor = field(repr=False)  # (N,) int64 class indices in [0, num_classes)
    test_x: torch.Tensor = field(repr=False)  # (M, C, H, W) uint8; held out: final and reproduce runs only
    test_y: torch.Tensor = field(repr=False)  # (M,) int64
    num_classes: int  # number of classes
    mean: tuple[float, ...]  # per-channel pixel mean, 0-1 scale (normalisation)
    std: tuple[float, ...]  # per-channel pixel standard deviation, 0-1 scale
    hflip: bool  # True when a horizontal flip keeps the label (false for digits)
    crop_pad: int  # random-crop augmentation: pixels of padding on each side before cropping back
    # a validation split of the data set's own (imagefolder's val/): used instead of a holdout of train
    val_x: torch.Tensor | None = field(default=None, repr=False)
    val_y: torch.Tensor | None = field(default=None, repr=False)
    classes: tuple[str, ...] = ()  # class names in label order, where the data set has them
    info: dict = field(default_factory=dict)  # what the loader wants recorded (cache folder, skipped images)

    def __post_init__(self) -> None:
        splits = [("train", self.train_x, self.train_y), ("test", self.test_x, self.test_y)]
        if self.val_x is not None or self.val_y is not None:
            if self.val_x is None or self.val_y is None:
                raise ValueError(f"{self.name} val split: want both images and labels, or neither")
            splits.append(("val", self.val_x, self.val_y))
        for split, x, y in splits:
            if x.dtype != torch.uint8 or x.dim() != 4 or y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise ValueError(f"{self.name} {split} split: want uint8 (N,C,H,W) images and int64 (N,) labels")
        if not len(self.mean) == len(self.std) == self.train_x.shape[1]:
            raise ValueError(f"{self.name}: mean/std need one value per channel")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        _, c, h, w = self.train_x.shape
        return (c, h, w)


Loader = Callable[..., Dataset]  # (root, download, **options) -> Dataset


def _dataset(name: str, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
             **info: Any) -> Dataset:
    (train_x, train_y), (test_x, test_y) = train, test
    return Dataset(name=name, train_x=_tensor(train_x, np.uint8), train_y=_tensor(train_y, np.int64),
                   test_x=_tensor(test_x, np.uint8), test_y=_tensor(test_y, np.int64), **info)


def _tensor(a: np.ndarray, dtype: type) -> torch.Tensor:
    a = np.ascontiguousarray(a, dtype=dtype)
    # Arrays over read-only buffers (np.frombuffer on bytes) cannot back a tensor safely: copy those once.
    return torch.from_numpy(a if a.flags.writeable else a.copy())


# ---------------------------------------------------------------------------------------------------------------
# Stratified splits
# ---------------------------------------------------------------------------------------------------------------

def split_train_val(ds: Dataset, val_size: int | float,  # noqa: PYI041  (int = count, float = fraction)
                    seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hold out a stratified validation split of ds's training set; the same seed gives the same split.

    `val_size` is a count (int) or a fraction of the training set (float in (0, 1)).
    Returns (train_x, train_y, val_x, val_y), each in the original order (split_indices' rows).
    """
    if ds.val_x is not None and ds.val_y is not None:  # the data set's own validation split (imagefolder's val/)
        return ds.train_x, ds.train_y, ds.val_x, ds.val_y
    keep, held = (torch.from_numpy(i) for i in split_indices(ds, val_size, seed))
    return ds.train_x[keep], ds.train_y[keep], ds.train_x[held], ds.train_y[held]


def split_indices(ds: Dataset, val_size: int | float,  # noqa: PYI041  (int = count, float = fraction)
                  seed: int, train_size: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The one train / validation draw: (training rows of ds.train_x, validation rows), each sorted.

    The validation rows are a stratified holdout of `val_size` training images (a count, or a fraction) drawn
    with `seed`, or, where the data set has its own validation split (imagefolder's val/), every row of ds.val_x
    beside all of ds.train_x. `train_size` (0: all) keeps a stratified subset of the training rows, drawn with a
    seed derived from `seed`. The resident and the streamed splits, split_train_val and the teacher-logit cache
    key all rest on these rows.
    """
    if ds.val_y is not None:
        keep, held = np.arange(len(ds.train_y)), np.arange(len(ds.val_y))
    else:
        keep, held = _stratified_holdout(ds.train_y.numpy(), holdout_count(ds, val_size), seed)
    if train_size and train_size < len(keep):
        # A draw apart from the holdout's: the subset's seed is derived from the split seed.
        _, chosen = _stratified_holdout(ds.train_y.numpy()[keep], int(train_size), seed * 7919 + 1)
        keep = keep[chosen]
    return keep, held


def count_or_fraction(val_size: float) -> int | float:
    """A config's val_size as split_indices takes it: a whole number of images (>= 1) as an int count, a fraction
    in (0, 1) as it is."""
    return int(val_size) if val_size >= 1 else val_size


def holdout_count(ds: Dataset, val_size: int | float) -> int:  # noqa: PYI041
    """How many training images val_size holds out (a count, or a fraction); DataError if a split would be empty."""
    n = len(ds.train_y)
    if isinstance(val_size, numbers.Integral) and not isinstance(val_size, bool):
        n_val = int(val_size)
    elif isinstance(val_size, numbers.Real) and not isinstance(val_size, bool):
        n_val = round(float(val_size) * n) if 0 < val_size < 1 else -1
    else:
        raise DataError(f"val_size must be a count or a fraction, got {val_size!r}.")
    if not 0 < n_val < n:
        raise DataError(f"val_size={val_size!r} must leave both splits non-empty: the {ds.name} training set has "
                        f"{n} images, so use a count from 1 to {n - 1} or a fraction between 0 and 1.")
    return n_val


# ---------------------------------------------------------------------------------------------------------------
# digits (scikit-learn, ships inside the wheel)
# ---------------------------------------------------------------------------------------------------------------

DIGITS_TEST_FRACTION = 0.2  # digits has no official test split: a fixed stratified 20% stands in for one
DIGITS_SPLIT_SEED = 0  # fixed and separate from trial seeds, so every trial sees the same test images


@functools.lru_cache(maxsize=1)  # once per process: a reused Ray actor runs many trials (read-only arrays)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 8, 8) float pixels in 0-16 and (1797,) labels, read-only."""
    images, y = _read_digits()
    images.setflags(write=False)
    y.setflags(write=False)
    return images, y


def _read_digits() -> tuple[np.ndarray, np.ndarray]:
    # load_digits reads sklearn/datasets/data/digits.csv.gz; reading that file directly skips the slow import of
    # sklearn.datasets (docs/HOW_IT_RUNS.md, "Training speed"). Fall back to the public API if the wheel's layout
    # ever changes.
    import importlib.util
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.origin is not None:
        csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
        if csv.is_file():
            table = np.loadtxt(csv, delimiter=",")
            if table.shape == (1797, 65):
                return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits
    bunch = load_digits()
    return bunch.images, bunch.target.astype(np.int64)


def _load_digits(root: Path, download: bool, **_: Any) -> Dataset:
    del root, download  # bundled with scikit-learn
    images, y = _digits_arrays()
    x = np.rint(images * (255 / 16)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    train_idx, test_idx = _stratified_holdout(y, round(DIGITS_TEST_FRACTION * len(y)), DIGITS_SPLIT_SEED)
    train_pixels = x[train_idx] / 255.0
    return _dataset(
        "digits", (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx]), num_classes=10,
        mean=(float(train_pixels.mean()),), std=(float(train_pixels.std()),),
        hflip=False,  # a mirrored 2 or 7 is not a 2 or 7
        crop_pad=1,  # 8x8 images: one pixel of shift is already 12%
    )


# ---------------------------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX files)
# ---------------------------------------------------------------------------------------------------------------

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
_FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _fashion_mnist_dirs(root: Path) -> list[Path]:
    """Where the IDX files may be, in order: torchvision's layout, a plain folder, the Debian package."""
    return [root / "FashionMNIST" / "raw", root / "fashion-mnist", FASHION_MNIST_SYSTEM_DIR]


def _find_fashion_mnist(root: Path) -> list[Path] | None:
    for folder in _fashion_mnist_dirs(root):
        # Prefer the uncompressed file (torchvision leaves both); it reads faster.
        found = [next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)
                 for stem in _FASHION_MNIST_FILES]
        if all(p is not None for p in found):
            return [p for p in found if p is not None]
    return None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (MNIST format), gzipped or plain, with `ndim` dimensions."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"Cannot read {path} ({e}); delete it and fetch the data again.") from e
    header = 4 + 4 * ndim
    # Magic number: two zero bytes, type code 0x08 (unsigned byte), number of dimensions.
    if len(raw) < header or raw[:4] != bytes((0, 0, 0x08, ndim)):
        raise DataError(f"{path} is not an IDX file of {ndim}-D unsigned bytes (bad magic number {raw[:4].hex()}); "
                        "delete it and fetch the data again.")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path} holds {data.size} bytes of data but its header says {shape}; it is truncated or "
                        "corrupt, so delete it and fetch the data again.")
    return data.reshape(shape)


def _load_fashion_mnist(root: Path, download: bool, **_: Any) -> Dataset:
    files = _find_fashion_mnist(root)
    if files is None and download:
        _torchvision_download("FashionMNIST", "fashion_mnist", root)
        files = _find_fashion_mnist(root)
    if files is None:
        searched = ", ".join(str(d) for d in _fashion_mnist_dirs(root))
        raise DataError(f"Fashion-MNIST IDX files ({', '.join(_FASHION_MNIST_FILES)}, optionally .gz) not found in "
                        f"any of {searched}; run `python -m study data fashion_mnist --root {root}`, set "
                        "download: true, or `apt-get install dataset-fashion-mnist`.")
    train_x, train_y, test_x, test_y = (read_idx(p, ndim) for p, ndim in zip(files, (3, 1, 3, 1)))
    for x, y, px, py in ((train_x, train_y, files[0], files[1]), (test_x, test_y, files[2], files[3])):
        if len(x) != len(y) or (len(y) and y.max() >= 10):
            raise DataError(f"{px} and {py} do not match ({len(x)} images, {len(y)} labels in 0-9); "
                            "fetch both files again.")
    return _dataset(
        "fashion_mnist", (train_x[:, None], train_y), (test_x[:, None], test_y), num_classes=10,
        mean=(0.2860,), std=(0.3530,),  # train-set statistics
        hflip=True,  # clothes are left-right symmetric classes
        crop_pad=2,  # 28x28 images
    )


# ---------------------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (python pickle batches)
# ---------------------------------------------------------------------------------------------------------------

def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 pickles bytes with protocol < 3 as _codecs.encode(text, "latin1"); allow that form only.
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refused _codecs.encode(..., {encoding!r})")
    return text.encode("latin1")


def _numpy_pickle_globals() -> dict[tuple[str, str], Any]:
    """The only globals a pickled dict of numpy arrays, lists, strings and numbers refers to."""
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                           ("_codecs", "encode"): _latin1_encode}
    for package in ("numpy.core", "numpy._core"):  # pickles written by numpy 1.x and 2.x name different modules
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct  # ndarray, protocol < 5
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar  # numpy scalars
        # ndarray, protocol 5 (numpy's private reader: absent from its stubs)
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer  # type: ignore[attr-defined]
    return allowed


_PICKLE_GLOBALS = _numpy_pickle_globals()


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can build only dicts, lists, strings, numbers and numpy arrays, so a file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        """The allowed global `module.name`; UnpicklingError for any other."""
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load global {module}.{name}") from None


@dataclass(frozen=True)
class _CifarSpec:
    title: str  # name in messages
    folder: str  # folder under root, as the official archive unpacks
    train_files: tuple[str, ...]
    test_file: str
    label_key: str  # key of the labels in each batch dict
    num_classes: int
    mean: tuple[float, float, float]  # train-set statistics, 0-1 scale
    std: tuple[float, float, float]
    url: str  # official archive, for messages


_CIFAR = {
    "cifar10": _CifarSpec("CIFAR-10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                          "test_batch", "labels", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                          "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "cifar100": _CifarSpec("CIFAR-100", "cifar-100-python", ("train",), "test", "fine_labels", 100,
                           (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                           "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
}


def read_cifar_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR python batch file -> ((n, 3, 32, 32) uint8 images, (n,) int64 labels)."""
    fix = f"delete {path} and fetch the data set again"
    try:
        with open(path, "rb") as f:
            # latin1: the official files were pickled by Python 2, whose str holds the raw array bytes.
            entry = RestrictedUnpickler(f, encoding="latin1").load()
    except OSError as e:
        raise DataError(f"Cannot read {path} ({e}).") from e
    except Exception as e:  # a corrupt or hostile pickle can fail in many ways; none of them is a bug here
        raise DataError(f"{path} is not a valid CIFAR batch file ({type(e).__name__}: {e}); {fix}.") from e
    if not isinstance(entry, dict):
        raise DataError(f"{path} does not hold a CIFAR batch dict; {fix}.")
    # Keys are str in the official (Python 2) files read with latin1, bytes in files re-pickled by Python 3.
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    data, labels = entry.get("data"), entry.get(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path} has no uint8 'data' array of shape (n, 3072); {fix}.")
    if labels is None:
        raise DataError(f"{path} has no '{label_key}' entry; {fix}.")
    y = np.asarray(labels, dtype=np.int64)
    if y.shape != (len(data),) or (len(y) and (y.min() < 0 or y.max() >= num_classes)):
        raise DataError(f"{path} has {len(data)} images but its '{label_key}' are not {len(data)} labels in "
                        f"0-{num_classes - 1}; {fix}.")
    # Each row is 1024 red, then 1024 green, then 1024 blue values, each channel row-major.
    return data.reshape(-1, 3, 32, 32), y


def _load_cifar(name: str, root: Path, download: bool) -> Dataset:
    spec = _CIFAR[name]
    folder = root / spec.folder
    files = (*spec.train_files, spec.test_file)

    def missing() -> list[str]:
        return [f for f in files if not (folder / f).is_file()]

    if missing() and download:
        _torchvision_download(name.upper(), name, root)
    if absent := missing():
        raise DataError(f"{spec.title} files missing from {folder}: {', '.join(absent)}; run "
                        f"`python -m study data {name} --root {root}` (downloads them), set download: true, or "
                        f"unpack {spec.url} into {root}.")
    parts = [read_cifar_batch(folder / f, spec.label_key, spec.num_classes) for f in spec.train_files]
    train = (np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts]))
    test = read_cifar_batch(folder / spec.test_file, spec.label_key, spec.num_classes)
    return _dataset(name, train, test, num_classes=spec.num_classes, mean=spec.mean, std=spec.std,
                    hflip=True, crop_pad=4)  # the standard CIFAR recipe: flip + 4-px padded crop


def _torchvision_download(cls_name: str, name: str, root: Path) -> None:
    """Fetch with torchvision's downloader (it checks the archive's md5); our readers parse the result."""
    import torchvision.datasets

    root.mkdir(parents=True, exist_ok=True)
    try:
        getattr(torchvision.datasets, cls_name)(str(root), train=True, download=True)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; a bad checksum is a RuntimeError
        raise DataError(f"Downloading {name} into {root} failed ({e}); check the network, or copy the files "
                        f"there by hand and run without download.") from e


# ---------------------------------------------------------------------------------------------------------------
# Tiny-ImageNet (JPEG folders, decoded once and cached)
# ---------------------------------------------------------------------------------------------------------------

TINYIMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINYIMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
TINYIMAGENET_CACHE = ".cache_uint8.npz"  # decoded arrays, under root/tiny-imagenet-200/
_TINY_CACHE_VERSION = 1  # bump when the cached layout changes
_TINY_SIZE = 64


def _tiny_missing_error(base: Path, what: str, root: Path) -> DataError:
    return DataError(f"Tiny-ImageNet is incomplete at {base}: {what}; run "
                     f"`python -m study data tinyimagenet --root {root}` (downloads it), set download: true, "
                     f"or unzip {TINYIMAGENET_URL} into {root}.")


def _tiny_wnids(base: Path, root: Path) -> list[str]:
    path = base / "wnids.txt"
    if not path.is_file():
        raise _tiny_missing_error(base, "wnids.txt is missing", root)
    wnids = path.read_text().split()
    if not wnids or len(set(wnids)) != len(wnids):
        raise DataError(f"{path} must list distinct class ids (wnids), one a line; fetch the data set again.")
    return sorted(wnids)  # class index = position in sorted order, as ImageFolder numbers the train folders


def _tiny_file_lists(base: Path, wnids: list[str], root: Path) -> tuple[list[Path], list[int], list[Path], list[int]]:
    """Image paths and labels of the train split and of the official val split (our test split)."""
    index = {wnid: i for i, wnid in enumerate(wnids)}
    train_paths: list[Path] = []
    train_y: list[int] = []
    for wnid, label in index.items():
        folder = base / "train" / wnid / "images"
        if not folder.is_dir():
            raise _tiny_missing_error(base, f"{folder} is missing", root)
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))
        train_paths += images
        train_y += [label] * len(images)
    # val/ is one flat folder; its labels live only in val_annotations.txt (file, wnid, 4 box numbers).
    annotations = base / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise _tiny_missing_error(base, f"{annotations} is missing", root)
    test_paths: list[Path] = []
    test_y: list[int] = []
    for lineno, line in enumerate(annotations.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in index:
            raise DataError(f"{annotations} line {lineno} is not 'file<TAB>wnid<TAB>box' with a wnid from "
                            "wnids.txt; fetch the data set again.")
        test_paths.append(base / "val" / "images" / parts[0])
        test_y.append(index[parts[1]])
    if not train_paths or not test_paths:
        raise _tiny_missing_error(base, "no train images or no val annotations found", root)
    return train_paths, train_y, test_paths, test_y


def _read_rgb(path: Path) -> np.ndarray:
    """One Tiny-ImageNet JPEG -> (3, 64, 64) uint8; grayscale images become 3 equal channels."""
    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
    except OSError as e:  # missing, truncated or not an image (UnidentifiedImageError is an OSError)
        raise DataError(f"Cannot decode {path} ({e}); fetch Tiny-ImageNet again.") from e
    if rgb.shape != (_TINY_SIZE, _TINY_SIZE, 3):
        raise DataError(f"{path} is {rgb.shape[1]}x{rgb.shape[0]} pixels; Tiny-ImageNet images are 64x64.")
    return rgb.transpose(2, 0, 1)


def _decode_all(paths: list[Path]) -> np.ndarray:
    out = np.empty((len(paths), 3, _TINY_SIZE, _TINY_SIZE), dtype=np.uint8)  # (N, C, H, W)
    # PIL releases the GIL while decoding, so threads help on a multi-core machine.
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    try:
        for i, image in enumerate(pool.map(_read_rgb, paths)):
            out[i] = image
    finally:  # on a bad image, drop the queued decodes instead of finishing all of them first
        pool.shutdown(cancel_futures=True)
    return out


def _read_tiny_cache(path: Path, wnids: list[str]) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when there is no cache or it belongs to other classes or an older layout."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != _TINY_CACHE_VERSION or z["wnids"].tolist() != wnids:
                return None
            return {k: z[k] for k in ("train_x", "train_y", "test_x", "test_y")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        warnings.warn(f"Ignoring unreadable Tiny-ImageNet cache {path} ({e}); decoding the JPEGs again.",
                      stacklevel=2)
        return None


def _load_tinyimagenet(root: Path, download: bool, **_: Any) -> Dataset:
    base = root / "tiny-imagenet-200"
    if download and not (base / "wnids.txt").is_file():
        prepare_tinyimagenet(root)
    wnids = _tiny_wnids(base, root)
    cache = base / TINYIMAGENET_CACHE
    arrays = _read_tiny_cache(cache, wnids)
    if arrays is None:  # first load: decoding ~110k JPEGs takes minutes, so keep the result
        train_paths, train_y, test_paths, test_y = _tiny_file_lists(base, wnids, root)
        arrays = {"train_x": _decode_all(train_paths), "train_y": np.asarray(train_y, dtype=np.int64),
                  "test_x": _decode_all(test_paths), "test_y": np.asarray(test_y, dtype=np.int64)}
        try:
            from study.core.io import write_atomic  # temp file beside it, then renamed: never a half-written cache

            members: dict[str, Any] = {"version": np.asarray(_TINY_CACHE_VERSION), "wnids": np.asarray(wnids),
                                       **arrays}
            write_atomic(cache, lambda f: np.savez(f, **members), "wb")
        except OSError as e:  # e.g. a read-only shared copy: still usable, only slower next time
            warnings.warn(f"Could not write the Tiny-ImageNet cache {cache} ({e}); the next load decodes again.",
                          stacklevel=2)
    return _dataset(
        "tinyimagenet", (arrays["train_x"], arrays["train_y"]), (arrays["test_x"], arrays["test_y"]),
        num_classes=len(wnids), mean=(0.4802, 0.4481, 0.3975), std=(0.2770, 0.2691, 0.2821),  # train-set stats
        hflip=True,
        crop_pad=8,  # 64x64 images: the CIFAR recipe's 4 px on 32 px, scaled to the same 1/8 of the side
    )


def prepare_tinyimagenet(root: str | Path) -> Path:
    """Download and unzip Tiny-ImageNet into root (skipped when present); check the layout; return its folder."""
    root = Path(root).expanduser()
    base = root / "tiny-imagenet-200"
    if not (base / "wnids.txt").is_file():
        from torchvision.datasets.utils import download_and_extract_archive

        root.mkdir(parents=True, exist_ok=True)
        try:
            download_and_extract_archive(TINYIMAGENET_URL, download_root=str(root), extract_root=str(root),
                                         md5=TINYIMAGENET_MD5, remove_finished=True)
        except (OSError, RuntimeError, zipfile.BadZipFile) as e:
            raise DataError(f"Downloading {TINYIMAGENET_URL} into {root} failed ({e}); check the network, or "
                            f"unzip the archive there by hand.") from e
    _tiny_file_lists(base, _tiny_wnids(base, root), root)  # raises DataError naming what is missing
    return base


# ---------------------------------------------------------------------------------------------------------------
# Input normalisation (the `normalize` config field; chosen by study.teacher.inputs)
# ---------------------------------------------------------------------------------------------------------------

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision / timm pretrained weights (0-1 scale)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZE_NAMES = ("auto", "dataset", "imagenet", "none")  # else explicit statistics, "m1,m2,m3/s1,s2,s3"


def explicit_values(normalize: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) of an explicit normalize text, None for a name."""
    if normalize in NORMALIZE_NAMES:
        return None
    mean, std = normalize.split("/")
    return tuple(float(v) for v in mean.split(",")), tuple(float(v) for v in std.split(","))


def own_stats(ds) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The data set's own statistics, also after `normalized` replaced its mean and std."""
    own = ds.info.get("data_stats")
    return (tuple(own["mean"]), tuple(own["std"])) if own else (tuple(ds.mean), tuple(ds.std))


def stats(normalize: str, ds) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) that `normalize` means for data set ds; UserError when they do not fit its channels."""
    channels = int(ds.train_x.shape[1])
    if normalize in ("auto", "dataset"):
        return own_stats(ds)
    if normalize == "none":
        return (0.0,) * channels, (1.0,) * channels
    explicit = explicit_values(normalize)  # None: "imagenet", the one name left
    mean, std = explicit if explicit is not None else (IMAGENET_MEAN, IMAGENET_STD)
    if len(mean) != channels:
        what = "imagenet has 3 values" if normalize == "imagenet" else f"normalize gives {len(mean)} values"
        raise UserError(f"normalize: {what} per statistic, but the {ds.name} images have {channels} channel(s); "
                        "use dataset, none, or one mean and std per channel.")
    return tuple(mean), tuple(std)


def normalized(ds, normalize: str):
    """ds with the mean and std `normalize` names (ds itself for dataset / auto); the data's own statistics stay
    in info["data_stats"]."""
    if normalize in ("auto", "dataset"):
        return ds
    mean, std = stats(normalize, ds)
    own_mean, own_std = own_stats(ds)
    info = {**ds.info, "data_stats": {"mean": list(own_mean), "std": list(own_std)}}
    return dataclasses.replace(ds, mean=mean, std=std, info=info)


# ---------------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------------

def _load_imagefolder(root: Path, download: bool, image_size: int = 0, skip_bad_images: bool = False,
                      cache_dir: Path | None = None, log=None, **_: Any) -> Dataset:
    from study.core.io import default_cache_dir
    from study.data.imagefolder import load_folder

    del download  # the user's own folder
    arrays = load_folder(root, image_size, skip_bad_images, cache_dir or default_cache_dir(), log)
    size = arrays.train[0].shape[2]
    val = arrays.val
    return Dataset(
        name="imagefolder", train_x=_mapped(arrays.train[0]), train_y=_tensor(arrays.train[1], np.int64),
        test_x=_mapped(arrays.test[0]), test_y=_tensor(arrays.test[1], np.int64), num_classes=len(arrays.classes),
        mean=arrays.mean, std=arrays.std, hflip=True,  # a mirrored photo keeps its class in most image sets
        crop_pad=max(1, round(size / 8)),  # CIFAR's 4 px on 32 px: an eighth of the side
        val_x=_mapped(val[0]) if val else None, val_y=_tensor(val[1], np.int64) if val else None,
        classes=tuple(arrays.classes),
        info={"cache_dir": str(arrays.cache_dir), "skipped_images": len(arrays.skipped),
              "test_split": "held out of train/ (no test/ folder)" if arrays.test_from_train else "test/",
              **({"sha256": arrays.sha256} if arrays.sha256 else {})},
    )


def _mapped(a: np.ndarray) -> torch.Tensor:
    """A tensor over a (copy-on-write) memory map or an array, without reading or copying it."""
    return torch.from_numpy(a if isinstance(a, np.memmap) else np.ascontiguousarray(a))


def _python_dataset(obj: object, name: str) -> Loader:
    """A user's `load(data_root)` returning a Dataset, a mapping or a (train_x, train_y, test_x, test_y) tuple
    of uint8 images ((N, C, H, W), or (N, H, W) grey) and int labels, as tensors or numpy arrays."""
    if not callable(obj):
        raise DataError(f"dataset {name!r}: {type(obj).__name__} is not callable; point the import string at a "
                        "function load(data_root) -> (train_x, train_y, test_x, test_y).")

    def load(root: Path, download: bool, **_: Any) -> Dataset:
        out = obj(root)
        if isinstance(out, Dataset):
            return out
        parts = dict(out) if isinstance(out, dict) else None
        if parts is None:
            if not isinstance(out, (tuple, list)) or len(out) != 4:
                raise DataError(f"dataset {name!r} returned {type(out).__name__}; return a "
                                "study.data.datasets.Dataset, a dict or a (train_x, train_y, test_x, test_y) tuple.")
            parts = dict(zip(("train_x", "train_y", "test_x", "test_y"), out))
        arrays = {}
        for key in ("train_x", "train_y", "test_x", "test_y", "val_x", "val_y"):
            if parts.get(key) is None:
                if key.startswith("val"):
                    continue
                raise DataError(f"dataset {name!r}: the result lacks {key}; return all four arrays.")
            a = np.asarray(parts[key].cpu() if isinstance(parts[key], torch.Tensor) else parts[key])
            if key.endswith("_x"):
                if a.dtype != np.uint8:
                    raise DataError(f"dataset {name!r}: {key} is {a.dtype}; return uint8 images (0-255).")
                a = a[:, None] if a.ndim == 3 else a
                if a.ndim != 4:
                    raise DataError(f"dataset {name!r}: {key} has shape {a.shape}; want (N, C, H, W) or (N, H, W).")
            arrays[key] = a
        x = arrays["train_x"]
        mean = x.mean((0, 2, 3)) / 255.0
        std = x.std((0, 2, 3)) / 255.0
        num_classes = int(parts.get("num_classes") or int(max(arrays["train_y"].max(), arrays["test_y"].max())) + 1)
        return Dataset(
            name=name, train_x=_tensor(x, np.uint8), train_y=_tensor(arrays["train_y"], np.int64),
            test_x=_tensor(arrays["test_x"], np.uint8), test_y=_tensor(arrays["test_y"], np.int64),
            num_classes=num_classes, mean=tuple(parts.get("mean") or (float(m) for m in mean)),
            std=tuple(parts.get("std") or (float(max(s, 1e-3)) for s in std)),
            hflip=bool(parts.get("hflip", False)), crop_pad=int(parts.get("crop_pad", max(1, x.shape[2] // 8))),
            val_x=_tensor(arrays["val_x"], np.uint8) if "val_x" in arrays else None,
            val_y=_tensor(arrays["val_y"], np.int64) if "val_y" in arrays else None,
        )

    return load


DATASETS: Registry[Loader] = Registry("dataset", _python_dataset)
for _name, _load in (
    ("digits", _load_digits),
    ("fashion_mnist", _load_fashion_mnist),
    ("cifar10", lambda root, download, **_: _load_cifar("cifar10", root, download)),
    ("cifar100", lambda root, download, **_: _load_cifar("cifar100", root, download)),
    ("tinyimagenet", _load_tinyimagenet),
    ("imagefolder", _load_imagefolder),
):
    DATASETS.register(_name, _load)


def register_dataset(name: str, load: Loader | None = None, *, overwrite: bool = False):
    """Register `load(root: Path, download: bool, **options) -> Dataset` (or decorate one)."""
    return DATASETS.register(name, *(() if load is None else (load,)), overwrite=overwrite)


def _loader(name: str) -> Loader:
    try:
        return DATASETS.resolve(name)
    except UserError as exc:
        raise DataError(str(exc)) from None


def dataset_options(cfg: Any) -> dict[str, Any]:
    """The trial config's options for a loader (only imagefolder reads them today)."""
    return {"image_size": cfg.image_size, "skip_bad_images": cfg.skip_bad_images}


def load_dataset_for(cfg: Any, log=None) -> Dataset:
    """The data set a trial config names, with its options, normalised as cfg.normalize says (auto: the data's
    own statistics; callers with a teacher checkpoint resolve auto first: study.teacher.inputs.resolve)."""
    ds = load_dataset(cfg.dataset, cfg.data_root, download=cfg.download, log=log, **dataset_options(cfg))
    return normalized(ds, cfg.normalize)


def load_dataset(name: str, root: str | Path, download: bool = False, **options: Any) -> Dataset:
    """Load data set `name` from `root`; with download=True fetch it first when it is missing. `options`
    (image_size, skip_bad_images, cache_dir, log) go to loaders that take them."""
    return _loader(name)(Path(root).expanduser(), download, **options)


def prepare_dataset(name: str, root: str | Path) -> Dataset:
    """Download data set `name` into root if missing (the `python -m study data` command), then load it as a check."""
    _loader(name)
    return load_dataset(name, root, download=True)


def _floats(values: Any, what: str, source: str) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        values = [values]
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
            raise UserError(f"{source}: 'normalize' {what} must be numbers (got {v!r}); write normalize: "
                            "{mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}.")
        out.append(float(v))
    if not out:
        raise UserError(f"{source}: 'normalize' {what} is empty; give one value per image channel.")
    return tuple(out)


def format_explicit(mean: tuple[float, ...], std: tuple[float, ...]) -> str:
    """The config's text for explicit statistics: "m1,m2,m3/s1,s2,s3"."""
    return ",".join(f"{v:.10g}" for v in mean) + "/" + ",".join(f"{v:.10g}" for v in std)


def canonical(value: Any, source: str = "config") -> str:
    """The normalize value as the config stores it (a name or "means/stds"); UserError, one sentence, if bad."""
    hint = ("use auto, dataset, imagenet, none, or the teacher's statistics as {mean: [m1, m2, m3], "
            "std: [s1, s2, s3]} (0-1 scale)")
    if isinstance(value, dict):
        if set(value) != {"mean", "std"}:
            raise UserError(f"{source}: 'normalize' as a mapping needs exactly the keys mean and std (got "
                            f"{sorted(map(str, value))}); {hint}.")
        mean, std = _floats(value["mean"], "mean", source), _floats(value["std"], "std", source)
    elif isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (list, tuple)) for v in value):
        mean, std = _floats(value[0], "mean", source), _floats(value[1], "std", source)
    elif isinstance(value, str) and value.strip().lower() in NORMALIZE_NAMES:
        return value.strip().lower()
    elif isinstance(value, str) and value.count("/") == 1:
        try:
            mean, std = (tuple(float(v) for v in part.strip(" []()").split(",")) for part in value.split("/"))
        except ValueError:
            raise UserError(f"{source}: 'normalize' {value!r} is not 'm1,m2,m3/s1,s2,s3'; {hint}.") from None
    else:
        raise UserError(f"{source}: 'normalize' {value!r} is not a normalisation; {hint}.")
    if len(mean) != len(std):
        raise UserError(f"{source}: 'normalize' has {len(mean)} mean value(s) but {len(std)} std value(s); give "
                        "one of each per image channel.")
    if any(s <= 0 or not math.isfinite(s) for s in std) or not all(math.isfinite(m) for m in mean):
        raise UserError(f"{source}: 'normalize' std values must be > 0 (got {list(std)}); {hint}.")
    return format_explicit(mean, std)
