"""Shared fixtures: an isolated dataset cache for the session, and the optional real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The clone sits beside shared/ both here and in CI.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _session_toynet_cache(tmp_path_factory):
    """Point ``$TOYNET_CACHE`` at a session temp dir.

    Tests never read or write the user's cache, and a dataset decoded by one test is
    reused by the rest of the session (subprocesses and Ray workers inherit it).
    """
    old = os.environ.get("TOYNET_CACHE")
    os.environ["TOYNET_CACHE"] = str(tmp_path_factory.mktemp("toynet-cache"))
    yield
    if old is None:
        os.environ.pop("TOYNET_CACHE", None)
    else:
        os.environ["TOYNET_CACHE"] = old


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The read-only real datasets (MNIST IDX, CIFAR-10 JPEG tarball); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(reason=f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """One real Ray cluster (`ray start --head`) shared by every Ray test of the session."""
    from tests.ray_cluster import start_cluster

    yield from start_cluster(tmp_path_factory.mktemp("ray-cache"))


@pytest.fixture(scope="session")
def one_worker_baseline(ray_cluster, tmp_path_factory):
    """One grid point trained uninterrupted with 1 Ray Train worker (experiment ``w1``).

    Returns (store, run_id); later runs of the same point compare against it.
    """
    from orchestration.store import ArtifactStore

    root = tmp_path_factory.mktemp("baseline")
    config = root / "point.yaml"
    config.write_text("experiment: w1\ngrid: {dataset: digits, bn: true, batch_size: 32, transforms: none, epochs: 4}\n")
    out = ray_cluster.grid("--config", str(config), "--artifacts", str(root / "artifacts"), "--no-train-in-trial")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    store = ArtifactStore(root / "artifacts")
    (run_id,) = store.run_ids("w1")
    return store, run_id
