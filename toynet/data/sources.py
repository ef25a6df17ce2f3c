"""Find each dataset's files and decode them into :class:`DataArrays`.

- ``digits``: scikit-learn's embedded 8x8 digits (1,797 images, values 0..16), scaled
  to 0..255 and resized bilinearly (``align_corners=False``) to 28x28 one-channel uint8
  so it stands in for MNIST; a fixed stratified split, 20% of each class (rounded) to
  validation by a seeded permutation: 1,438 train / 359 val.
- ``mnist``: ``<root>/MNIST/raw/*-ubyte``, headers checked here, parsed by torchvision.
- ``cifar10``, first layout found: ``<root>/cifar-10-batches-py`` (torchvision's
  pickles); an image folder ``train/<class>/*`` + ``test/<class>/*`` in ``<root>``,
  ``<root>/cifar10`` or ``<root>/cifar10-folder`` (classes sorted, the standard label
  order for CIFAR-10); ``<root>/cifar10-jpeg.tar.gz`` holding that layout, decoded
  straight from the archive stream: reading all members takes 1.7 s here, extracting
  60,000 small files 10-40 s, and nothing is ever written next to the tarball.

Images are decoded with torchvision's libjpeg-turbo/libpng decoders: ~3x faster than
Pillow here (10,000 CIFAR JPEGs: 0.32 s vs 0.83 s on one core) with identical pixels. Parser errors become one-line DataErrors naming
the file and what was expected.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tarfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock

from toynet.data.arrays import DataArrays
from toynet.errors import DataError
from toynet.spec import INPUT_SHAPES, NUM_CLASSES

logger = logging.getLogger(__name__)

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR_PICKLES = "cifar-10-batches-py"
CIFAR_FOLDERS = (".", "cifar10", "cifar10-folder")
CIFAR_TARBALL = "cifar10-jpeg.tar.gz"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# What find_source looks for, for the "no data" message.
LAYOUTS = {
    "mnist": "MNIST/raw/*-ubyte IDX files",
    "cifar10": f"{CIFAR_PICKLES}/, train/+test/ class folders (also under cifar10/ or cifar10-folder/), "
               f"{CIFAR_TARBALL}",
}
DIGIT_CLASSES = tuple(str(k) for k in range(NUM_CLASSES))

# (class name, where it came from for messages, encoded bytes)
Item = tuple[str, str, bytes]


@dataclass(frozen=True)
class Source:
    """A dataset's files on disk and how to decode them; ``kind`` and content key the cache."""

    kind: str
    root: Path  # base of the relative names hashed into the cache key
    files: tuple[str | Path, ...]
    decode: Callable[[], DataArrays]


def find_source(name: str, root: Path) -> Source | None:
    """The first layout of ``name`` ("mnist" or "cifar10") under ``root``, or None."""
    return _find_mnist(root) if name == "mnist" else _find_cifar10(root)


def download(name: str, root: Path, lock_dir: Path) -> None:
    """Download ``name`` with torchvision into ``root``, one process at a time per ``root``."""
    from torchvision.datasets import CIFAR10, MNIST

    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock_dir / f"{name}-{tag}.lock")):
            logger.info("downloading %s into %s", name, root)
            # A no-op when a previous holder of the lock already downloaded it.
            (MNIST if name == "mnist" else CIFAR10)(str(root), train=True, download=True)
    except Exception as exc:  # noqa: BLE001 -- network and archive errors come in many types
        raise DataError(f"{name}: download into {root} failed ({_one_line(exc)}); "
                        f"on an offline machine point --data-dir or TOYNET_DATA at a copy") from exc


def load_digits() -> DataArrays:
    """scikit-learn's digits as (N, 1, 28, 28) uint8 with a fixed stratified 80/20 split."""
    flat = _read_digits_csv()  # (1797, 65): 64 pixels in 0..16, then the label
    x = torch.from_numpy(flat[:, :64]).float().view(-1, 1, 8, 8) * (255.0 / 16.0)  # 0..255
    x = F.interpolate(x, size=INPUT_SHAPES["digits"][1:], mode="bilinear", align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8)  # (1797, 1, 28, 28)
    y = torch.from_numpy(flat[:, 64]).long()
    val = _stratified_val_mask(y, fraction=0.2, seed=0)
    return DataArrays("digits", x[~val], y[~val], x[val], y[val], DIGIT_CLASSES)


def _read_digits_csv() -> np.ndarray:
    """The data file of ``sklearn.datasets.load_digits``, read without importing scikit-learn.

    Importing scikit-learn 1.9 imports pandas and pyarrow (~1 s, and toynet promises
    never to import pyarrow); the 1,797 digits are one small CSV it ships.
    """
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise DataError(f"digits: scikit-learn's digits.csv.gz not found (looked in {path}); "
                        f"install scikit-learn>=1.3, which ships it")
    try:
        flat = np.loadtxt(path, delimiter=",", dtype=np.float32)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: unreadable ({_one_line(exc)}); expected 1797 rows of 65 numbers") from exc
    if flat.shape != (1797, 65):
        raise DataError(f"{path}: shape {flat.shape}; expected 1797 rows of 65 numbers")
    return flat


def _stratified_val_mask(y: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Boolean (N,) mask: a fixed random ``fraction`` of every class (rounded) is validation."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(y), dtype=torch.bool)
    for cls in torch.unique(y):  # sorted, so the generator is consumed in a fixed order
        members = torch.nonzero(y == cls).flatten()
        n_val = round(fraction * len(members))
        mask[members[torch.randperm(len(members), generator=gen)[:n_val]]] = True
    return mask


# ---- MNIST -------------------------------------------------------------------------


def _find_mnist(root: Path) -> Source | None:
    raw = root / "MNIST" / "raw"
    files = tuple(raw / f for pair in MNIST_FILES.values() for f in pair)
    if not all(f.is_file() for f in files):
        return None
    return Source("idx", raw, files, lambda: _decode_mnist(raw))


def _decode_mnist(raw: Path) -> DataArrays:
    train_x, train_y = _read_mnist_split(raw / MNIST_FILES["train"][0], raw / MNIST_FILES["train"][1])
    val_x, val_y = _read_mnist_split(raw / MNIST_FILES["val"][0], raw / MNIST_FILES["val"][1])
    return DataArrays("mnist", train_x, train_y, val_x, val_y, DIGIT_CLASSES)


def _read_mnist_split(images: Path, labels: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One split's (N, 1, 28, 28) uint8 images and (N,) int64 labels, validated."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    n_images = _check_idx(images, 3, INPUT_SHAPES["mnist"][1:])
    n_labels = _check_idx(labels, 1, ())
    if n_images != n_labels:
        raise DataError(f"{labels}: {n_labels} labels, but {images.name} has {n_images} images; expected equal counts")
    try:
        x, y = read_image_file(str(images)), read_label_file(str(labels))
    except Exception as exc:  # noqa: BLE001 -- torchvision raises Assertion/Runtime/Type/ValueError
        raise DataError(f"{images.parent}: cannot parse {images.name}/{labels.name} ({_one_line(exc)})") from exc
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= NUM_CLASSES:
        raise DataError(f"{labels}: labels span {low}..{high}; expected 0..{NUM_CLASSES - 1}")
    return x.unsqueeze(1).contiguous(), y  # (N, 28, 28) -> (N, 1, 28, 28)


def _check_idx(path: Path, ndim: int, item_shape: tuple[int, ...]) -> int:
    """Check an uncompressed uint8 IDX file's header against its size; return N."""
    size = path.stat().st_size
    header_len = 4 + 4 * ndim
    with open(path, "rb") as f:
        header = f.read(header_len)
    expect = f"a uint8 IDX file with {ndim} dimension(s)"
    if len(header) < header_len:
        raise DataError(f"{path}: truncated ({size} bytes); expected {expect}")
    if header[:3] != b"\0\0\x08" or header[3] != ndim:
        raise DataError(f"{path}: magic number {header[:4].hex()}; expected {expect} (magic 000008{ndim:02x})")
    dims = tuple(int.from_bytes(header[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if dims[1:] != tuple(item_shape):
        raise DataError(f"{path}: items are {dims[1:]}; expected {tuple(item_shape)}")
    expected_size = header_len + int(np.prod(dims))
    if size != expected_size:
        raise DataError(f"{path}: {size} bytes, but its header {dims} needs {expected_size}; truncated or corrupt")
    return dims[0]


# ---- CIFAR-10 ----------------------------------------------------------------------


def _find_cifar10(root: Path) -> Source | None:
    pickles = root / CIFAR_PICKLES
    if pickles.is_dir():
        files = tuple(p for p in pickles.iterdir() if p.is_file())
        return Source("pickle", pickles, files, lambda: _decode_pickles(root))
    for sub in CIFAR_FOLDERS:
        base = root / sub
        if (base / "train").is_dir() and (base / "test").is_dir():
            listing = {split: _list_folder(base / split) for split in ("train", "test")}
            files = tuple(path for items in listing.values() for _, path in items)
            return Source("folder", base, files, lambda: _decode_folder(base, listing))
    tarball = root / CIFAR_TARBALL
    if tarball.is_file():
        return Source("tar", root, (tarball,), lambda: _decode_tarball(tarball))
    return None


def _decode_pickles(root: Path) -> DataArrays:
    from torchvision.datasets import CIFAR10

    try:
        train, test = CIFAR10(str(root), train=True), CIFAR10(str(root), train=False)
    except Exception as exc:  # noqa: BLE001 -- integrity failures and unpickling errors
        raise DataError(f"{root / CIFAR_PICKLES}: unreadable CIFAR-10 batches ({_one_line(exc)}); "
                        f"expected the files of cifar-10-python.tar.gz") from exc
    out = []
    for ds in (train, test):
        out.append(torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))))  # NHWC -> NCHW
        out.append(torch.tensor(ds.targets, dtype=torch.int64))
    return DataArrays("cifar10", *out, classes=tuple(train.classes))


def _list_folder(split_dir: Path) -> list[tuple[str, str]]:
    """(class, path) of every image under ``split_dir/<class>/``, sorted."""
    # os.scandir and str paths: pathlib costs ~2 s per 60,000 files on Python 3.11,
    # and this listing runs on every load (it feeds the cache key).
    items = []
    class_dirs = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    for cls in class_dirs:
        class_dir = os.path.join(split_dir, cls)
        names = sorted(e.name for e in os.scandir(class_dir)
                       if not e.name.startswith(".") and e.name.lower().endswith(IMAGE_SUFFIXES))
        items += [(cls, os.path.join(class_dir, name)) for name in names]
    return items


def _decode_folder(base: Path, listing: dict[str, list[tuple[str, str]]]) -> DataArrays:
    splits: dict[str, list[Item]] = {}
    for split, items in listing.items():
        splits[split] = []
        for cls, path in items:
            try:
                with open(path, "rb") as f:
                    splits[split].append((cls, path, f.read()))
            except OSError as exc:
                raise DataError(f"{path}: cannot read image ({exc.strerror})") from exc
    return _decode_splits(str(base), splits)


def _decode_tarball(tarball: Path) -> DataArrays:
    """Read ``[prefix/]<split>/<class>/<image>`` members straight from the archive stream."""
    splits: dict[str, list[Item]] = {"train": [], "test": []}
    try:
        with tarfile.open(tarball, "r:*") as archive:
            for member in archive:  # sequential: each member is read once, in archive order
                parts = [p for p in PurePosixPath(member.name).parts if p != "."]
                if (not member.isfile() or len(parts) < 3 or parts[-3] not in splits
                        or PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES):
                    continue
                data = archive.extractfile(member).read()
                splits[parts[-3]].append((parts[-2], f"{tarball}:{member.name}", data))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"{tarball}: truncated or corrupt archive ({_one_line(exc)}); "
                        f"expected a tar.gz of train/<class>/*.jpg and test/<class>/*.jpg") from exc
    return _decode_splits(str(tarball), splits)


def _decode_splits(where: str, splits: dict[str, list[Item]]) -> DataArrays:
    """Decode image-folder items of ``train`` and ``test``; labels index the sorted classes."""
    classes = sorted({cls for cls, _, _ in splits["train"]})
    test_classes = sorted({cls for cls, _, _ in splits["test"]})
    if len(classes) != NUM_CLASSES or test_classes != classes:
        raise DataError(f"{where}: train classes {classes}, test classes {test_classes}; "
                        f"expected the same {NUM_CLASSES} class folders in train/ and test/")
    index = {cls: k for k, cls in enumerate(classes)}
    out = []
    for split in ("train", "test"):
        items = sorted(splits[split], key=lambda item: (item[0], item[1]))
        out.append(_decode_images([(origin, data) for _, origin, data in items], INPUT_SHAPES["cifar10"]))
        out.append(torch.tensor([index[cls] for cls, _, _ in items], dtype=torch.int64))
    return DataArrays("cifar10", *out, classes=tuple(classes))


def _decode_images(items: list[tuple[str, bytes]], shape: tuple[int, int, int]) -> torch.Tensor:
    """Decode JPEG/PNG bytes into one uint8 (N, C, H, W) tensor; every image must be ``shape``."""
    from torchvision.io import ImageReadMode, decode_image

    out = torch.empty((len(items), *shape), dtype=torch.uint8)
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders in favour of TorchCodec and warns on
        # every call; pyproject pins torchvision < 0.30, where they still exist.
        warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
        for i, (origin, data) in enumerate(items):
            try:
                image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
            except (RuntimeError, ValueError) as exc:
                raise DataError(f"{origin}: cannot decode image ({_one_line(exc)}); "
                                f"expected a JPEG or PNG file") from exc
            if tuple(image.shape) != shape:
                raise DataError(f"{origin}: image is {tuple(image.shape)} (C, H, W); expected {shape}")
            out[i] = image
    return out


def _one_line(exc: BaseException) -> str:
    """The first line of an exception's message (parsers often add multi-line detail)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
