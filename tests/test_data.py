"""Datasets: digits, balanced subsets, the array cache, MNIST/CIFAR-10 sources and their errors.

Synthetic sources (a few dozen tiny JPEGs, small IDX files) keep these fast; the real
MNIST and CIFAR-10 copies are only read by the ``realdata`` tests.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import pickle
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import platformdirs
import pytest
import torch

from toynet.data import DataArrays, default_cache_dir, load_dataset, resolve_data_dir, subset_balanced
from toynet.data import layouts, sources
from toynet.errors import ConfigError, DataError

# encode_jpeg warns on every call since torchvision 0.29 (superseded by TorchCodec).
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
ARRAYS = ("train_x", "train_y", "val_x", "val_y")


# ---- synthetic sources --------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    """An uncompressed uint8 IDX file: magic 0x0000 08 <ndim>, big-endian dims, data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_mnist(root: Path, n_train: int = 30, n_val: int = 20) -> dict[str, np.ndarray]:
    """Write ``root/MNIST/raw/*-ubyte``; return the arrays written."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n, (images, labels) in (("train", n_train, layouts.MNIST_FILES["train"]),
                                       ("val", n_val, layouts.MNIST_FILES["val"])):
        arrays[f"{split}_x"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_y"] = np.arange(n, dtype=np.uint8) % 10
        write_idx(root / "MNIST" / "raw" / images, arrays[f"{split}_x"])
        write_idx(root / "MNIST" / "raw" / labels, arrays[f"{split}_y"])
    return arrays


def encode_jpeg(image: torch.Tensor, quality: int = 90) -> bytes:
    # Imported here: spawned workers import this module and need not pay for torchvision.
    from torchvision.io import encode_jpeg as tv_encode_jpeg

    return tv_encode_jpeg(image, quality=quality).numpy().tobytes()


def make_image_folder(base: Path, n_train: int = 3, n_test: int = 2) -> None:
    """``base/{train,test}/<class>/NNNN.jpg``: 10 classes of random 32x32 RGB JPEGs."""
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for cls in CIFAR10_CLASSES:
            (base / split / cls).mkdir(parents=True)
            for i in range(n):
                image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=gen)
                (base / split / cls / f"{i:04d}.jpg").write_bytes(encode_jpeg(image))


def make_tarball(folder: Path, tarball: Path) -> None:
    with tarfile.open(tarball, "w:gz") as archive:
        for split in ("train", "test"):
            archive.add(folder / split, arcname=split)


def digest(data: DataArrays) -> str:
    h = hashlib.sha256(json.dumps(data.classes).encode())
    for name in ARRAYS:
        h.update(getattr(data, name).numpy().tobytes())
    return h.hexdigest()


@pytest.fixture
def count_decodes(monkeypatch):
    """Wrap the synthetic sources' decoders; returns the list of decoded roots."""
    calls: list[str] = []
    for attr in ("_decode_mnist", "_decode_folder", "_decode_tarball"):
        original = getattr(sources, attr)

        def counted(*args, _original=original):
            calls.append(str(args[0]))
            return _original(*args)

        monkeypatch.setattr(sources, attr, counted)
    return calls


def entry_dirs(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if (p / "meta.json").exists())


# ---- digits and subsets -------------------------------------------------------------


def test_digits_is_28x28_uint8_stratified_and_fixed():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.train_x.shape[1:] == (1, 28, 28) and a.train_x.dtype == torch.uint8
    assert a.train_y.dtype == torch.int64 and len(a.train_y) + len(a.val_y) == 1797
    assert (a.channels, a.image_size, a.num_classes) == (1, (28, 28), 10)
    assert int(a.train_x.max()) == 255  # 0..16 scaled to the full uint8 range
    train_counts, val_counts = torch.bincount(a.train_y, minlength=10), torch.bincount(a.val_y, minlength=10)
    assert (val_counts > 0).all() and (train_counts > 0).all()
    # Stratified 80/20: each class's validation share is 20% to within one image.
    assert ((val_counts - 0.2 * (train_counts + val_counts)).abs() <= 1).all()
    assert digest(a) == digest(b)


def test_digits_are_scikit_learns_digits_scaled_and_resized():
    from sklearn.datasets import load_digits as sk_load_digits  # the reference, in tests only

    reference = sk_load_digits()
    # The documented transform, restated: 0..16 -> 0..255, bilinear 8x8 -> 28x28, round.
    scaled = torch.from_numpy(reference.images).float().unsqueeze(1) * 255 / 16
    resized = torch.nn.functional.interpolate(scaled, size=(28, 28), mode="bilinear", align_corners=False)
    expected = {x.numpy().tobytes(): int(t) for x, t in zip(resized.round().to(torch.uint8), reference.target)}
    ours = load_dataset("digits")
    for x, y in ((ours.train_x, ours.train_y), (ours.val_x, ours.val_y)):
        assert [expected.get(image.numpy().tobytes()) for image in x] == y.tolist()


def test_loading_digits_imports_neither_sklearn_nor_pyarrow():
    # scikit-learn 1.9 imports pandas and pyarrow; toynet reads the digits CSV directly.
    code = ("import sys, toynet.data; toynet.data.load_dataset('digits');"
            "bad = [m for m in ('sklearn', 'pyarrow', 'ray') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


PREPARE = """
import sys
from toynet.data import prepare_dataset
ready = [prepare_dataset(name, sys.argv[1], cache_dir=sys.argv[2]) for name in ("digits", "mnist")]
print(*[(r.train, r.val) for r in ready], "torch" in sys.modules)
"""


def test_prepare_dataset_is_torch_free_on_a_cache_hit_and_counts_as_load_does(tmp_path):
    """grid.py checks a grid's data with prepare_dataset before Ray starts, without
    torch once the node's cache holds it; its sizes are load_dataset's."""
    make_mnist(tmp_path / "data", n_train=30, n_val=20)
    args = [sys.executable, "-c", PREPARE, str(tmp_path / "data"), str(tmp_path / "cache")]
    miss = subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()
    hit = subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()
    digits = load_dataset("digits")
    assert miss[:-1] == hit[:-1] == [f"({len(digits.train_y)},", f"{len(digits.val_y)})", "(30,", "20)"]
    assert (miss[-1], hit[-1]) == ("True", "False")  # only decoding imports torch
    assert len(entry_dirs(tmp_path / "cache")) == 1


def test_prepare_dataset_reports_missing_data_as_load_does(tmp_path):
    from toynet.data import prepare_dataset

    with pytest.raises(DataError) as prepared:
        prepare_dataset("cifar10", tmp_path, cache_dir=tmp_path / "cache")
    with pytest.raises(DataError) as loaded:
        load_dataset("cifar10", tmp_path, cache_dir=tmp_path / "cache")
    assert str(prepared.value) == str(loaded.value)
    assert "no data in" in str(prepared.value)


def test_subset_balanced_exact_counts_deterministic_and_nested():
    y = torch.arange(100) % 10
    x = torch.arange(100)
    sx, sy = subset_balanced(x, y, 25)
    assert torch.bincount(sy, minlength=10).tolist() == [3] * 5 + [2] * 5
    assert torch.equal(sx % 10, sy)  # images stay paired with their labels
    assert torch.equal(subset_balanced(x, y, 25)[0], sx)
    assert set(subset_balanced(x, y, 12)[0].tolist()) <= set(sx.tolist())
    assert not torch.equal(subset_balanced(x, y, 25, seed=1)[0], sx)
    assert subset_balanced(x, y, 100)[0] is x


def test_subset_balanced_shares_a_small_class_shortfall():
    y = torch.tensor([0] + [1] * 10 + [2] * 10)  # class 0 has a single sample
    _, sy = subset_balanced(torch.zeros(len(y)), y, 9)
    assert torch.bincount(sy).tolist() == [1, 4, 4]
    with pytest.raises(ConfigError, match="limit"):
        subset_balanced(torch.zeros(3), torch.zeros(3, dtype=torch.int64), 0)


def test_limits_pick_a_fixed_balanced_subset():
    a = load_dataset("digits", train_limit=100, val_limit=50)
    assert torch.bincount(a.train_y).tolist() == [10] * 10 and torch.bincount(a.val_y).tolist() == [5] * 10
    assert digest(a) == digest(load_dataset("digits", train_limit=100, val_limit=50))
    with pytest.raises(ConfigError, match="train_limit"):
        load_dataset("digits", train_limit=0)
    with pytest.raises(ConfigError, match="unknown dataset"):
        load_dataset("imagenet")


# ---- directories --------------------------------------------------------------------


def test_resolve_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("TOYNET_DATA", raising=False)
    assert resolve_data_dir(None) == platformdirs.user_cache_path("toynet")
    monkeypatch.setenv("TOYNET_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(None) == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TOYNET_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("TOYNET_CACHE")
    assert default_cache_dir() == platformdirs.user_cache_path("toynet") / "arrays"


# ---- MNIST and the cache ------------------------------------------------------------


def test_mnist_idx_decodes_then_hits_the_cache(tmp_path, count_decodes):
    written = make_mnist(tmp_path / "data")
    first = load_dataset("mnist", tmp_path / "data", cache_dir=tmp_path / "cache")
    assert torch.equal(first.train_x[:, 0], torch.from_numpy(written["train_x"]))
    assert first.val_y.tolist() == written["val_y"].tolist() and first.val_y.dtype == torch.int64
    second = load_dataset("mnist", tmp_path / "data", cache_dir=tmp_path / "cache")
    assert len(count_decodes) == 1  # the second load never read the IDX files
    assert digest(first) == digest(second)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc/self/maps")
def test_cached_arrays_are_shared_maps_and_copy_on_write(tmp_path):
    make_mnist(tmp_path / "data")
    data = load_dataset("mnist", tmp_path / "data", cache_dir=tmp_path / "cache")
    (entry,) = entry_dirs(tmp_path / "cache")
    # Mapped from the cache file, so processes on one node share the page cache.
    assert str(entry / "train_x.npy") in Path("/proc/self/maps").read_text()
    data.train_x[0] = 0  # a private copy of the touched page, never the file
    again = load_dataset("mnist", tmp_path / "data", cache_dir=tmp_path / "cache")
    assert again.train_x[0].any()


def test_cache_hit_does_not_need_the_decoder(tmp_path, monkeypatch):
    make_mnist(tmp_path / "data")
    first = load_dataset("mnist", tmp_path / "data", cache_dir=tmp_path / "cache")

    def fail(_raw):
        raise AssertionError("decoded again")

    monkeypatch.setattr(sources, "_decode_mnist", fail)
    assert digest(load_dataset("mnist", tmp_path / "data", cache_dir=tmp_path / "cache")) == digest(first)


def test_changed_source_gets_a_new_cache_entry(tmp_path, count_decodes):
    written = make_mnist(tmp_path / "data")
    load_dataset("mnist", tmp_path / "data", cache_dir=tmp_path / "cache")
    time.sleep(0.01)  # a different mtime, like a real edit
    write_idx(tmp_path / "data/MNIST/raw/t10k-labels-idx1-ubyte", (written["val_y"] + 1) % 10)
    again = load_dataset("mnist", tmp_path / "data", cache_dir=tmp_path / "cache")
    assert len(count_decodes) == 2 and again.val_y.tolist() == ((written["val_y"] + 1) % 10).tolist()
    assert len(entry_dirs(tmp_path / "cache")) == 2


@pytest.mark.parametrize("damage", ["truncate-array", "garbage-meta", "missing-array"])
def test_corrupt_cache_entry_is_detected_and_rebuilt(tmp_path, count_decodes, caplog, damage):
    make_mnist(tmp_path / "data")
    # Digest, then drop the maps: touching a mapped page of a file truncated in place is SIGBUS.
    expected = digest(load_dataset("mnist", tmp_path / "data", cache_dir=tmp_path / "cache"))
    (entry,) = entry_dirs(tmp_path / "cache")
    if damage == "truncate-array":
        (entry / "train_x.npy").write_bytes((entry / "train_x.npy").read_bytes()[:1000])
    elif damage == "garbage-meta":
        (entry / "meta.json").write_text("{not json")
    else:
        (entry / "val_y.npy").unlink()
    with caplog.at_level(logging.WARNING, logger="toynet.data"):
        again = load_dataset("mnist", tmp_path / "data", cache_dir=tmp_path / "cache")
    assert len(count_decodes) == 2
    assert "corrupt" in caplog.text and str(entry) in caplog.text
    assert digest(again) == expected


@pytest.mark.parametrize("damage, match", [
    ("truncate", r"train-images-idx3-ubyte: .*truncated"),
    ("magic", r"train-images-idx3-ubyte: magic number"),
    ("count", r"t10k-labels-idx1-ubyte: 19 labels, but t10k-images-idx3-ubyte has 20 images"),
    ("label", r"train-labels-idx1-ubyte: labels span 0..12; expected 0..9"),
])
def test_bad_idx_files_raise_data_error_naming_the_file(tmp_path, damage, match):
    written = make_mnist(tmp_path / "data")
    raw = tmp_path / "data" / "MNIST" / "raw"
    if damage == "truncate":
        path = raw / "train-images-idx3-ubyte"
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "magic":
        path = raw / "train-images-idx3-ubyte"
        path.write_bytes(b"\x1f\x8b" + path.read_bytes()[2:])  # looks like a gzip file
    elif damage == "count":
        write_idx(raw / "t10k-labels-idx1-ubyte", written["val_y"][:19])
    else:
        write_idx(raw / "train-labels-idx1-ubyte", np.where(np.arange(30) % 2, 12, 0).astype(np.uint8))
    with pytest.raises(DataError, match=match) as info:
        load_dataset("mnist", tmp_path / "data", cache_dir=tmp_path / "cache")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name, looked_for", [("mnist", "MNIST/raw"), ("cifar10", "cifar10-jpeg.tar.gz")])
def test_missing_data_names_the_directory_and_the_fix(tmp_path, name, looked_for):
    with pytest.raises(DataError) as info:
        load_dataset(name, tmp_path / "empty", cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert str(tmp_path / "empty") in message and looked_for in message and name in message
    assert "--data-dir" in message and "TOYNET_DATA" in message and "download" in message
    assert "\n" not in message


def test_failed_download_is_a_data_error(tmp_path, monkeypatch):
    from torchvision.datasets import MNIST

    def offline(self):
        raise OSError("network is unreachable")

    monkeypatch.setattr(MNIST, "download", offline)
    with pytest.raises(DataError, match="mnist: download into .* failed"):
        load_dataset("mnist", tmp_path / "data", download=True, cache_dir=tmp_path / "cache")


# ---- CIFAR-10 layouts ---------------------------------------------------------------


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar-folder")
    make_image_folder(root)
    return root


@pytest.mark.parametrize("layout", ["cifar10", "cifar10-folder", "tarball"])
def test_cifar10_layouts_decode_to_the_same_arrays(tmp_path, folder_root, layout):
    reference = load_dataset("cifar10", folder_root, cache_dir=tmp_path / "cache-ref")
    assert reference.train_x.shape == (30, 3, 32, 32) and reference.val_x.shape == (20, 3, 32, 32)
    assert reference.classes == CIFAR10_CLASSES
    assert reference.train_y.tolist() == [k for k in range(10) for _ in range(3)]
    root = tmp_path / "root"
    if layout == "tarball":
        root.mkdir()
        make_tarball(folder_root, root / "cifar10-jpeg.tar.gz")
    else:
        make_image_folder(root / layout)
    other = load_dataset("cifar10", root, cache_dir=tmp_path / "cache")
    assert digest(other) == digest(reference)
    assert not (root / "train").exists()  # nothing extracted next to the tarball


def write_cifar_pickles(root: Path) -> np.ndarray:
    """A tiny ``cifar-10-batches-py`` in torchvision's format; returns the test images (N, 3, 32, 32)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), "labels": list(range(10))}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list(CIFAR10_CLASSES)}))
    return batch["data"].reshape(-1, 3, 32, 32)


def test_cifar10_pickles_are_read_through_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    test_images = write_cifar_pickles(tmp_path)
    # Synthetic batches cannot match the published md5 sums torchvision checks.
    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda path, md5=None: True)
    data = load_dataset("cifar10", tmp_path, cache_dir=tmp_path / "cache")
    assert data.train_x.shape == (50, 3, 32, 32) and data.classes == CIFAR10_CLASSES
    assert np.array_equal(data.val_x.numpy(), test_images) and data.val_y.tolist() == list(range(10))


def test_corrupt_cifar10_pickles_raise_data_error(tmp_path):
    write_cifar_pickles(tmp_path)  # fails torchvision's md5 check, like a damaged download
    with pytest.raises(DataError, match=r"cifar-10-batches-py: unreadable CIFAR-10 batches") as info:
        load_dataset("cifar10", tmp_path, cache_dir=tmp_path / "cache")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("damage, match", [
    ("garbage", r"test/cat/0001.jpg: cannot decode image"),
    ("empty", r"test/cat/0001.jpg: cannot decode image"),
    ("size", r"test/cat/0001.jpg: image is \(3, 16, 16\)"),
    ("class", r"expected the same 10 class folders"),
])
def test_bad_images_raise_data_error_naming_the_file(tmp_path, damage, match):
    make_image_folder(tmp_path)
    bad = tmp_path / "test" / "cat" / "0001.jpg"
    if damage == "garbage":
        bad.write_bytes(bad.read_bytes()[:60])
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "size":
        bad.write_bytes(encode_jpeg(torch.zeros(3, 16, 16, dtype=torch.uint8)))
    else:
        (tmp_path / "test" / "cat").rename(tmp_path / "test" / "kitten")
    with pytest.raises(DataError, match=match) as info:
        load_dataset("cifar10", tmp_path, cache_dir=tmp_path / "cache")
    assert "\n" not in str(info.value)


def test_truncated_tarball_raises_data_error(tmp_path, folder_root):
    tarball = tmp_path / "cifar10-jpeg.tar.gz"
    make_tarball(folder_root, tarball)
    tarball.write_bytes(tarball.read_bytes()[: tarball.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cifar10-jpeg.tar.gz: truncated or corrupt archive"):
        load_dataset("cifar10", tmp_path, cache_dir=tmp_path / "cache")


# ---- several processes at once ------------------------------------------------------


def _prepare_in_child(root: str, cache: str, counter: str, barrier, results) -> None:
    """Spawned worker: count decodes in ``counter``, load after the barrier, report a digest."""
    original = sources._decode_folder

    def counted(*args):
        with open(counter, "a") as f:
            f.write("decode\n")
        time.sleep(0.5)  # hold the lock long enough that every other process must wait
        return original(*args)

    sources._decode_folder = counted
    barrier.wait()
    results.put(digest(load_dataset("cifar10", root, cache_dir=cache)))


def test_concurrent_processes_decode_once_and_agree(tmp_path, folder_root):
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    counter = tmp_path / "decodes.txt"
    args = (str(folder_root), str(tmp_path / "cache"), str(counter), barrier, results)
    procs = [ctx.Process(target=_prepare_in_child, args=args) for _ in range(4)]
    for p in procs:
        p.start()
    digests = [results.get(timeout=300) for _ in procs]  # slow when the 2 cores are busy
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * 4
    assert counter.read_text().count("decode") == 1
    assert len(set(digests)) == 1
    assert digests[0] == digest(load_dataset("cifar10", folder_root, cache_dir=tmp_path / "cache"))
    assert not list((tmp_path / "cache").glob("*/.*.tmp"))  # no temporary files left behind


# ---- real data ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("real-cache")


@pytest.mark.realdata
def test_real_mnist(shared_data_dir, real_cache):
    data = load_dataset("mnist", shared_data_dir, cache_dir=real_cache)
    assert data.train_x.shape == (60000, 1, 28, 28) and data.val_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(data.val_y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.realdata
def test_real_cifar10_from_the_tarball(shared_data_dir, real_cache):
    data = load_dataset("cifar10", shared_data_dir, cache_dir=real_cache)
    assert data.train_x.shape == (50000, 3, 32, 32) and data.val_x.shape == (10000, 3, 32, 32)
    assert data.classes == CIFAR10_CLASSES
    assert torch.bincount(data.train_y).tolist() == [5000] * 10
    start = time.perf_counter()
    again = load_dataset("cifar10", shared_data_dir, cache_dir=real_cache)
    assert time.perf_counter() - start < 2.0  # memory-mapped cache hit
    assert torch.equal(again.val_x, data.val_x)
