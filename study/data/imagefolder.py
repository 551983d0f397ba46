"""`dataset: imagefolder`: the user's own images, laid out as torchvision's ImageFolder reads them.

    data_root/train/<class>/*.jpg|png|...   required
    data_root/val/<class>/*                 optional: the validation split (instead of a holdout of train)
    data_root/test/<class>/*                optional: the test split (else a fixed stratified 20 % of train)

Classes are the sorted folder names of train/ (torchvision's `ImageFolder` order); val/ and test/ must hold the
same classes. Images are decoded once, converted to RGB (grey ones too) and resized to `image_size` (square,
bilinear with antialiasing, as torchvision's Resize), into a cache of .npy files keyed by every file's relative
path, size and mtime (plus image_size and skip_bad_images): a changed folder is decoded again. The arrays are
opened memory-mapped, so a data set larger than RAM still loads (see study/data/streaming.py for training on it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from study.core.errors import DataError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
CACHE_VERSION = 1  # bump when the cached layout changes
TEST_FRACTION = 0.2  # no test/ folder: a fixed stratified share of train/ stands in for it
TEST_SPLIT_SEED = 0


@dataclass(frozen=True)
class FolderArrays:
    """Decoded splits: uint8 (N, 3, S, S) images (memory-mapped from the cache), int64 labels."""

    classes: list[str]
    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray] | None
    test: tuple[np.ndarray, np.ndarray]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    skipped: list[str]  # images that could not be decoded (skip_bad_images: true)
    cache_dir: Path
    test_from_train: bool  # no test/ folder: the test split was held out of train/
    sha256: str | None = None  # study.reproduce.rerun.dataset_sha256 of these arrays, taken when they were decoded


def _list_split(split_dir: Path, classes: list[str] | None, root: Path) -> tuple[list[str], list[Path], list[int]]:
    """(classes, files, labels) of one split folder; errors name the folder and the fix."""
    names = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise DataError(f"{split_dir}: no class folders; put each class's images in {split_dir}/<class>/.")
    if classes is not None and names != classes:
        missing = sorted(set(classes) - set(names))
        extra = sorted(set(names) - set(classes))
        what = (f"lacks class folder(s) {', '.join(missing)}" if missing else "") + \
               ("; " if missing and extra else "") + \
               (f"has class folder(s) {', '.join(extra)} that train/ lacks" if extra else "")
        raise DataError(f"{split_dir} {what}; every split must hold the same classes as {root / 'train'}.")
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(names):
        found = sorted(p for p in (split_dir / name).rglob("*")
                       if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
        if not found:
            raise DataError(f"{split_dir / name}: empty class folder (no {'/'.join(IMG_EXTENSIONS)} files); add "
                            "images or remove the folder.")
        files += found
        labels += [label] * len(found)
    return names, files, labels


def _fingerprint(root: Path, splits: dict[str, list[Path]], image_size: int, skip_bad: bool) -> str:
    h = hashlib.sha256(json.dumps({"v": CACHE_VERSION, "size": image_size, "skip": skip_bad}).encode())
    for split, files in splits.items():
        for p in files:
            st = p.stat()
            h.update(f"{split}\0{p.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _decode(path: Path, image_size: int) -> np.ndarray | str:
    """(3, S, S) uint8, or the reason it cannot be read."""
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")  # grey, palette and RGBA images become 3 channels
            if image_size and rgb.size != (image_size, image_size):
                rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.asarray(rgb).transpose(2, 0, 1)
    except (OSError, ValueError) as e:  # missing, truncated or not an image (UnidentifiedImageError: OSError)
        return f"{type(e).__name__}: {e}"


def _decode_split(files: list[Path], image_size: int, skip_bad: bool, skipped: list[str],
                  log) -> tuple[np.ndarray, np.ndarray]:
    """Decode files into (N, 3, S, S) uint8 and the kept indices; the first bad image ends it unless skip_bad."""
    out: list[np.ndarray] = []
    kept: list[int] = []
    size = image_size
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))  # PIL releases the GIL while decoding
    try:
        for i, (path, img) in enumerate(zip(files, pool.map(lambda p: _decode(p, image_size), files))):
            if isinstance(img, str):
                if not skip_bad:
                    raise DataError(f"{path}: cannot read this image ({img}); replace or delete it, or set "
                                    "skip_bad_images: true to skip unreadable images.")
                skipped.append(str(path))
                continue
            if size and img.shape[1:] != (size, size):
                raise DataError(f"{path} is {img.shape[2]}x{img.shape[1]} pixels but earlier images are "
                                f"{size}x{size}; set image_size in the trial config to resize them all.")
            if not size:
                if img.shape[1] != img.shape[2]:
                    raise DataError(f"{path} is {img.shape[2]}x{img.shape[1]} pixels (not square); set image_size "
                                    "in the trial config to resize every image to a square.")
                size = img.shape[1]
            out.append(img)
            kept.append(i)
            if log and (i + 1) % 5000 == 0:
                log(f"  decoded {i + 1}/{len(files)} images")
    finally:
        pool.shutdown(cancel_futures=True)
    if not out:
        raise DataError(f"no readable image among {len(files)} files (first: {files[0]}); check the folder.")
    return np.stack(out), np.asarray(kept, dtype=np.int64)


def _stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (0-1 scale) of uint8 (N, C, H, W), in chunks (x may be memory-mapped)."""
    c = x.shape[1]
    s, s2, n = np.zeros(c), np.zeros(c), 0
    for i in range(0, len(x), 1024):
        chunk = x[i:i + 1024].astype(np.float64) / 255.0
        s += chunk.sum((0, 2, 3))
        s2 += (chunk ** 2).sum((0, 2, 3))
        n += chunk.shape[0] * chunk.shape[2] * chunk.shape[3]
    mean = s / n
    std = np.sqrt(np.maximum(s2 / n - mean ** 2, 1e-12))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def load_folder(root: Path, image_size: int, skip_bad_images: bool, cache_root: Path, log=None) -> FolderArrays:
    """Decode (or reuse the cache of) an ImageFolder tree; see the module docstring."""
    root = Path(root).expanduser().resolve()
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataError(f"{root}: no train/ folder; an imagefolder data set needs {train_dir}/<class>/<images> "
                        "(and optionally val/ and test/ beside it). Fix data_root.")
    classes, train_files, train_labels = _list_split(train_dir, None, root)
    lists = {"train": (train_files, train_labels)}
    for split in ("val", "test"):
        if (root / split).is_dir():
            _, files, labels = _list_split(root / split, classes, root)
            lists[split] = (files, labels)
    key = _fingerprint(root, {k: v[0] for k, v in lists.items()}, image_size, skip_bad_images)
    cache = cache_root / "imagefolder" / key
    meta_path = cache / "meta.json"
    if not meta_path.is_file():
        _build_cache(root, lists, classes, image_size, skip_bad_images, cache, log)
    meta = json.loads(meta_path.read_text())

    def arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
        # pages are read from disk as rows are indexed, never all at once; "c" (copy-on-write) so a tensor can
        # wrap the map without torch's warning about read-only arrays, and nothing is ever written back
        return np.load(cache / f"{split}_x.npy", mmap_mode="c"), np.load(cache / f"{split}_y.npy")

    return FolderArrays(classes=meta["classes"], train=arrays("train"),
                        val=arrays("val") if "val" in meta["splits"] else None, test=arrays("test"),
                        mean=tuple(meta["mean"]), std=tuple(meta["std"]), skipped=meta["skipped"], cache_dir=cache,
                        test_from_train=meta["test_from_train"], sha256=meta.get("sha256"))


def _build_cache(root: Path, lists: dict, classes: list[str], image_size: int, skip_bad: bool, cache: Path,
                 log) -> None:
    from study.core.io import arrays_sha256
    from study.data.splits import stratified_holdout as _stratified_holdout

    n_files = sum(len(v[0]) for v in lists.values())
    if log:
        log(f"decoding {n_files} images of {root} ({len(classes)} classes) into {cache}")
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache.parent, prefix=f".{cache.name}-"))
    try:
        skipped: list[str] = []
        sizes = set()
        decoded = {}
        for split, (files, labels) in lists.items():
            x, kept = _decode_split(files, image_size, skip_bad, skipped, log)
            decoded[split] = (x, np.asarray(labels, dtype=np.int64)[kept])
            sizes.add(x.shape[2:])
        if len(sizes) > 1:
            raise DataError(f"{root}: the splits have different image sizes ({sorted(sizes)}); set image_size in "
                            "the trial config to resize every image to one size.")
        test_from_train = "test" not in decoded
        if test_from_train:
            x, y = decoded["train"]
            keep, held = _stratified_holdout(y, max(1, round(TEST_FRACTION * len(y))), TEST_SPLIT_SEED)
            decoded["train"], decoded["test"] = (x[keep], y[keep]), (x[held], y[held])
        for split, (x, y) in decoded.items():
            missing = sorted(set(range(len(classes))) - set(np.unique(y).tolist()))
            if missing and split != "test":
                raise DataError(f"{root / split}: class {classes[missing[0]]!r} has no readable image left; add "
                                "images or remove the folder.")
            np.save(tmp / f"{split}_x.npy", x)
            np.save(tmp / f"{split}_y.npy", y)
        mean, std = _stats(decoded["train"][0])
        # dataset_sha256's value, taken now that the arrays are in memory: a study start does not read them again
        order = ["train", "test", *(["val"] if "val" in decoded else [])]
        sha = arrays_sha256([a for split in order for a in decoded[split]])
        (tmp / "meta.json").write_text(json.dumps({
            "version": CACHE_VERSION, "root": str(root), "classes": classes, "splits": sorted(decoded),
            "image_size": int(decoded["train"][0].shape[2]), "mean": mean, "std": std, "skipped": skipped,
            "test_from_train": test_from_train, "counts": {k: int(len(v[1])) for k, v in decoded.items()},
            "sha256": sha,
        }, indent=1))
        try:
            os.replace(tmp, cache)  # the whole folder appears at once: no half-written cache
        except OSError:
            if not (cache / "meta.json").is_file():  # another process won the race: keep theirs
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if log and skipped:
        log(f"skipped {len(skipped)} unreadable image(s) (skip_bad_images): first {skipped[0]}")
