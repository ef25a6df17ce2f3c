"""Processes that run no torch code don't import torch (1.5–3 CPU-s and ~400 MB each).

Ray Tune's per-trial driver (orchestration.ray_train), what the Train controller loads
(orchestration.gloo, .relay, .pg_reaper), grid.py with its data check
(toynet.data.prepare) and the store all stay torch-free; each module is imported in a fresh interpreter, so nothing
earlier in the test session has loaded torch for it.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.ray_cluster import REPO as REPO_ROOT

TORCH_FREE = ["toynet", "toynet.spec", "toynet.data", "toynet.data.prepare", "toynet.data.layouts", "orchestration.config", "orchestration.store", "orchestration.grid",
              "orchestration.gloo", "orchestration.relay", "orchestration.pg_reaper", "orchestration.in_trial",
              "orchestration.ray_train", "orchestration.tuning", "orchestration.cluster", "orchestration.settings"]


def _imported(module: str) -> list[str]:
    code = f"import sys, {module}; print(' '.join(m for m in ('torch', 'ray.train.torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return out.stdout.split()


@pytest.mark.parametrize("module", TORCH_FREE)
def test_module_does_not_import_torch(module):
    assert _imported(module) == []


def test_the_worker_module_does_import_torch():
    """The check above can fail: the Train worker's module must load torch."""
    assert _imported("orchestration.train_worker") == ["torch", "ray.train.torch"]


STORE_ENCODED = """
import sys
from pathlib import Path
from orchestration.records import RunRecord
from orchestration.store import ArtifactStore
from orchestration.weights import Encoded
from toynet.spec import RunSpec
spec = RunSpec(dataset="digits", bn=True, batch_size=32, transforms="none", epochs=1)
row = {"epoch": 1, "loss": 0.5, "acc": 0.8, "val_loss": 0.6, "val_acc": 0.75, "lr": 0.1, "seconds": 1.0}
record = RunRecord(experiment="exp", spec=spec, status="complete", curve=[row], wall_seconds=1.0,
                   train_images_per_s=10.0, device="cpu", num_workers=1, versions={})
store = ArtifactStore(sys.argv[2])  # TensorBoard files on, as in grid runs
store.write_run(record, Encoded.load(Path(sys.argv[1])))
print(store.get_run("exp", spec.run_id).num_parameters, "torch" in sys.modules)
"""


def test_the_driver_stores_a_complete_run_without_torch(tmp_path):
    """What the Tune driver does at a run's end (orchestration.ray_train._final, then
    write_run with TensorBoard files) runs without importing torch."""
    from orchestration import weights as weights_io
    from toynet.model import ToyNet, count_parameters

    model = ToyNet.for_dataset("digits", True)
    weights_io.encode(model.state_dict()).save(tmp_path)
    out = subprocess.run([sys.executable, "-c", STORE_ENCODED, str(tmp_path), str(tmp_path / "store")],
                         cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(count_parameters(model)), "False"]
